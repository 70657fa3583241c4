#!/usr/bin/env python3
"""altdb benchmark suite: every area in one command, peers measured in the same run.

Areas (each prints a markdown table; --markdown FILE writes them all with the
machine, the commit and the command):

  ingest       HTTP ingest of ClickBench-shaped `hits` rows and ~1 KB nested
               RockBench-shaped documents: documents/s and MB/s (and per leaf),
               CPU-seconds per GB by process, bytes on disk per input byte.
  kafka        the same documents produced to a Kafka topic (tansu) and then
               ingested by a collection attached to it (skipped without tansu or
               confluent-kafka).
  freshness    produce-to-queryable lag (RockBench's data latency: now minus the
               newest visible event) p50/p95/p99 at 25/50/75% of the saturated rate.
  queries      per class (simple aggregates, GROUP BY low/high cardinality, LIKE,
               top-k, needle, text search, join): one cold run then --runs hot runs,
               p50 and p99, next to DuckDB (in-memory table), DataFusion
               (datafusion-python over Parquet) and chDB (embedded ClickHouse, in-memory
               table) on the same rows; ratios altdb/peer; answers checked against DuckDB.
  concurrency  QPS, p50 and p99 of a short-query mix with 1/2/4/8/16 clients (and
               the ceiling the CPU per query allows), of needle queries with a new
               literal on every request at 1/4/16 clients, and of both with ingest
               at 50% of the saturated rate running into another collection.
  scatter      the same queries on the same data on 1 leaf and on 2 leaves.
  memory       leaf RSS per GB of sealed data and per 1M rows in the mutable segment.

Usage: bench/suite.py [--quick] [--hits N] [--docs N] [--runs R] [--bin-dir DIR]
                      [--areas ingest,kafka,freshness,queries,concurrency,scatter,memory] [--markdown FILE]
Needs: cargo build --release --bins; pip install -r tests/requirements.txt (pinned peers);
tansu on PATH
(peers that are not installed are skipped). --quick takes a few minutes and is
the CI smoke test (timings are reported, never asserted).
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import duckdb

import datagen
import loadgen
from cluster import cpu_seconds, create_topic, default_bin_dir, dir_bytes, http, start_cluster, start_tansu, stop, tansu_binary

REGIONS = 3_000


def percentile(samples, p):
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def write_ndjson(path, rows):
    count = 0
    with open(path, "w") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
            count += 1
    return count


# ---------------------------------------------------------------- altdb cluster

class Altdb:
    """A release cluster on loopback, fresh data directory."""

    def __init__(self, bin_dir, work, leaves):
        self.dir = os.path.join(work, f"cluster-{leaves}-leaves-{time.monotonic_ns()}")
        os.makedirs(self.dir)
        self.leaves = leaves
        self.url, self.procs = start_cluster(bin_dir, self.dir, leaves=leaves)

    def create(self, spec):
        status, body = http("POST", self.url + "/v1/collections", spec)
        assert status == 201, body

    def post(self, collection, body):
        status, answer = http("POST", f"{self.url}/v1/collections/{collection}/docs", body)
        assert status == 200 and not answer["errors"], (status, str(answer)[:300])
        return answer["written"]

    def load(self, collection, path, batch_bytes=4 << 20, clients=4):
        """Posts an NDJSON file in ~4 MB bodies from `clients` threads; returns seconds."""
        def bodies():
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(batch_bytes)
                    if not chunk:
                        return
                    chunk += f.readline()
                    yield chunk

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            pending = set()
            for body in bodies():
                pending.add(pool.submit(self.post, collection, body))
                if len(pending) >= clients * 2:
                    done, pending = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                    for f in done:
                        f.result()
            for f in pending:
                f.result()
        return time.perf_counter() - started

    def settle(self, collection, timeout=600):
        """Waits until every row is sealed and the merger is done (count steady 5 s)."""
        deadline = time.monotonic() + timeout
        last, steady = None, 0
        while time.monotonic() < deadline and steady < 5:
            _, info = http("GET", f"{self.url}/v1/collections/{collection}")
            shards = info["shards"]
            state = (sum(s["mutable_rows"] for s in shards), sum(s["sealed_segments"] for s in shards))
            steady = steady + 1 if state == last and state[0] == 0 else 0
            last = state
            time.sleep(1)
        return last[1] if last else 0

    def sql(self, sql):
        status, answer = http("POST", self.url + "/v1/query", {"sql": sql})
        if status != 200:
            raise RuntimeError(f"{status}: {answer}")
        return answer["rows"]

    def cpu(self):
        return cpu_seconds(self.procs)

    def stop(self):
        stop(self.procs)


# ---------------------------------------------------------------- peers

class DuckDbPeer:
    name = "DuckDB"

    def __init__(self, hits_parquet, regions_parquet):
        self.con = duckdb.connect()
        self.con.execute(f"CREATE TABLE hits AS SELECT * FROM read_parquet('{hits_parquet}')")
        self.con.execute(f"CREATE TABLE regions AS SELECT * FROM read_parquet('{regions_parquet}')")
        self.version = duckdb.__version__

    def run(self, sql):
        return self.con.execute(sql).fetchall()


class DataFusionPeer:
    name = "DataFusion"

    def __init__(self, hits_parquet, regions_parquet):
        import datafusion
        self.ctx = datafusion.SessionContext()
        self.ctx.register_parquet("hits", hits_parquet)
        self.ctx.register_parquet("regions", regions_parquet)
        self.version = datafusion.__version__

    def run(self, sql):
        return [tuple(row.values()) for row in self.ctx.sql(sql).to_pylist()]


class ChdbPeer:
    name = "chDB"

    def __init__(self, hits_parquet, regions_parquet):
        import chdb
        from chdb import session
        self.session = session.Session()
        self.session.query(f"CREATE TABLE hits ENGINE = Memory AS SELECT * FROM file('{hits_parquet}', Parquet)")
        self.session.query(f"CREATE TABLE regions ENGINE = Memory AS SELECT * FROM file('{regions_parquet}', Parquet)")
        self.version = chdb.__version__

    def run(self, sql):
        return self.session.query(sql, "JSONCompact").bytes()


class PacedProducer:
    """Posts ~1 KB documents at `rate` docs/s, one batch every 50 ms, from a few posting
    threads so that a slow response does not lower the offered rate. Each document's
    `ts` and `sent_us` is its batch's wall-clock time in microseconds. Documents are
    formatted from one pre-encoded template: the producer shares the cores with the
    cluster, and encoding each document with json.dumps capped it near 15k docs/s."""

    TICK = 0.05

    def __init__(self, altdb, collection, rate, seed, first_id=0, posters=4):
        template = next(datagen.rockbench(seed, 1))
        rest = {k: v for k, v in template.items() if k not in ("id", "ts", "sent_us")}
        self.tail = "," + json.dumps(rest, separators=(",", ":"))[1:] if rest else "}"
        self.altdb, self.collection, self.rate = altdb, collection, rate
        self.next_id = first_id
        self.posted = 0
        self.lock = threading.Lock()
        self.posters = posters
        self.pool = concurrent.futures.ThreadPoolExecutor(posters)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def start(self):
        self.thread.start()

    def stop(self):
        """Stops producing, waits for the posts in flight; returns the documents written."""
        self.stopping.set()
        self.thread.join()
        self.pool.shutdown(wait=True)
        return self.posted

    def _post(self, body, count):
        self.altdb.post(self.collection, body)
        with self.lock:
            self.posted += count

    def _run(self):
        per_tick = max(1, int(self.rate * self.TICK))
        in_flight = set()
        next_at = time.monotonic()
        while not self.stopping.is_set():
            now_us = time.time_ns() // 1000
            first = self.next_id
            self.next_id += per_tick
            body = "".join(f'{{"id":{i},"ts":{now_us},"sent_us":{now_us}{self.tail}\n'
                           for i in range(first, self.next_id)).encode()
            in_flight = {f for f in in_flight if not f.done()}
            if len(in_flight) >= 2 * self.posters:
                concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            in_flight.add(self.pool.submit(self._post, body, per_tick))
            next_at += self.TICK
            time.sleep(max(0.0, next_at - time.monotonic()))
        for future in in_flight:
            future.result()


def peers(hits_parquet, regions_parquet):
    out = []
    for peer in (DuckDbPeer, DataFusionPeer, ChdbPeer):
        try:
            out.append(peer(hits_parquet, regions_parquet))
        except Exception as error:  # not installed or cannot load: skipped, said so
            print(f"peer {peer.name} skipped: {error}", file=sys.stderr)
    return out


# ---------------------------------------------------------------- queries

def hits_queries(needle_user, needle_watch):
    """(class, name, altdb SQL, {peer name: SQL} overrides)."""
    word = r"\bphone\b"
    return [
        ("simple aggregate", "count", 'SELECT COUNT(*) FROM hits', {}),
        ("simple aggregate", "sum_count_avg", 'SELECT SUM("AdvEngineID"), COUNT(*), AVG("ResolutionWidth") FROM hits', {}),
        ("GROUP BY low cardinality", "adv_engines",
         'SELECT "AdvEngineID", COUNT(*) AS c FROM hits WHERE "AdvEngineID" <> 0 GROUP BY "AdvEngineID" ORDER BY c DESC, "AdvEngineID"', {}),
        ("GROUP BY low cardinality", "os", 'SELECT "OS", COUNT(*) AS c FROM hits GROUP BY "OS" ORDER BY c DESC, "OS" LIMIT 10', {}),
        ("GROUP BY high cardinality", "region_users",
         'SELECT "RegionID", COUNT(DISTINCT "UserID") AS u FROM hits GROUP BY "RegionID" ORDER BY u DESC, "RegionID" LIMIT 10', {}),
        ("GROUP BY high cardinality", "user_phrase",
         'SELECT "UserID", "SearchPhrase", COUNT(*) AS c FROM hits GROUP BY "UserID", "SearchPhrase" ORDER BY c DESC, "UserID", "SearchPhrase" LIMIT 10', {}),
        ("GROUP BY high cardinality", "urls", 'SELECT "URL", COUNT(*) AS c FROM hits GROUP BY "URL" ORDER BY c DESC, "URL" LIMIT 10', {}),
        ("LIKE on strings", "like_count", "SELECT COUNT(*) FROM hits WHERE \"URL\" LIKE '%google%'", {}),
        ("LIKE on strings", "like_group",
         "SELECT \"SearchPhrase\", MIN(\"URL\"), COUNT(*) AS c FROM hits WHERE \"URL\" LIKE '%google%' AND \"SearchPhrase\" <> '' "
         "GROUP BY \"SearchPhrase\" ORDER BY c DESC, \"SearchPhrase\" LIMIT 10", {}),
        ("top-k", "wide_rows_by_time",
         "SELECT \"WatchID\", \"Title\", \"URL\", \"Referer\", \"EventTime\", \"UserID\", \"SearchPhrase\", \"MobilePhoneModel\", \"ClientIP\", \"RegionID\" "
         "FROM hits WHERE \"URL\" LIKE '%google%' ORDER BY \"EventTime\", \"WatchID\" LIMIT 10", {}),
        ("top-k", "phrases_by_time",
         "SELECT \"SearchPhrase\" FROM hits WHERE \"SearchPhrase\" <> '' ORDER BY \"EventTime\", \"SearchPhrase\" LIMIT 10", {}),
        ("needle", "user", f'SELECT COUNT(*), MIN("EventTime") FROM hits WHERE "UserID" = {needle_user}', {}),
        ("needle", "watch_id", f'SELECT "URL", "Title" FROM hits WHERE "WatchID" = {needle_watch}', {}),
        ("text search", "title_word", "SELECT COUNT(*) FROM hits WHERE search(\"Title\", 'phone')", {
            "DuckDB": f"SELECT COUNT(*) FROM hits WHERE regexp_matches(lower(\"Title\"), '{word}')",
            "DataFusion": f"SELECT COUNT(*) FROM hits WHERE regexp_like(lower(\"Title\"), '{word}')",
            "chDB": f"SELECT COUNT(*) FROM hits WHERE match(lower(Title), '{word}')",
        }),
        ("join", "region_names",
         'SELECT r.name, COUNT(*) AS c FROM hits h JOIN regions r ON h."RegionID" = r.id '
         'GROUP BY r.name ORDER BY c DESC, r.name LIMIT 10', {}),
    ]


def normalize(rows):
    out = []
    for row in rows:
        out.append([round(v, 4) if isinstance(v, float) else v for v in row])
    return out


def time_runs(fn, runs):
    """Cold run, then `runs` hot runs: (cold ms, [hot ms], answer)."""
    started = time.perf_counter()
    answer = fn()
    cold = (time.perf_counter() - started) * 1000
    hot = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        hot.append((time.perf_counter() - started) * 1000)
    return cold, hot, answer


# ---------------------------------------------------------------- areas

def area_ingest(altdb, files, report):
    leaves = altdb.leaves
    rows = []
    for collection, path, count in files:
        size = os.path.getsize(path)
        before = altdb.cpu()
        seconds = altdb.load(collection, path)
        after = altdb.cpu()
        segments = altdb.settle(collection)
        settled = altdb.cpu()
        gb = size / 1e9
        cpu = {k: (after.get(k, 0) - before.get(k, 0)) / gb for k in after}
        background = sum(settled.get(k, 0) - after.get(k, 0) for k in settled) / gb
        rows.append((collection, count, size, seconds, cpu, background, segments))
    disk = sum(dir_bytes(os.path.join(altdb.dir, d)) for d in os.listdir(altdb.dir) if d.startswith("leaf-"))
    total_input = sum(os.path.getsize(p) for _, p, _ in files)
    lines = [f"### Ingest over HTTP ({leaves} leaves, 1 tailer, 4 clients, ~4 MB bodies)", "",
             "| data | docs | MB | docs/s | docs/s per leaf | MB/s | CPU-s per GB (leaf / tailer / aggregator) | CPU-s per GB after (seal+merge) | segments |",
             "|---|---|---|---|---|---|---|---|---|"]
    for collection, count, size, seconds, cpu, background, segments in rows:
        lines.append(f"| {collection} | {count:,} | {size / 1e6:.0f} | {count / seconds:,.0f} | {count / seconds / leaves:,.0f} | "
                     f"{size / 1e6 / seconds:.1f} | {cpu.get('altdb-leaf', 0):.1f} / {cpu.get('altdb-tailer', 0):.1f} / "
                     f"{cpu.get('altdb-aggregator', 0):.1f} | {background:.1f} | {segments} |")
    lines += ["", f"Bytes on disk per input byte (RocksDB + segments, all collections): {disk / total_input:.2f} "
              f"({disk / 1e6:.0f} MB for {total_input / 1e6:.0f} MB of NDJSON)."]
    report.append("\n".join(lines))
    return {collection: count / seconds for collection, count, _, seconds, _, _, _ in rows}


def area_kafka(altdb, spec, path, count, report, partitions=8):
    """Kafka ingest: the documents are produced to a topic first, then a
    collection is attached to it and timed until every one is queryable."""
    title = f"### Ingest from Kafka ({altdb.leaves} leaves, 1 tailer, tansu in-memory broker, {partitions} partitions)"
    try:
        from confluent_kafka import Producer
    except ImportError:
        report.append(f"{title}\n\nSkipped: confluent-kafka is not installed (`pip install confluent-kafka`).")
        return
    if tansu_binary() is None:
        report.append(f"{title}\n\nSkipped: tansu is not installed "
                      "(`cargo install tansu --locked --features dynostore,libsql`).")
        return
    brokers, tansu = start_tansu(altdb.dir)
    try:
        topic = spec["name"]
        create_topic(brokers, topic, partitions)
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "queue.buffering.max.messages": 500_000})
        size = 0
        with open(path, "rb") as f:
            for line in f:
                size += len(line)
                while True:
                    try:
                        producer.produce(topic, line.rstrip(b"\n"))
                        break
                    except BufferError:
                        producer.poll(0.01)
                producer.poll(0)
        assert producer.flush(300) == 0, "the broker did not take every document"
        before = altdb.cpu()
        started = time.perf_counter()
        altdb.create({**spec, "sources": [{"type": "kafka", "brokers": brokers, "topic": topic,
                                           "include_metadata": False}]})
        first = None
        while (seen := altdb.sql(f"SELECT COUNT(*) FROM {topic}")[0][0]) < count:
            if seen and first is None:
                first = (time.perf_counter(), seen)
            time.sleep(0.05)
        done = time.perf_counter()
        after = altdb.cpu()
        segments = altdb.settle(topic)
        settled = altdb.cpu()
    finally:
        stop([tansu])
    # Discovery and the consumer group join are start-up, not throughput.
    first_at, first_seen = first or (started, 0)
    rate = (count - first_seen) / max(done - first_at, 1e-9)
    gb = size / 1e9
    cpu = {k: (after.get(k, 0) - before.get(k, 0)) / gb for k in after}
    background = sum(settled.get(k, 0) - after.get(k, 0) for k in settled) / gb
    report.append("\n".join([
        title, "",
        "| data | docs | MB | first queryable after s | docs/s | docs/s per leaf | MB/s | "
        "CPU-s per GB (leaf / tailer / aggregator) | CPU-s per GB after (seal+merge) | segments |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {topic} | {count:,} | {size / 1e6:.0f} | {first_at - started:.1f} | {rate:,.0f} | {rate / altdb.leaves:,.0f} | "
        f"{rate * size / count / 1e6:.1f} | {cpu.get('altdb-leaf', 0):.1f} / {cpu.get('altdb-tailer', 0):.1f} / "
        f"{cpu.get('altdb-aggregator', 0):.1f} | {background:.1f} | {segments} |",
        "", "The rate counts from the first queryable document (topic discovery and the consumer "
        "group join come before it); the CPU figures cover the whole backlog."]))


def area_freshness(altdb, saturated, seconds, report):
    altdb.create({"name": "fresh", "num_shards": 4, "id_field": "id", "event_time_field": "ts", "text_fields": ["text"]})
    template = next(datagen.rockbench(5, 1))
    lines = [f"### Freshness: produce-to-queryable over HTTP, ~1 KB documents, {altdb.leaves} leaves "
             f"(saturated rate {saturated:,.0f} docs/s)", "",
             "| load | target docs/s | achieved docs/s | p50 ms | p95 ms | p99 ms | samples |",
             "|---|---|---|---|---|---|---|"]
    next_id = 0
    for fraction in (0.25, 0.50, 0.75):
        rate = saturated * fraction
        started = time.monotonic()
        producer = PacedProducer(altdb, "fresh", rate, seed=5, first_id=next_id)
        producer.start()
        time.sleep(1)  # warm up
        lags = []
        while time.monotonic() < started + seconds:
            newest = altdb.sql("SELECT MAX(sent_us) FROM fresh")[0][0]
            if newest:
                lags.append((time.time_ns() // 1000 - newest) / 1000)
            time.sleep(0.1)
        written = producer.stop()
        next_id += written
        achieved = written / (time.monotonic() - started)
        lines.append(f"| {fraction:.0%} | {rate:,.0f} | {achieved:,.0f} | {percentile(lags, 50):.0f} | "
                     f"{percentile(lags, 95):.0f} | "
                     f"{percentile(lags, 99):.0f} | {len(lags)} |")
    altdb.settle("fresh")  # sealed and merged before anything else is measured
    lines += ["", "Lag = time of the query minus the newest `sent_us` it sees, sampled every 100 ms while a "
              "producer posts a batch every 50 ms (so up to 50 ms of it is batching)."]
    report.append("\n".join(lines))


def area_queries(altdb, peer_list, queries, runs, report, label):
    duck = next((p for p in peer_list if p.name == "DuckDB"), None)
    header = "| class | query | altdb cold | altdb p50 | altdb p99 |"
    rule = "|---|---|---|---|---|"
    for peer in peer_list:
        header += f" {peer.name} p50 | altdb/{peer.name} |"
        rule += "---|---|"
    lines = [f"### Queries on `hits` ({label}); ms; one cold run then {runs} hot runs", "", header + " answer |", rule + "---|"]
    results = {}
    for klass, name, sql, overrides in queries:
        cold, hot, answer = time_runs(lambda: altdb.sql(sql), runs)
        p50 = statistics.median(hot)
        results[name] = p50
        row = f"| {klass} | {name} | {cold:.1f} | {p50:.1f} | {percentile(hot, 99):.1f} |"
        check = "–"
        for peer in peer_list:
            peer_sql = overrides.get(peer.name, sql)
            try:
                _, peer_hot, peer_answer = time_runs(lambda: peer.run(peer_sql), runs)
                peer_p50 = statistics.median(peer_hot)
                row += f" {peer_p50:.1f} | {p50 / peer_p50:.2f} |"
                if peer is duck:
                    check = "=" if normalize(answer) == normalize([list(r) for r in peer_answer]) else "≠"
            except Exception as error:
                print(f"{peer.name} failed on {name}: {error}", file=sys.stderr)
                row += " error | – |"
        lines.append(row + f" {check} |")
    lines += ["", "answer: `=` altdb's rows equal DuckDB's. Text search: altdb's `search()` (tokenized index) "
              "against a word-boundary regular expression in the peers."]
    report.append("\n".join(lines))
    return results


def area_concurrency(altdb, mix, needles, seconds, saturated, report):
    """Closed-loop clients (bench/loadgen.py: one process and one kept-alive connection each)."""
    cores = os.cpu_count()

    def measure(statements, clients):
        before = altdb.cpu()
        result = loadgen.run(altdb.url, statements, clients, seconds)
        after = altdb.cpu()
        result.server_cpu = sum(after.values()) - sum(before.values())
        return result

    mix_points = (1, 2, 4, 8, 16)
    needle_points = (1, 4, 16)
    quiet_mix = {c: measure(mix, c) for c in mix_points}
    quiet_needle = {c: measure(needles, c) for c in needle_points}
    altdb.create({"name": "background", "num_shards": 4, "id_field": "id", "event_time_field": "ts"})
    rate = saturated * 0.5
    producer = PacedProducer(altdb, "background", rate, seed=6)
    producing_since = time.monotonic()
    producer.start()
    try:
        time.sleep(2)  # the producer reaches its rate
        busy_mix = {c: measure(mix, c) for c in (1, 4, 16)}
        busy_needle = {16: measure(needles, 16)}
    finally:
        written = producer.stop()
        achieved = written / (time.monotonic() - producing_since)

    def cpu_per_query(result):
        # Server CPU over the measured window and its warm-up, divided by the queries of both.
        return result.server_cpu / max(1, result.total)

    one = quiet_mix[1]
    ceiling = cores / cpu_per_query(one)
    ceiling_with_client = cores / (cpu_per_query(one) + one.client_cpu / max(1, one.count))
    lines = [f"### Concurrency: a mix of {len(mix)} short queries (needle, GROUP BY low cardinality, top-k, "
             f"simple aggregate), {seconds:.0f} s per point", "",
             "Clients are processes with one kept-alive connection each (bench/loadgen.py), sending the next "
             "query as soon as the answer is read.", "",
             "| clients | QPS | p50 ms | p99 ms | server CPU cores busy | load generator CPU cores |",
             "|---|---|---|---|---|---|"]
    for c, r in quiet_mix.items():
        lines.append(f"| {c} | {r.qps:.0f} | {r.p50:.1f} | {r.p99:.1f} | "
                     f"{r.server_cpu / (seconds + 1):.2f} | {r.client_cpu / seconds:.2f} |")
    lines += ["", f"Ceiling from CPU per query at 1 client: {cpu_per_query(one) * 1000:.2f} CPU-ms per query in the "
              f"altdb processes → {ceiling:,.0f} QPS on {cores} cores; with the load generator's own CPU "
              f"({one.client_cpu / max(1, one.count) * 1000:.2f} ms per query) {ceiling_with_client:,.0f} QPS.", "",
              f"### Concurrency: needle queries only (`WatchID` = a different value on every request, "
              f"{len(needles):,} values), {seconds:.0f} s per point", "",
              "| clients | QPS | p50 ms | p99 ms | server CPU cores busy |", "|---|---|---|---|---|"]
    for c, r in quiet_needle.items():
        lines.append(f"| {c} | {r.qps:.0f} | {r.p50:.1f} | {r.p99:.1f} | {r.server_cpu / (seconds + 1):.2f} |")
    lines += ["", f"### Concurrency with ingest: ~1 KB documents posted at {rate:,.0f} docs/s (50% of saturation) "
              f"into another collection: {achieved:,.0f} docs/s achieved while the queries ran", "",
              "| load | clients | QPS | p50 ms | p99 ms | p99 / p99 without ingest | altdb CPU cores busy |",
              "|---|---|---|---|---|---|---|"]
    for name, busy, quiet in (("mix", busy_mix, quiet_mix), ("needle", busy_needle, quiet_needle)):
        for c, r in busy.items():
            lines.append(f"| {name} | {c} | {r.qps:.0f} | {r.p50:.1f} | {r.p99:.1f} | {r.p99 / quiet[c].p99:.2f} | "
                         f"{r.server_cpu / (seconds + 1):.2f} |")
    errors = sum(r.errors for d in (quiet_mix, quiet_needle, busy_mix, busy_needle) for r in d.values())
    if errors:
        lines += ["", f"**{errors} queries failed.**"]
    report.append("\n".join(lines))


def rss_bytes(procs, name):
    """Resident set size of the processes whose binary is `name`."""
    total = 0
    for p in procs:
        if os.path.basename(p.args[0]) != name:
            continue
        with open(f"/proc/{p.pid}/status") as f:
            total += next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    return total


def sealed_bytes(altdb):
    """Bytes of the leaves' sealed segment files."""
    return sum(dir_bytes(os.path.join(altdb.dir, d, "segments")) for d in os.listdir(altdb.dir) if d.startswith("leaf-"))


