#!/usr/bin/env python3
"""What a read-your-writes fence costs: a client writes one document, then
queries for it with the fence its write answered with
(`"options": {"fence": ..}`), while a producer posts ~1 KB documents into the
same collection at 50 % of the saturated HTTP rate (measured first, on the
same cluster). Reports the fence wait (`stats.fence_wait_ms`, the time the
aggregator spent making sure every copy it may read holds the write), the
query's latency with and without the fence, and whether the write was seen.

    cargo build --release --bins
    python3 bench/fence_bench.py [--seconds 20] [--leaves 2]
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import datagen  # noqa: E402
from cluster import Connection, default_bin_dir, http  # noqa: E402
from suite import Altdb, PacedProducer, percentile, write_ndjson  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--leaves", type=int, default=2)
    parser.add_argument("--saturation-docs", type=int, default=100_000)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="altdb-fence-bench-")
    altdb = Altdb(args.bin_dir, work, args.leaves)
    try:
        altdb.create({"name": "sat", "num_shards": 4, "id_field": "id", "event_time_field": "ts"})
        path = os.path.join(work, "sat.ndjson")
        write_ndjson(path, datagen.rockbench(5, args.saturation_docs))
        saturated = args.saturation_docs / altdb.load("sat", path)
        altdb.create({"name": "load", "num_shards": 4, "id_field": "id", "event_time_field": "ts"})
        rate = saturated * 0.5
        producer = PacedProducer(altdb, "load", rate, seed=7)
        producer.start()
        time.sleep(1)
        conn = Connection(altdb.url)
        waits, fenced, plain, checks = [], [], [], []
        seen = 0
        n = 0
        stop_at = time.monotonic() + args.seconds
        while time.monotonic() < stop_at:
            n += 1
            probe = f"probe-{n}"
            now_us = time.time_ns() // 1000
            status, written = http("POST", altdb.url + "/v1/collections/load/docs",
                                   json.dumps({"id": probe, "ts": now_us, "sent_us": now_us}).encode())
            assert status == 200 and written["written"] == 1, written
            fence = written["fence"]
            sql = f"SELECT COUNT(*) FROM load WHERE _id = '{probe}'"

            def with_fence():
                started = time.perf_counter()
                status, answer = conn.post("/v1/query", {"sql": sql, "options": {"fence": fence}})
                fenced.append((time.perf_counter() - started) * 1000)
                assert status == 200, answer
                waits.append(answer["stats"]["fence_wait_ms"])
                return answer["rows"][0][0] == 1

            def without():
                # Another statement text, so neither query reuses the other's plan.
                started = time.perf_counter()
                status, answer = conn.post("/v1/query", {"sql": sql.replace("COUNT(*)", "COUNT(*) AS n")})
                plain.append((time.perf_counter() - started) * 1000)
                assert status == 200, answer

            # Alternating which runs first: the first read after a write pays
            # for what the write changed (the mutable segment's chunk cache).
            if n % 2:
                seen += with_fence()
                without()
            else:
                without()
                seen += with_fence()
            started = time.perf_counter()
            status, answer = conn.post("/v1/collections/load/fences/check", {"fence": fence})
            checks.append((time.perf_counter() - started) * 1000)
            assert status == 200 and answer["visible"], answer
        written = producer.stop()
        achieved = written / (args.seconds + 1)
        print(f"{args.leaves} leaves; saturated HTTP rate {saturated:,.0f} docs/s; load {achieved:,.0f} docs/s "
              f"(target {rate:,.0f}, 50 %); {n} probes (write one document, then read it)")
        print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8}")
        for name, samples in [("fence wait (stats.fence_wait_ms)", waits),
                              ("query with the fence", fenced),
                              ("same query without a fence", plain),
                              ("fences/check", checks)]:
            print(f"{name:<34} {percentile(samples, 50):>8.2f} {percentile(samples, 99):>8.2f}")
        print(f"probes whose write the fenced query saw: {seen} of {n}")
    finally:
        altdb.stop()


if __name__ == "__main__":
    main()
