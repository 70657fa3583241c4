#!/usr/bin/env python3
"""Query latency with one copy of every shard hung (SIGSTOP), against healthy.

3 leaves, a collection of 6 shards with replication 2 (every leaf holds 4
copies), DOCS documents. A client runs a mix of dashboard statements (a count,
a grouped aggregate, a top-k and a needle by _id) over one kept-alive
connection for SECONDS with every leaf up, then again after SIGSTOP of one
leaf: the leaf's connections stay open and it answers nothing. The aggregator
hedges a fragment whose copy is slower than its usual p95 to the shard's other
copy, and suspects a copy that stays silent past the fragment deadline (2 s),
asking it last from then on. Reported: p50/p99 of each phase, the first
3 seconds after the stop apart (hedges at work) and the ratio to healthy, and
the slowest statement, how many fragments were hedged — then the same with hedging off
(`hedged_reads = false`) for comparison.

    cargo build --release --bins
    python3 bench/hedge_bench.py [--docs 200000] [--seconds 20]
"""
import argparse
import os
import random
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from cluster import Connection, default_bin_dir, http, percentile, start_cluster, stop  # noqa: E402

STATEMENTS = [
    lambda rng: "SELECT COUNT(*) FROM r",
    lambda rng: "SELECT g, COUNT(*), SUM(a) FROM r GROUP BY g ORDER BY g",
    lambda rng: "SELECT id, a FROM r ORDER BY a DESC LIMIT 5",
    lambda rng: f"SELECT a FROM r WHERE _id = '{rng.randrange(1000)}'",
]


def run(conn, rng, seconds):
    """(elapsed seconds since start, latency ms, hedged) of each statement."""
    samples = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        sql = rng.choice(STATEMENTS)(rng)
        t = time.perf_counter()
        status, body = conn.post("/v1/query", {"sql": sql})
        ms = (time.perf_counter() - t) * 1000
        assert status == 200, (sql, body)
        samples.append((t - started, ms, body["stats"].get("hedged", 0)))
        if ms > 1000 and os.environ.get("HEDGE_BENCH_DEBUG"):
            print(f"slow: {ms:.0f} ms {sql} {body['stats']}", file=sys.stderr)
    return samples


def summary(name, samples, healthy=None):
    latencies = [ms for _, ms, _ in samples]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    line = f"{name:<40} {len(samples):>6} {p50:>8.2f} {p99:>8.2f} {max(latencies):>8.1f}"
    if healthy:
        line += f" {p50 / healthy[0]:>7.2f}x {p99 / healthy[1]:>7.2f}x"
    else:
        line += f" {'':>8} {'':>8}"
    line += f" {sum(h for _, _, h in samples):>7}"
    print(line)
    return p50, p99


def measure(args, hedged):
    """Loads the data into a fresh cluster and runs the phases; hedged reads on or off."""
    os.environ["ALTDB_HEDGED_READS"] = "true" if hedged else "false"
    work = tempfile.mkdtemp(prefix="altdb-hedge-bench-")
    url, procs = start_cluster(args.bin_dir, work, leaves=3)
    leaf = procs[1]
    try:
        status, body = http("POST", url + "/v1/collections", {
            "name": "r", "num_shards": 6, "replication": 2, "id_field": "id"})
        assert status == 201, body
        rng = random.Random(7)
        for start in range(0, args.docs, 10_000):
            lines = "".join(
                f'{{"id": {i}, "a": {rng.randrange(1_000_000)}, "g": {i % 20}, "s": "k{i % 1000}"}}\n'
                for i in range(start, min(args.docs, start + 10_000)))
            status, body = http("POST", url + "/v1/collections/r/docs", lines.encode())
            assert status == 200, body
        for _ in range(600):
            if http("POST", url + "/v1/query", {"sql": "SELECT COUNT(*) FROM r"})[1]["rows"][0][0] == args.docs:
                break
            time.sleep(0.1)
        conn = Connection(url)
        run(conn, rng, 2)  # warm: plans and fields remembered, leaves' caches
        mode = "hedged" if hedged else "not hedged"
        healthy = summary(f"{mode}: every leaf up", run(conn, rng, args.seconds))
        leaf.send_signal(signal.SIGSTOP)
        stopped = run(conn, rng, args.seconds)
        summary(f"{mode}: leaf 1 stopped, all", stopped, healthy)
        summary(f"{mode}: leaf 1 stopped, first 3 s", [s for s in stopped if s[0] < 3], healthy)
        summary(f"{mode}: leaf 1 stopped, after 3 s", [s for s in stopped if s[0] >= 3], healthy)
        leaf.send_signal(signal.SIGCONT)
        time.sleep(1)
        summary(f"{mode}: leaf 1 resumed", run(conn, rng, args.seconds / 2), healthy)
    finally:
        leaf.send_signal(signal.SIGCONT)
        stop(procs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()
    print(f"{args.docs} docs, 6 shards x 2 copies on 3 leaves; statements: count, group, top-k, needle")
    print(f"{'phase':<40} {'queries':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50/ok':>8} {'p99/ok':>8} {'hedged':>7}")
    measure(args, hedged=True)
    # The same without hedging (`hedged_reads = false`): only suspicion after
    # a missed deadline protects queries from the hung copy.
    measure(args, hedged=False)


if __name__ == "__main__":
    main()