def area_memory(bin_dir, work, hits_path, queries, sealed, report):
    """Leaf RSS per GB of sealed data (`sealed`: readings on the main cluster) and per
    1M rows held in the mutable segment (a 1-leaf cluster that never seals)."""
    mutable_rows = 1_000_000
    part = os.path.join(work, "hits-mutable.ndjson")
    with open(hits_path) as src, open(part, "w") as dst:
        for i, line in enumerate(src):
            if i == mutable_rows:
                break
            dst.write(line)
    os.environ.update(ALTDB_SEAL_ROWS="100000000", ALTDB_SEAL_INTERVAL_SECS="86400")
    try:
        altdb = Altdb(bin_dir, work, 1)
    finally:
        del os.environ["ALTDB_SEAL_ROWS"], os.environ["ALTDB_SEAL_INTERVAL_SECS"]
    try:
        altdb.create({"name": "hits", "num_shards": 4, "id_field": "WatchID", "event_time_field": "EventTime",
                      "text_fields": ["Title"]})
        empty = rss_bytes(altdb.procs, "altdb-leaf")
        altdb.load("hits", part)
        loaded_rows = altdb.sql("SELECT COUNT(*) FROM hits")[0][0]
        loaded = rss_bytes(altdb.procs, "altdb-leaf")
        for _, _, sql, _ in queries:
            if "regions" not in sql:
                altdb.sql(sql)
        queried = rss_bytes(altdb.procs, "altdb-leaf")
        _, info = http("GET", f"{altdb.url}/v1/collections/hits")
        still_mutable = sum(s["mutable_rows"] for s in info["shards"])
    finally:
        altdb.stop()
    per_m = 1e6 / max(1, loaded_rows)
    gb_sealed = sealed["bytes"] / 1e9

    def sealed_row(state, rss):
        grown = rss - sealed["empty"]
        return (f"| {state} | {rss / 1e6:,.0f} (empty: {sealed['empty'] / 1e6:,.0f}) | "
                f"{grown / 1e6 / gb_sealed:,.0f} MB more than empty | {grown / 1e6 * 1e6 / sealed['rows']:,.0f} MB more than empty |")

    report.append("\n".join([
        "### Memory: leaf RSS", "",
        "| state | leaf RSS MB (all leaves) | per GB of sealed segment files | per 1M rows |", "|---|---|---|---|",
        sealed_row(f"{sealed['rows']:,} rows sealed ({sealed['bytes'] / 1e6:,.0f} MB of segment files), "
                   "after loading and settling", sealed["settled"]),
        sealed_row("the same, after the query runs (decoded columns kept)", sealed["queried"]),
        f"| 1 leaf, {loaded_rows:,} `hits` rows in the mutable segment ({still_mutable:,} still unsealed) | "
        f"{loaded / 1e6:,.0f} (empty: {empty / 1e6:,.0f}) | – | {(loaded - empty) / 1e6 * per_m:,.0f} MB more than empty |",
        f"| the same, after each query once (columns of the mutable chunks converted) | {queried / 1e6:,.0f} | – | "
        f"{(queried - empty) / 1e6 * per_m:,.0f} MB more than empty |",
        "", "The sealed cluster is the suite's (2 leaves; `decoded_cache_mb` 1024 per leaf). Mutable rows are "
        "kept as parsed documents (with their RocksDB copy in the memtable and block cache) until they are sealed."]))


