#!/usr/bin/env python3
"""Shard-move benchmark: how fast shard copies move onto a leaf that joins, and
what queries cost meanwhile.

Starts etcd (Debian's etcd-server) and a release cluster on it: 2 leaves, one
tailer, one aggregator (the placement controller). Loads --docs generated
events of ~--doc-bytes bytes each into a collection of --shards shards
through the HTTP API, waits until they are sealed, then starts a third leaf
and times until the controller has moved its share of copies there (no copy
joining, the new leaf holding copies). Meanwhile one client runs a COUNT(*)
and a GROUP BY in a loop; their latencies before and during the move are
reported.

The peer is the same data copied as files in the same run: `cp -r` of one old
leaf's data directory (RocksDB + segments) to a fresh directory on the same
disk, in MB/s — what a move that shipped files could at best reach on this
machine. Documents' JSON bytes moved are read from the new leaf's
`altdb_leaf_copied_bytes_total`.

Usage: bench/move_bench.py [--docs 200000] [--doc-bytes 1000] [--shards 12]
Needs: cargo build --release --bins; apt-get install etcd-server
"""
import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import WORDS, default_bin_dir, dir_bytes, event, free_port, http, percentile, stop  # noqa: E402


def start_etcd(work):
    client, peer = free_port(), free_port()
    log = open(os.path.join(work, "etcd.log"), "w")
    proc = subprocess.Popen(
        ["etcd", "--name", "bench", "--data-dir", os.path.join(work, "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
        stdout=log, stderr=log)
    for _ in range(300):
        try:
            status, _ = http("GET", f"http://127.0.0.1:{client}/health", timeout=2)
            if status == 200:
                return f"127.0.0.1:{client}", proc
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("etcd did not start")


class Cluster:
    def __init__(self, bin_dir, work, etcd):
        self.bin_dir, self.work = bin_dir, work
        self.env = dict(os.environ, ALTDB_CLUSTER_SECRET=secrets.token_hex(32))
        self.env.pop("ALTDB_ADMIN_KEY", None)
        self.metastore = f"etcd://{etcd}/bench"
        self.log = open(os.path.join(work, "cluster.log"), "w")
        self.procs, self.leaf_urls = [], []
        agg, tail = free_port(), free_port()
        self.url = f"http://127.0.0.1:{agg}"
        self.add_leaf()
        self.add_leaf()
        self.procs.append(subprocess.Popen(
            [os.path.join(bin_dir, "altdb-aggregator"), "--listen", f"127.0.0.1:{agg}",
             "--postgres-listen", "", "--flight-sql-listen", "",
             "--data-dir", os.path.join(work, "agg"), "--metastore", self.metastore,
             "--tailer-url", f"http://127.0.0.1:{tail}"], stdout=self.log, stderr=self.log, env=self.env))
        self.procs.append(subprocess.Popen(
            [os.path.join(bin_dir, "altdb-tailer"), "--listen", f"127.0.0.1:{tail}",
             "--aggregator-url", self.url, "--metastore", self.metastore],
            stdout=self.log, stderr=self.log, env=self.env))
        self.wait(lambda s: len(s["leaves"]) == 2 and all(l["healthy"] for l in s["leaves"]))

    def add_leaf(self):
        port = free_port()
        index = len(self.leaf_urls)
        self.procs.append(subprocess.Popen(
            [os.path.join(self.bin_dir, "altdb-leaf"), "--listen", f"127.0.0.1:{port}",
             "--data-dir", os.path.join(self.work, f"leaf-{index}"), "--metastore", self.metastore,
             "--seal-interval-secs", "2"], stdout=self.log, stderr=self.log, env=self.env))
        self.leaf_urls.append(f"http://127.0.0.1:{port}")
        return self.leaf_urls[-1]

    def status(self):
        status, body = http("GET", self.url + "/v1/cluster")
        return body if status == 200 else None

    def wait(self, done, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.status()
                if status and done(status):
                    return status
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"timed out; see {self.work}")

    def sql(self, sql):
        status, body = http("POST", self.url + "/v1/query", {"sql": sql})
        if status != 200:
            raise RuntimeError(f"{status}: {body}")
        return body["rows"]


def copied_bytes(leaf_url):
    import urllib.request
    with urllib.request.urlopen(leaf_url + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("altdb_leaf_copied_bytes_total"):
                return float(line.split()[-1])
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--doc-bytes", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="altdb-move-bench-")
    etcd_address, etcd = start_etcd(work)
    cluster = Cluster(args.bin_dir, work, etcd_address)
    try:
        status, body = http("POST", cluster.url + "/v1/collections",
                            {"name": "events", "num_shards": args.shards})
        assert status == 201, body
        started = time.perf_counter()
        batch = []
        for seq in range(args.docs):
            batch.append(event(seq, args.doc_bytes, WORDS))
            if len(batch) == 2000 or seq == args.docs - 1:
                status, answer = http("POST", cluster.url + "/v1/collections/events/docs", b"\n".join(batch))
                assert status == 200 and answer["written"] == len(batch), (status, str(answer)[:300])
                batch = []
        load_s = time.perf_counter() - started
        assert cluster.sql("SELECT COUNT(*) FROM events")[0][0] == args.docs
        time.sleep(5)  # sealed (seal interval 2 s)

        samples = {"before": [], "during": []}
        phase = ["before"]
        running = [True]

        def queries():
            while running[0]:
                for sql in ["SELECT COUNT(*) FROM events",
                            "SELECT event_type, COUNT(*), AVG(amount) FROM events GROUP BY event_type"]:
                    t = time.perf_counter()
                    cluster.sql(sql)
                    samples[phase[0]].append((time.perf_counter() - t) * 1000)

        thread = threading.Thread(target=queries)
        thread.start()
        time.sleep(5)
        phase[0] = "during"
        moved_from = dir_bytes(os.path.join(work, "leaf-0"))
        started = time.perf_counter()
        new_leaf = cluster.add_leaf()

        share = args.shards // 3  # the new leaf's third of the copies of `events`

        def settled(status):
            leaf = next((l for l in status["leaves"] if l["url"] == new_leaf), None)
            events = next(c for c in status["collections"] if c["name"] == "events")
            on_new = sum(1 for copies in events["shards"] if new_leaf in copies)
            return leaf is not None and on_new >= share and events["joining"] == 0
        status = cluster.wait(settled)
        move_s = time.perf_counter() - started
        phase[0] = "after"
        samples["after"] = []
        running[0] = False
        thread.join()
        copies = sum(1 for c in next(c for c in status["collections"] if c["name"] == "events")["shards"]
                     if new_leaf in c)
        moved = copied_bytes(new_leaf)
        count = cluster.sql("SELECT COUNT(*), COUNT(DISTINCT _id) FROM events")[0]
        assert count == [args.docs, args.docs], count

        # The peer: the files of one old leaf copied as they are.
        target = os.path.join(work, "cp-peer")
        t = time.perf_counter()
        shutil.copytree(os.path.join(work, "leaf-0"), target)
        subprocess.run(["sync"], check=False)
        cp_s = time.perf_counter() - t

        on_disk_mb = moved_from / 1e6
        print(f"# Shard moves ({args.docs} documents of ~{args.doc_bytes} B, {args.shards} shards, 2 -> 3 leaves)")
        print(f"load: {args.docs / load_s:,.0f} docs/s")
        print(f"move: {copies} copies to the new leaf in {move_s:.1f} s (start of the leaf to the last copy ready); "
              f"{moved / 1e6:.1f} MB of documents, {moved / 1e6 / move_s:.1f} MB/s, "
              f"{moved / args.doc_bytes / move_s:,.0f} docs/s")
        print(f"peer: cp -r of one old leaf's data directory ({on_disk_mb:.1f} MB on disk) "
              f"{on_disk_mb / cp_s:.1f} MB/s")
        for name in ["before", "during"]:
            values = samples[name]
            print(f"queries {name} the move: {len(values)} runs, p50 {percentile(values, 0.5):.1f} ms, "
                  f"p99 {percentile(values, 0.99):.1f} ms")
        print(f"answers after the move: COUNT(*) = COUNT(DISTINCT _id) = {count[0]}")
    finally:
        stop(cluster.procs)
        etcd.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
