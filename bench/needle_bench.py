#!/usr/bin/env python3
"""Needle-query benchmark: the converged index against full scans.

Writes --docs generated events (~200 B: a high-cardinality user, a unique order
id, a rare error code, a short text message) through the HTTP API into a release
cluster (2 leaves, 4 shards), waits until every segment is sealed and indexed,
then times needle queries three ways in the same run on the same data:

  altdb            the leaves answer filters from their tantivy indexes, `_id`
                   lookups from RocksDB;
  altdb, no index  the same query with {"options": {"use_index": false}}:
                   every segment scanned (the filter still runs on the leaves);
  DuckDB           the same documents in an in-memory DuckDB table, in the
                   order they were written: ids and times rise with it, so
                   DuckDB's per-row-group min/max (zone maps) skip most row
                   groups for `_id`, time and rare-value filters;
  DuckDB, shuffled the same table with its rows in random order: no row group
                   can be skipped, so every query is a full scan (as for keys
                   that do not follow arrival order: UUIDs, hashes).

Each query: one cold run, then --runs hot runs; the median is reported with the
ratios, and the CPU the leaves and the aggregator spend per indexed query
(user + system time from /proc over --cpu-runs more runs). Queries go over one kept-alive HTTP connection (as from a dashboard or
a driver's connection pool); DuckDB runs in this process. Answers are checked
to be equal across the three.

Usage: bench/needle_bench.py [--docs 10000000] [--runs 10]
Needs: cargo build --release --bins; pip install duckdb
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import duckdb

from cluster import Connection, cpu_seconds, default_bin_dir, http, start_cluster, stop

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
         "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
STATUSES = ["ok"] * 8 + ["retry", "failed"]
T0_MS = 1_763_800_000_000


def make_doc(rng, i, users):
    doc = {
        "event_id": i,
        "ts": T0_MS + i,
        "user_id": f"u{rng.randrange(users)}",
        "order_id": f"o{i * 7919 % 100_000_007}",
        "status": rng.choice(STATUSES),
        "amount": round(rng.random() * 100, 2),
        "msg": " ".join(rng.choice(WORDS) for _ in range(4)),
    }
    if i % 100_003 == 0:
        doc["error_code"] = f"E_RARE_{i % 7}"
        doc["msg"] += " zebra"
    return doc


def queries(docs):
    needle_user = "u123457"
    ids = [str(i) for i in (4242, docs // 3, docs // 2 + 17, docs - 5)]
    orders = ", ".join(f"'o{i * 7919 % 100_000_007}'" for i in (1, docs // 4, docs // 2, docs - 1))
    window = T0_MS + docs // 2
    return [
        ("point filter, high-cardinality field",
         f"SELECT COUNT(*), SUM(amount) FROM events WHERE user_id = '{needle_user}'"),
        ("rare value",
         "SELECT event_id, status FROM events WHERE error_code = 'E_RARE_3' ORDER BY event_id"),
        ("_id lookup, one document",
         f"SELECT event_id, user_id, amount FROM events WHERE _id = '{ids[1]}'"),
        ("_id lookup, 4 documents",
         f"SELECT event_id, user_id, amount FROM events WHERE _id IN ({', '.join(repr(i) for i in ids)}) ORDER BY event_id"),
        ("IN on unique field",
         f"SELECT event_id FROM events WHERE order_id IN ({orders}) ORDER BY event_id"),
        ("time window (1 s)",
         f"SELECT COUNT(*), AVG(amount) FROM events WHERE _event_time >= '{iso(window)}' "
         f"AND _event_time < '{iso(window + 1000)}'"),
        ("text search top-10",
         "SELECT event_id FROM events WHERE search(msg, 'zebra') ORDER BY _score DESC, event_id LIMIT 10",
         "SELECT event_id FROM events WHERE regexp_matches(msg, '\\bzebra\\b') ORDER BY event_id LIMIT 10"),
    ]


def iso(ms):
    """UTC timestamp text both engines cast to their timestamp type."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def rounded(rows):
    """Rows with floats rounded (sums in another order differ in the last bits)."""
    return [[round(v, 6) if isinstance(v, float) else v for v in row] for row in rows]