def machine():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small data and short runs (a few minutes)")
    parser.add_argument("--hits", type=int, help="hits rows (default 2,000,000; quick 100,000)")
    parser.add_argument("--docs", type=int, help="~1 KB documents (default 300,000; quick 30,000)")
    parser.add_argument("--runs", type=int, help="hot runs per query (default 10; quick 3)")
    parser.add_argument("--bin-dir", default=default_bin_dir())
    parser.add_argument("--areas", default="ingest,kafka,freshness,queries,concurrency,scatter,memory")
    parser.add_argument("--saturated", type=float,
                        help="docs/s taken as the saturated HTTP ingest rate, whose 50%% runs beside the "
                             "concurrency area (default: the ingest area's measure, else 20,000)")
    parser.add_argument("--markdown", help="also write the report to this file")
    args = parser.parse_args()
    hits_rows = args.hits or (100_000 if args.quick else 2_000_000)
    docs = args.docs or (30_000 if args.quick else 300_000)
    runs = args.runs or (3 if args.quick else 10)
    span = 6 if args.quick else 30
    areas = set(args.areas.split(","))

    work = tempfile.mkdtemp(prefix="altdb-suite-")
    report = []
    try:
        # Generated data is deterministic (fixed seeds), so it is cached between runs.
        cache = os.environ.get("ALTDB_BENCH_CACHE", os.path.expanduser("~/.cache/altdb-bench"))
        os.makedirs(cache, exist_ok=True)
        hits_path = os.path.join(cache, f"hits-{hits_rows}-v1.ndjson")
        docs_path = os.path.join(cache, f"docs-{docs}-v1.ndjson")
        for path, rows in ((hits_path, lambda: datagen.hits(1, hits_rows)), (docs_path, lambda: datagen.rockbench(2, docs))):
            if not os.path.exists(path):
                print(f"generating {path} ...", file=sys.stderr)
                write_ndjson(path + ".tmp", rows())
                os.replace(path + ".tmp", path)
        regions_path = os.path.join(work, "regions.ndjson")
        write_ndjson(regions_path, ({"id": r, "name": f"region-{r % 500}", "country": ["NO", "DE", "US", "JP"][r % 4]}
                                    for r in range(REGIONS)))
        con = duckdb.connect()
        columns = ", ".join(f"{name}: '{kind}'" for name, kind in datagen.HITS_COLUMNS.items())
        hits_parquet = os.path.join(work, "hits.parquet")
        regions_parquet = os.path.join(work, "regions.parquet")
        con.execute(f"COPY (SELECT * FROM read_json('{hits_path}', format='newline_delimited', columns={{{columns}}})) "
                    f"TO '{hits_parquet}' (FORMAT parquet)")
        con.execute(f"COPY (SELECT * FROM read_json('{regions_path}', format='newline_delimited')) TO '{regions_parquet}' (FORMAT parquet)")
        needle_user, needle_watch = con.execute(
            f"SELECT UserID, WatchID FROM read_parquet('{hits_parquet}') WHERE RegionID = 7 LIMIT 1").fetchone()
        queries = hits_queries(needle_user, needle_watch)
        needle_watches = [w for (w,) in con.execute(
            f"SELECT WatchID FROM read_parquet('{hits_parquet}') USING SAMPLE 1000 ROWS (reservoir, 7)").fetchall()]

        sealed = None
        altdb = Altdb(args.bin_dir, work, 2)
        empty_leaves = rss_bytes(altdb.procs, "altdb-leaf")
        try:
            altdb.create({"name": "hits", "num_shards": 4, "id_field": "WatchID", "event_time_field": "EventTime",
                          "text_fields": ["Title"]})
            altdb.create({"name": "docs", "num_shards": 4, "id_field": "id", "event_time_field": "ts",
                          "text_fields": ["text"]})
            altdb.create({"name": "regions", "num_shards": 1, "id_field": "id"})
            rates = area_ingest(altdb, [("hits", hits_path, hits_rows), ("docs", docs_path, docs)], report) \
                if "ingest" in areas else None
            if rates is None:
                for collection, path in (("hits", hits_path), ("docs", docs_path)):
                    altdb.load(collection, path)
                    altdb.settle(collection)
            sealed = {"rows": hits_rows + docs, "bytes": sealed_bytes(altdb), "empty": empty_leaves,
                      "settled": rss_bytes(altdb.procs, "altdb-leaf")}
            if "kafka" in areas:
                area_kafka(altdb, {"name": "docs_kafka", "num_shards": 4, "id_field": "id", "event_time_field": "ts",
                                   "text_fields": ["text"]}, docs_path, docs, report)
            altdb.load("regions", regions_path)
            saturated = args.saturated or (rates or {}).get("docs") or 20_000
            if "freshness" in areas:
                area_freshness(altdb, saturated, span, report)
            two_leaves = None
            if "queries" in areas or "scatter" in areas:
                peer_list = peers(hits_parquet, regions_parquet) if "queries" in areas else []
                two_leaves = area_queries(altdb, peer_list, queries, runs, report, "2 leaves, peers in process")
            sealed["queried"] = rss_bytes(altdb.procs, "altdb-leaf")
            if "concurrency" in areas:
                mix = [q[2] for q in queries if q[1] in ("user", "os", "phrases_by_time", "sum_count_avg")]
                needles = [f'SELECT "URL", "Title" FROM hits WHERE "WatchID" = {w}' for w in needle_watches]
                area_concurrency(altdb, mix, needles, span, saturated, report)
        finally:
            altdb.stop()

        if "scatter" in areas and two_leaves:
            single = Altdb(args.bin_dir, work, 1)
            try:
                single.create({"name": "hits", "num_shards": 4, "id_field": "WatchID", "event_time_field": "EventTime",
                               "text_fields": ["Title"]})
                single.create({"name": "regions", "num_shards": 1, "id_field": "id"})
                single.load("hits", hits_path)
                single.load("regions", regions_path)
                single.settle("hits")
                lines = ["### Scatter-gather: the same data on 1 leaf and on 2 leaves (p50 ms, 4 shards)", "",
                         "| query | 1 leaf | 2 leaves | 2 leaves / 1 leaf |", "|---|---|---|---|"]
                for _, name, sql, _ in queries:
                    _, hot, _ = time_runs(lambda: single.sql(sql), runs)
                    one = statistics.median(hot)
                    lines.append(f"| {name} | {one:.1f} | {two_leaves[name]:.1f} | {two_leaves[name] / one:.2f} |")
                lines += ["", "Both leaves share this machine's cores, so 2 leaves add coordination without adding CPU."]
                report.append("\n".join(lines))
            finally:
                single.stop()
        if "memory" in areas and sealed:
            area_memory(args.bin_dir, work, hits_path, queries, sealed, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    command = "python3 bench/suite.py " + " ".join(sys.argv[1:])
    build = "release build" if "release" in args.bin_dir else f"binaries from {args.bin_dir} (not a release build: smoke test only)"
    header = (f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at commit {commit()} on "
              f"{machine()}; altdb {build}; `{command.strip()}`; {hits_rows:,} hits rows, {docs:,} documents.")
    text = header + "\n\n" + "\n\n".join(report) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
