#!/usr/bin/env python3
"""End-to-end benchmark: HTTP ingest into a local cluster and query latency vs DuckDB.

Starts the release binaries (2 leaves, 1 tailer, 1 aggregator) on loopback with a
fresh data directory, writes N generated clickstream documents (~0.5 KB each)
through the HTTP API, then times the same queries on altdb and on DuckDB (loaded
from the same documents) and prints a table with the ratio.

Usage: bench/e2e_bench.py [--docs 1000000] [--runs 5] [--bin-dir DIR]
Build first: cargo build --release --bins
"""
import argparse
import concurrent.futures
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

import duckdb

from cluster import default_bin_dir, http, start_cluster, stop

QUERIES = [
    ("count", "SELECT COUNT(*) FROM clicks"),
    ("group_by", "SELECT event_type, COUNT(*), AVG(duration_ms) FROM clicks GROUP BY event_type"),
    ("group_by_high_card", "SELECT user_id, COUNT(*) AS c FROM clicks GROUP BY user_id ORDER BY c DESC LIMIT 10"),
    ("selective_filter", "SELECT COUNT(*), SUM(price) FROM clicks WHERE user_id = 'u4242'"),
    ("nested_filter", "SELECT COUNT(*) FROM clicks WHERE \"geo.city\" = 'Oslo' AND duration_ms > 50000"),
    ("top_k", "SELECT event_id, price FROM clicks WHERE price IS NOT NULL ORDER BY price DESC, event_id LIMIT 10"),
]

EVENT_TYPES = ["page_view"] * 3 + ["click"] * 2 + ["add_to_cart", "purchase", "search"]
CITIES = [("NO", "Oslo"), ("NO", "Bergen"), ("DE", "Berlin"), ("FR", "Paris"), ("US", "Boston"), ("JP", "Tokyo")]
SECTIONS = ["home", "products", "cart", "checkout", "blog", "help"]


def skewed(rng, n):
    u = rng.random()
    return min(int(n ** (u * u)) - 1, n - 1) if n > 1 else 0


def make_doc(rng, i):
    event_type = rng.choice(EVENT_TYPES)
    country, city = CITIES[skewed(rng, len(CITIES))]
    section = rng.choice(SECTIONS)
    doc = {
        "event_id": i,
        "ts": 1_763_800_000_000 + i * 7,
        "user_id": f"u{skewed(rng, 50_000)}",
        "event_type": event_type,
        "page": {"url": f"https://shop.example.com/{section}/{skewed(rng, 5000)}", "section": section},
        "device": {"type": rng.choice(["desktop", "mobile", "tablet"]), "os": rng.choice(["linux", "ios", "android", "windows"])},
        "geo": {"country": country, "city": city},
        "duration_ms": skewed(rng, 60_000),
        "tags": [rng.choice(SECTIONS), rng.choice(["a", "b", "c"])],
    }
    if event_type in ("purchase", "add_to_cart"):
        doc["price"] = round(rng.random() * 500, 2)
    return doc


def timed(fn, runs):
    fn()  # cold run, not counted
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="altdb-bench-")
    rng = random.Random(42)
    print(f"generating {args.docs} documents ...", file=sys.stderr)
    lines = [json.dumps(make_doc(rng, i), separators=(",", ":")) for i in range(args.docs)]
    ndjson_path = os.path.join(work, "clicks.ndjson")
    with open(ndjson_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    total_bytes = os.path.getsize(ndjson_path)
    bodies = ["\n".join(lines[i:i + args.batch]).encode() for i in range(0, len(lines), args.batch)]

    url, procs = start_cluster(args.bin_dir, work)
    try:
        status, body = http("POST", url + "/v1/collections", {"name": "clicks", "num_shards": 4, "id_field": "event_id", "event_time_field": "ts"})
        assert status == 201, body

        def post(chunk):
            status, body = http("POST", url + "/v1/collections/clicks/docs", chunk)
            assert status == 200 and not body["errors"], (status, str(body)[:300])
            return body["written"]

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            written = sum(pool.map(post, bodies))
        ingest_s = time.perf_counter() - started
        assert written == args.docs, written

        con = duckdb.connect()
        flat = os.path.join(work, "flat.ndjson")
        with open(flat, "w") as f:
            for line in lines:
                doc = json.loads(line)
                for key in ("page", "device", "geo"):
                    for k, v in doc.pop(key).items():
                        doc[f"{key}.{k}"] = v
                f.write(json.dumps(doc) + "\n")
        con.execute(f"CREATE TABLE clicks AS SELECT * FROM read_json('{flat}', format='newline_delimited', sample_size=-1)")

        print(f"\n## altdb vs DuckDB {duckdb.__version__}, {args.docs:,} documents, {os.cpu_count()} cores\n")
        print(f"ingest over HTTP into 2 leaves (4 shards, {args.clients} clients, {args.batch} docs/request): "
              f"{args.docs / ingest_s:,.0f} docs/s, {total_bytes / ingest_s / 1e6:.1f} MB/s ({total_bytes / args.docs:.0f} B/doc, {ingest_s:.1f} s)\n")
        print("| query | altdb p50 ms | DuckDB p50 ms | altdb/DuckDB | rows scanned |")
        print("|---|---|---|---|---|")
        for name, sql in QUERIES:
            status, answer = http("POST", url + "/v1/query", {"sql": sql})
            assert status == 200, answer
            altdb_ms = timed(lambda: http("POST", url + "/v1/query", {"sql": sql}), args.runs)
            duck_ms = timed(lambda: con.execute(sql).fetchall(), args.runs)
            print(f"| {name} | {altdb_ms:.1f} | {duck_ms:.1f} | {altdb_ms / duck_ms:.1f}x | {answer['stats']['rows_scanned']:,} |")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
