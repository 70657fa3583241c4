#!/usr/bin/env python3
"""The fixed cost of a query: `SELECT COUNT(*)` and needle queries on a small
`hits` collection (2 leaves, 4 shards), p50/p99 over many runs, each statement
run the same way over and over (kept plans) and with a literal that changes on
every call. DuckDB over the same rows in memory is the peer.

The cases run twice, on two clusters loaded with the same rows: once sealed
(columnar segments with their indexes) and once with every row still in the
leaves' mutable segments (sealing held off), as right after a write: a
real-time engine is queried hardest on its newest rows.

With --perf SECONDS, `perf record` samples the aggregator and the leaves while
COUNT(*) runs in a loop and the hottest symbols of each are printed (where the
time goes).

    cargo build --release --bins
    python3 bench/fixed_cost.py [--hits 100000] [--runs 500] [--only sealed|mutable] [--perf 10]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import datagen  # noqa: E402
from cluster import default_bin_dir, http, percentile, start_cluster, stop  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hits", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--only", choices=["sealed", "mutable"], help="run one of the two clusters")
    parser.add_argument("--perf", type=float, default=0, help="seconds of perf record during --perf-case")
    parser.add_argument("--perf-case", default="count", help="which query to profile (a case name's first word)")
    parser.add_argument("--perf-children", action="store_true",
                        help="report inclusive time (where it is spent from; DWARF call graphs, the aggregator only)")
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()
    cache = os.environ.get("ALTDB_BENCH_CACHE", os.path.expanduser("~/.cache/altdb-bench"))
    os.makedirs(cache, exist_ok=True)
    hits_path = os.path.join(cache, f"hits-{args.hits}-v1.ndjson")  # the suite's rows (same seed)
    if not os.path.exists(hits_path):
        with open(hits_path + ".tmp", "w") as f:
            for row in datagen.hits(1, args.hits):
                f.write(json.dumps(row) + "\n")
        os.replace(hits_path + ".tmp", hits_path)
    rows = []
    with open(hits_path) as f:
        for line, _ in zip(f, range(args.hits)):
            rows.append(json.loads(line))
    watch_ids = [r["WatchID"] for r in rows[:1000]]
    users = [r["UserID"] for r in rows[:1000]]
    cases = [
        ("count", lambda i: "SELECT COUNT(*) FROM hits"),
        ("needle, same literal", lambda i: f'SELECT "URL", "Title" FROM hits WHERE "WatchID" = {watch_ids[0]}'),
        ("needle, new literal each call", lambda i: f'SELECT "URL", "Title" FROM hits WHERE "WatchID" = {watch_ids[i % 1000]}'),
        ("needle by user, new literal", lambda i: f'SELECT COUNT(*), MIN("EventTime") FROM hits WHERE "UserID" = {users[i % 1000]}'),
        ("needle by user and time window", lambda i: f'SELECT COUNT(*) FROM hits WHERE "UserID" = {users[i % 1000]} '
         f"AND \"EventTime\" >= '2013-07-15' AND \"CounterID\" = 62"),
        # The latest event of a rare user before a time: a top-k over an index
        # selecting a few rows (DuckDB: its EventTime is the event time).
        ("latest of a user (top-k)", lambda i: f'SELECT "WatchID", "URL" FROM hits WHERE "UserID" = {users[3]} '
         "AND _event_time < '2013-07-20' ORDER BY _event_time DESC LIMIT 1"),
    ]
    peer_sql = {"latest of a user (top-k)": lambda q: q.replace("_event_time", '"EventTime"')}

    import duckdb
    import pandas as pd
    con = duckdb.connect()
    frame = pd.DataFrame(rows)  # noqa: F841 (read by DuckDB)
    con.execute("CREATE TABLE hits AS SELECT * FROM frame")
    con.execute('ALTER TABLE hits ALTER "EventTime" TYPE TIMESTAMP')

    def duck(name, make_sql):
        samples = []
        for i in range(args.runs):
            q = peer_sql.get(name, lambda q: q)(make_sql(i))
            started = time.perf_counter()
            con.execute(q).fetchall()
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    phases = [p for p in ("sealed", "mutable") if args.only in (None, p)]
    results = {}
    for phase in phases:
        results[phase] = run_phase(args, phase, hits_path, cases, duck if phase == phases[0] else None,
                                   perf=phase == phases[-1])
    print(f"{args.hits:,} hits rows, 2 leaves, 4 shards; {args.runs} runs after 20 warm-up runs; "
          "one keep-alive HTTP connection; DuckDB over the rows in memory")
    columns = " | ".join(f"altdb {p} p50 ms | {p} p99 ms" for p in phases)
    extra = " | mutable/sealed" if len(phases) == 2 else ""
    print(f"| query | {columns} | DuckDB p50 ms | altdb/DuckDB{extra} |")
    print("|---|" + "---|---|" * len(phases) + "---|---|" + ("---|" if extra else ""))
    for name, _ in cases:
        cells = " | ".join(f"{results[p][name][0]:.2f} | {results[p][name][1]:.2f}" for p in phases)
        duck_p50 = results[phases[0]][name][2]
        ratio = f" | {results['mutable'][name][0] / results['sealed'][name][0]:.2f}" if extra else ""
        print(f"| {name} | {cells} | {duck_p50:.2f} | {results[phases[0]][name][0] / duck_p50:.1f}{ratio} |")


def run_phase(args, phase, hits_path, cases, duck, perf):
    """Loads the rows into a new cluster and times `cases`: {name: (p50, p99, DuckDB p50)}.
    `mutable`: sealing is held off, so every row stays in the mutable segments."""
    work = tempfile.mkdtemp(prefix="altdb-fixed-cost-bench-")
    saved = dict(os.environ)
    if phase == "mutable":
        os.environ.update(ALTDB_SEAL_ROWS="100000000", ALTDB_SEAL_INTERVAL_SECS="100000")
    try:
        url, procs = start_cluster(args.bin_dir, work, leaves=2)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        status, body = http("POST", url + "/v1/collections", {
            "name": "hits", "num_shards": 4, "id_field": "WatchID", "event_time_field": "EventTime"})
        assert status == 201, body
        with open(hits_path, "rb") as f:
            chunk = []
            for line in f:
                chunk.append(line)
                if len(chunk) == 5000:
                    status, answer = http("POST", url + "/v1/collections/hits/docs", b"".join(chunk))
                    assert status == 200, answer
                    chunk = []
            if chunk:
                status, answer = http("POST", url + "/v1/collections/hits/docs", b"".join(chunk))
                assert status == 200, answer
        # Sealed and indexed (seal_interval_secs 10), or still all in memory.
        deadline = time.monotonic() + 120
        while True:
            _, info = http("GET", url + "/v1/collections/hits")
            mutable = sum(s["mutable_rows"] for s in info["shards"])
            if (mutable == 0) == (phase == "sealed") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert (mutable == 0) == (phase == "sealed"), f"{phase}: {mutable} rows in mutable segments"
        if phase == "sealed":
            time.sleep(2)  # indexes built

        # One keep-alive connection, like a dashboard's driver.
        import http.client as httpclient
        host, port = url.removeprefix("http://").split(":")
        conn = httpclient.HTTPConnection(host, int(port))

        def sql(q):
            conn.request("POST", "/v1/query", json.dumps({"sql": q}), {"content-type": "application/json"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200, body
            return json.loads(body)["rows"]

        assert sql("SELECT COUNT(*) FROM hits")[0][0] == args.hits

        def timed(make_sql):
            for i in range(20):
                sql(make_sql(i))
            samples = []
            for i in range(args.runs):
                q = make_sql(i)
                started = time.perf_counter()
                sql(q)
                samples.append((time.perf_counter() - started) * 1000)
            return statistics.median(samples), percentile(samples, 0.99)

        results = {}
        for name, make in cases:
            p50, p99 = timed(make)
            results[name] = (p50, p99, duck(name, make) if duck else None)
        if perf and args.perf:
            profile(args, procs, work, sql, cases)
        return results
    finally:
        stop(procs)


def profile(args, procs, work, sql, cases):
    """`perf record` of the leaves and the aggregator while --perf-case runs in a loop."""
    names = ["leaf-0", "leaf-1", "aggregator"]
    pids = [p.pid for p in procs[:3]]
    out = os.path.join(work, "perf.data")
    if args.perf_children:
        names, pids = names[2:], pids[2:]
    graph = ["--call-graph", "dwarf,32768", "-F", "299"] if args.perf_children else ["-g", "-F", "999"]
    record = subprocess.Popen(["perf", "record", *graph, "-o", out, "-p",
                               ",".join(map(str, pids)), "--", "sleep", str(args.perf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name, make = next(c for c in cases if c[0].startswith(args.perf_case))
    deadline = time.monotonic() + args.perf
    n = 0
    while time.monotonic() < deadline:
        sql(make(n))
        n += 1
    record.wait()
    print(f"perf: {n} runs of `{name}` in {args.perf:.0f} s")
    for name, pid in zip(names, pids):
        report = subprocess.run(["perf", "report", "-i", out, "--pid", str(pid),
                                 "--children" if args.perf_children else "--no-children",
                                 "--percent-limit", "1.5", "--stdio", "-g", "none", "--sort", "sym"],
                                capture_output=True, text=True).stdout
        print(f"--- {name} (pid {pid})")
        print("\n".join(l for l in report.splitlines() if l and not l.startswith("#"))[:6000])


if __name__ == "__main__":
    main()
