"""What the aggregator's limits do under abuse (release binaries, loopback cluster).

1. A query that needs more memory than `query_memory_mb`: the error, its time,
   and the aggregator's RSS before and after (it must stay up and small).
2. A burst of N concurrent heavy queries against `max_concurrent_queries` and
   `max_queued_queries`: how many are served and how many told to retry (429),
   their latencies, the peak RSS, and how fast a trivial query and a health
   check are answered in the middle of the burst.

    python3 bench/limits_bench.py [--clients 64] [--query-memory-mb 512]
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from cluster import default_bin_dir, http, start_cluster, stop  # noqa: E402

HEAVY = ("SELECT COUNT(*) AS n FROM generate_series(1, 40000) a, generate_series(1, 10000) b "
         "WHERE (a.value * b.value) % 7 = 1")
OVER_BUDGET = "SELECT array_agg(value) FROM generate_series(1, 200000000)"


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def post(url, sql, timeout=600):
    started = time.perf_counter()
    request = urllib.request.Request(url + "/v1/query", data=json.dumps({"sql": sql}).encode(),
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, (time.perf_counter() - started) * 1000, json.loads(body or b"null")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", default=default_bin_dir())
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--query-memory-mb", type=int, default=512)
    args = parser.parse_args()
    os.environ["ALTDB_QUERY_MEMORY_MB"] = str(args.query_memory_mb)
    data_dir = tempfile.mkdtemp(prefix="altdb-limits-bench-")
    url, procs = start_cluster(args.bin_dir, data_dir)
    aggregator = next(p for p in procs if p.args[0].endswith("altdb-aggregator"))
    try:
        before = rss_mb(aggregator.pid)
        status, ms, body = post(url, OVER_BUDGET)
        after = rss_mb(aggregator.pid)
        alive = http("GET", url + "/v1/cluster")[0] == 200
        code = (body or {}).get("error", {}).get("code") if status != 200 else "ok"
        print(f"over-budget query ({args.query_memory_mb} MiB budget): status {status} {code} "
              f"in {ms:.0f} ms; aggregator RSS {before:.0f} MB before, {after:.0f} MB after; "
              f"alive: {alive}")

        one = post(url, HEAVY)
        print(f"one heavy query alone: {one[1]:.0f} ms")
        peak = [rss_mb(aggregator.pid)]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(aggregator.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with concurrent.futures.ThreadPoolExecutor(args.clients + 2) as pool:
            burst = [pool.submit(post, url, HEAVY) for _ in range(args.clients)]
            time.sleep(0.3)
            light = post(url, "SELECT 1")
            started = time.perf_counter()
            with urllib.request.urlopen(url + "/healthz", timeout=60) as response:
                health = (response.status,)
            health_ms = (time.perf_counter() - started) * 1000
            results = [f.result() for f in burst]
        done.set()
        sampler.join()
        served = [ms for status, ms, _ in results if status == 200]
        refused = [ms for status, ms, _ in results if status == 429]
        other = [status for status, _, _ in results if status not in (200, 429)]
        print(f"\n| {args.clients} concurrent heavy queries | value |\n|---|---|")
        print(f"| served (200) | {len(served)} (p50 {percentile(served, 0.5):.0f} ms, "
              f"max {max(served, default=float('nan')):.0f} ms) |")
        print(f"| told to retry (429) | {len(refused)} (answered in p50 "
              f"{percentile(refused, 0.5):.1f} ms, max {max(refused, default=float('nan')):.1f} ms) |")
        print(f"| other statuses | {other or 'none'} |")
        print(f"| `SELECT 1` during the burst | status {light[0]} in {light[1]:.1f} ms |")
        print(f"| `GET /healthz` during the burst | status {health[0]} in {health_ms:.1f} ms |")
        print(f"| aggregator peak RSS | {peak[0]:.0f} MB |")
    finally:
        stop(procs)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
