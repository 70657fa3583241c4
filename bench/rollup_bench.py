#!/usr/bin/env python3
"""What a rollup saves: the same ~1 KB events posted over HTTP to a raw
collection, to a rollup of it (per minute of their `ts` and kind: COUNT,
SUM, MIN, MAX; the events span 10 minutes) and to a rollup with sketches as
well (COUNT(DISTINCT user), QUANTILES(amount)), then the per-kind totals,
distinct users and 99th percentile asked of each, with DuckDB's GROUP BY over
the raw events in memory as the peer. Reports ingest rates, documents and
bytes stored, query p50 for each and the sketches' error.

    cargo build --release --bins
    python3 bench/rollup_bench.py [--docs 200000]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from cluster import default_bin_dir, dir_bytes, http, start_cluster, stop  # noqa: E402

BATCH = 5_000
KINDS = ["view", "click", "buy", "share"]
ROLLUP = ("SELECT date_trunc('minute', to_timestamp_micros(ts)) AS _event_time, kind, COUNT(*) AS n, "
          "SUM(amount) AS total, MIN(amount) AS low, MAX(amount) AS high FROM _input GROUP BY 1, 2")
SKETCHED = ROLLUP.replace(" FROM _input", ", COUNT(DISTINCT user) AS users, QUANTILES(amount) AS amounts FROM _input")


def events(count, start_us):
    for i in range(count):
        yield {"id": f"e{i}", "ts": start_us + i * 3_000, "kind": KINDS[i % len(KINDS)],
               "amount": (i * 7919) % 1000 / 4.0, "user": f"u{i % 9973}", "pad": "x" * 900}


def post(url, collection, rows):
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        body = "".join(json.dumps(d) + "\n" for d in rows[start:start + BATCH]).encode()
        status, answer = http("POST", f"{url}/v1/collections/{collection}/docs", body)
        assert status == 200 and not answer["errors"], str(answer)[:300]
    return len(rows) / (time.perf_counter() - started)


def p50(fn, runs=20):
    fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="altdb-rollup-bench-")
    url, procs = start_cluster(args.bin_dir, work, leaves=2)
    try:
        for spec in ({"name": "raw", "num_shards": 4, "id_field": "id", "event_time_field": "ts"},
                     {"name": "per_minute", "num_shards": 4, "rollup": ROLLUP},
                     {"name": "sketched", "num_shards": 4, "rollup": SKETCHED}):
            status, body = http("POST", url + "/v1/collections", spec)
            assert status == 201, body
        rows = list(events(args.docs, time.time_ns() // 1000 - args.docs * 3_000))
        raw_rate = post(url, "raw", rows)
        rollup_rate = post(url, "per_minute", rows)
        sketched_rate = post(url, "sketched", rows)

        def sql(q):
            status, answer = http("POST", url + "/v1/query", {"sql": q})
            assert status == 200, answer
            return answer["rows"]

        raw_q = ("SELECT kind, COUNT(*), SUM(amount), MIN(amount), MAX(amount) FROM raw "
                 "GROUP BY kind ORDER BY kind")
        rollup_q = ("SELECT kind, SUM(n), SUM(total), MIN(low), MAX(high) FROM per_minute "
                    "GROUP BY kind ORDER BY kind")
        for _ in range(600):
            if sql("SELECT COUNT(*) FROM raw")[0][0] == args.docs and \
                    sql("SELECT SUM(n) FROM per_minute")[0][0] == args.docs and \
                    sql("SELECT SUM(n) FROM sketched")[0][0] == args.docs:
                break
            time.sleep(0.1)
        assert sql(raw_q) == sql(rollup_q), (sql(raw_q), sql(rollup_q))
        groups = sql("SELECT COUNT(*) FROM per_minute")[0][0]
        raw_ms, rollup_ms = p50(lambda: sql(raw_q)), p50(lambda: sql(rollup_q))
        raw_sk = ("SELECT kind, COUNT(DISTINCT user), approx_percentile_cont(amount, 0.99) FROM raw "
                  "GROUP BY kind ORDER BY kind")
        rollup_sk = ("SELECT kind, sketch_distinct(users), sketch_quantile(amounts, 0.99) FROM sketched "
                     "GROUP BY kind ORDER BY kind")
        exact, estimated = sql(raw_sk), sql(rollup_sk)
        distinct_error = max(abs(e[1] - x[1]) / x[1] for e, x in zip(estimated, exact))
        raw_sk_ms, rollup_sk_ms = p50(lambda: sql(raw_sk)), p50(lambda: sql(rollup_sk))

        import duckdb
        import pandas as pd
        con = duckdb.connect()
        frame = pd.DataFrame(rows)  # noqa: F841 (read by DuckDB)
        con.execute("CREATE TABLE t AS SELECT * FROM frame")
        duck_ms = p50(lambda: con.execute(
            "SELECT kind, COUNT(*), SUM(amount), MIN(amount), MAX(amount) FROM t GROUP BY kind ORDER BY kind"
        ).fetchall())
        duck_sk = ("SELECT kind, COUNT(DISTINCT user), quantile_cont(amount, 0.99) FROM t "
                   "GROUP BY kind ORDER BY kind")
        duck_exact = con.execute(duck_sk).fetchall()
        quantile_error = max(abs(e[2] - x[2]) for e, x in zip(estimated, duck_exact))
        duck_sk_ms = p50(lambda: con.execute(duck_sk).fetchall())
        time.sleep(12)  # both sealed (seal_interval_secs 10)
        sizes = {name: sum(dir_bytes(os.path.join(work, f"leaf-{i}", "segments", name)) for i in range(2))
                 for name in ("raw", "per_minute", "sketched")}
        print(f"{args.docs} events (~1 KB), 2 leaves, 4 shards, batches of {BATCH} over HTTP; "
              f"{groups} rollup documents (minute x kind)")
        print(f"ingest: raw {raw_rate:,.0f} docs/s, rollup {rollup_rate:,.0f} docs/s, "
              f"rollup with sketches {sketched_rate:,.0f} docs/s")
        print(f"stored documents: raw {args.docs:,}, rollup {groups:,} ({args.docs / groups:,.0f}x fewer); "
              f"sealed segments: raw {sizes['raw'] / 1e6:,.1f} MB, rollup {sizes['per_minute'] / 1e3:,.1f} KB, "
              f"with sketches {sizes['sketched'] / 1e3:,.1f} KB")
        print(f"per-kind totals p50: raw {raw_ms:.1f} ms, rollup {rollup_ms:.1f} ms "
              f"({raw_ms / rollup_ms:.1f}x faster), DuckDB over the raw events {duck_ms:.1f} ms "
              f"(rollup/DuckDB {rollup_ms / duck_ms:.2f})")
        print(f"per-kind distinct users and p99 amount p50: raw (COUNT(DISTINCT), approx_percentile_cont) "
              f"{raw_sk_ms:.1f} ms, rollup sketches {rollup_sk_ms:.1f} ms ({raw_sk_ms / rollup_sk_ms:.1f}x faster), "
              f"DuckDB (exact) {duck_sk_ms:.1f} ms (rollup/DuckDB {rollup_sk_ms / duck_sk_ms:.2f}); "
              f"error: distinct users at most {distinct_error * 100:.2f} %, p99 at most {quantile_error:.2f} "
              f"(amounts 0..250)")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