def timed(fn, runs):
    first = fn()  # cold run, not counted
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), first


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cpu-runs", type=int, default=300)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="altdb-needle-")
    url, procs = start_cluster(args.bin_dir, work)
    try:
        status, body = http("POST", url + "/v1/collections", {
            "name": "events", "num_shards": 4, "id_field": "event_id", "event_time_field": "ts",
            "text_fields": ["msg"]})
        assert status == 201, body
        ndjson = os.path.join(work, "events.ndjson")
        rng = random.Random(7)
        print(f"generating and writing {args.docs:,} events ...", file=sys.stderr)

        def post(chunk):
            status, body = http("POST", url + "/v1/collections/events/docs", chunk)
            assert status == 200 and not body["errors"], (status, str(body)[:300])
            return body["written"]

        def bodies():
            with open(ndjson, "w") as out:
                for start in range(0, args.docs, args.batch):
                    lines = [json.dumps(make_doc(rng, i, args.users), separators=(",", ":"))
                             for i in range(start, min(start + args.batch, args.docs))]
                    text = "\n".join(lines) + "\n"
                    out.write(text)
                    yield text.encode()

        started = time.perf_counter()
        written = 0
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            pending = set()
            for body in bodies():
                pending.add(pool.submit(post, body))
                if len(pending) >= args.clients * 2:
                    done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    written += sum(f.result() for f in done)
            written += sum(f.result() for f in pending)
        ingest_s = time.perf_counter() - started
        assert written == args.docs, written
        size = os.path.getsize(ndjson)
        print(f"ingested {written:,} events ({size / 1e6:.0f} MB) in {ingest_s:.0f} s; waiting for sealing ...",
              file=sys.stderr)
        for _ in range(120):
            status, info = http("GET", url + "/v1/collections/events")
            if all(s["mutable_rows"] == 0 for s in info["shards"]):
                break
            time.sleep(1)
        # Then until the background merger is done (the segment count holds for 10 s).
        segments, steady, waited = None, 0, time.perf_counter()
        while steady < 10 and time.perf_counter() - waited < 600:
            status, info = http("GET", url + "/v1/collections/events")
            count = sum(s["sealed_segments"] for s in info["shards"])
            steady = steady + 1 if count == segments else 0
            segments = count
            time.sleep(1)
        print(f"{segments} sealed segments after merging ({time.perf_counter() - waited:.0f} s)", file=sys.stderr)

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        started = time.perf_counter()
        con.execute(
            f"CREATE TABLE events AS SELECT CAST(event_id AS VARCHAR) AS _id, make_timestamp(ts * 1000) AS _event_time, * "
            f"FROM read_json('{ndjson}', format='newline_delimited', sample_size=-1, "
            f"columns={{event_id: 'BIGINT', ts: 'BIGINT', user_id: 'VARCHAR', order_id: 'VARCHAR', status: 'VARCHAR', "
            f"amount: 'DOUBLE', msg: 'VARCHAR', error_code: 'VARCHAR'}})")
        duck_load_s = time.perf_counter() - started
        con.execute("CREATE TABLE events_shuffled AS SELECT * FROM events ORDER BY hash(_id)")

        client = Connection(url)

        def altdb(sql, use_index=True):
            status, answer = client.post("/v1/query", {"sql": sql, "options": {"use_index": use_index}})
            assert status == 200, answer
            return answer

        print(f"\n## Needle queries, {args.docs:,} events ({size / 1e6:.0f} MB NDJSON), 2 leaves, 4 shards, "
              f"{segments} sealed segments; DuckDB {duckdb.__version__} in memory; {os.cpu_count()} cores\n")
        print("| query | altdb ms | altdb, no index ms | DuckDB ms | DuckDB, shuffled ms | no index / altdb | DuckDB / altdb "
              "| DuckDB, shuffled / altdb | rows read (index / scan) | altdb CPU ms (leaves + aggregator) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, sql, *peer in queries(args.docs):
            duck_sql = peer[0] if peer else sql
            fast_ms, fast = timed(lambda: altdb(sql), args.runs)
            before = cpu_seconds(procs)
            for _ in range(args.cpu_runs):
                altdb(sql)
            after = cpu_seconds(procs)
            cpu_ms = sum(after[name] - before.get(name, 0.0) for name in after
                         if name != "altdb-tailer") * 1000 / args.cpu_runs
            slow_ms, slow = timed(lambda: altdb(sql, use_index=False), max(3, args.runs // 3))
            duck_ms, duck = timed(lambda: con.execute(duck_sql).fetchall(), args.runs)
            shuffled_sql = duck_sql.replace("FROM events ", "FROM events_shuffled ")
            shuffled_ms, shuffled = timed(lambda: con.execute(shuffled_sql).fetchall(), args.runs)
            assert rounded(shuffled) == rounded(duck), (name, shuffled[:5], duck[:5])
            expected = rounded(duck)
            for answer in (fast, slow):
                got = rounded(answer["rows"])
                if "search(" not in sql:
                    assert got == expected, (name, got[:5], expected[:5])
                else:
                    assert len(got) == len(expected), (name, got, expected)
            print(f"| {name} | {fast_ms:.2f} | {slow_ms:.1f} | {duck_ms:.1f} | {shuffled_ms:.1f} | {slow_ms / fast_ms:.0f}x | "
                  f"{duck_ms / fast_ms:.1f}x | {shuffled_ms / fast_ms:.1f}x "
                  f"| {fast['stats']['rows_scanned']:,} / {slow['stats']['rows_scanned']:,} "
                  f"| {cpu_ms:.2f} |")
        print(f"\ningest over HTTP: {args.docs / ingest_s:,.0f} events/s; DuckDB load of the same file: {duck_load_s:.1f} s")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
