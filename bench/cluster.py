"""Shared helpers of the benchmarks: start the release binaries and talk HTTP to them."""
import http.client as http_client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request


def default_bin_dir():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/altdb-target"))
    return os.path.join(target, "release")


_next_port = [os.getpid() * 97 % 12000]


def free_port():
    """A free loopback port below the ephemeral range (32768 and up), so that no
    outgoing connection takes it between this check and the server's bind."""
    for _ in range(12000):
        port = 20000 + _next_port[0] % 12000
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000..32000")


def http(method, url, body=None, timeout=600, key=None):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("Authorization", f"ApiKey {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Connection:
    """One kept-alive HTTP connection, as a dashboard or a driver's pool holds:
    latency measured through it is the server's, not a TCP handshake's."""

    def __init__(self, url, key=None):
        parsed = urllib.parse.urlsplit(url)
        self.conn = http_client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"ApiKey {key}"

    def post(self, path, body):
        self.conn.request("POST", path, json.dumps(body), self.headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read() or b"null")

    def close(self):
        self.conn.close()


def start_cluster(bin_dir, data_dir, leaves=2, admin_key=None, postgres_port=None,
                  flight_sql_port=None):
    """`leaves` leaves, 1 aggregator, 1 tailer on free loopback ports; returns (url, processes).
    With `admin_key`, authentication is on and every request must carry a key. The
    aggregator's Postgres and Flight SQL doors listen on `postgres_port` and
    `flight_sql_port` (default: free ports)."""
    agg, tail = free_port(), free_port()
    postgres_port = postgres_port or free_port()
    leaf_ports = [free_port() for _ in range(leaves)]
    leaves = ",".join(f"http://127.0.0.1:{port}" for port in leaf_ports)
    procs = []
    log = open(os.path.join(data_dir, "cluster.log"), "w")
    # The processes share a cluster secret, as every altdb cluster must.
    # Sources may reach loopback brokers and S3 servers, and the data directory.
    env = dict(os.environ, ALTDB_CLUSTER_SECRET=secrets.token_hex(32),
               ALTDB_ALLOWED_KAFKA_BROKERS="127.0.0.1:*",
               ALTDB_ALLOWED_S3_ENDPOINTS="http://127.0.0.1:*",
               ALTDB_ALLOWED_FILE_ROOTS=os.path.abspath(data_dir))
    env.pop("ALTDB_ADMIN_KEY", None)
    if admin_key:
        env["ALTDB_ADMIN_KEY"] = admin_key
    for i, port in enumerate(leaf_ports):
        procs.append(subprocess.Popen([os.path.join(bin_dir, "altdb-leaf"), "--listen", f"127.0.0.1:{port}",
                                       "--data-dir", os.path.join(data_dir, f"leaf-{i}")], stdout=log, stderr=log, env=env))
    procs.append(subprocess.Popen([os.path.join(bin_dir, "altdb-aggregator"), "--listen", f"127.0.0.1:{agg}",
                                   "--postgres-listen", f"127.0.0.1:{postgres_port}",
                                   "--flight-sql-listen", f"127.0.0.1:{flight_sql_port or free_port()}",
                                   "--data-dir", os.path.join(data_dir, "agg"), "--leaves", leaves,
                                   "--tailer-url", f"http://127.0.0.1:{tail}"], stdout=log, stderr=log, env=env))
    procs.append(subprocess.Popen([os.path.join(bin_dir, "altdb-tailer"), "--listen", f"127.0.0.1:{tail}",
                                   "--aggregator-url", f"http://127.0.0.1:{agg}", "--leaves", leaves], stdout=log, stderr=log, env=env))
    url = f"http://127.0.0.1:{agg}"
    for _ in range(300):
        try:
            status, body = http("GET", url + "/v1/cluster", key=admin_key)
            if status == 200 and all(l["healthy"] for l in body["leaves"]):
                return url, procs
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("cluster did not start; see " + data_dir)



def percentile(samples, p):
    """The `p` quantile (0..1) of `samples`, nearest rank; NaN when empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round((len(ordered) - 1) * p)))]


def dir_bytes(path):
    """Bytes of the files under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def start_tansu(data_dir):
    """A tansu Kafka broker with in-memory storage; returns (address, process)."""
    binary = tansu_binary() or "tansu"
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = open(os.path.join(data_dir, "tansu.log"), "w")
    proc = subprocess.Popen([binary, "broker", "--listener-url", f"tcp://{address}",
                             "--advertised-listener-url", f"tcp://{address}",
                             "--storage-engine", "memory://tansu/"], stdout=log, stderr=log)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return address, proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("tansu did not start")


def create_topic(brokers, topic, partitions):
    """Creates a topic and waits until the broker reports all its partitions."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result(30)
    for _ in range(100):
        meta = admin.list_topics(topic, timeout=5)
        if topic in meta.topics and len(meta.topics[topic].partitions) == partitions:
            return
        time.sleep(0.1)
    raise SystemExit(f"topic {topic} not ready")


def tansu_binary():
    """The tansu binary, or None if it is not installed."""
    binary = shutil.which("tansu") or os.path.expanduser("~/.cargo/bin/tansu")
    return binary if os.path.exists(binary) else None


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(procs):
    """User + system CPU seconds so far of each process, by its binary name."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            name = os.path.basename(p.args[0])
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def event(seq, size, rng_words):
    """A JSON event of about `size` bytes: nested, an array, a number and padding text."""
    doc = {
        "seq": seq,
        "sent_us": time.time_ns() // 1000,
        "user_id": f"u{(seq * 7919) % 50_000}",
        "event_type": rng_words[seq % len(rng_words)],
        "geo": {"country": ["NO", "DE", "US", "JP"][seq % 4], "city": ["Oslo", "Berlin", "Boston", "Tokyo"][seq % 4]},
        "amount": (seq % 1000) / 10.0,
        "tags": [rng_words[seq % 3], rng_words[(seq // 3) % 5]],
    }
    body = json.dumps(doc, separators=(",", ":"))
    pad = max(0, size - len(body) - 12)
    doc["text"] = ("lorem ipsum dolor sit amet " * (pad // 27 + 1))[:pad]
    return json.dumps(doc, separators=(",", ":")).encode()


WORDS = ["page_view", "click", "add_to_cart", "purchase", "search", "scroll", "login"]
