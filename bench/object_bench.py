#!/usr/bin/env python3
"""Object-store backfill benchmark: MB/s and rows/s ingesting an NDJSON prefix over S3.

Writes --gb GB of ~--event-bytes JSON events as --objects NDJSON objects into a
bucket of s3s-fs (a real S3-API server, files on disk) on loopback, starts the
release binaries (2 leaves, 1 tailer, 1 aggregator), creates a collection on the
prefix and times until every event is queryable (every field indexed, fsync per
put). Peer: DuckDB loading the same files with read_json (no S3, no durability, no
indexing), in the same run. Also reports CPU-seconds per GB and the tailer's peak
memory (objects are streamed, so it must not grow with object size).

Usage: bench/object_bench.py [--gb 1.0] [--objects 8] [--event-bytes 1000]
Needs: cargo build --release --bins; s3s-fs on PATH (.ci/run installs it); pip install duckdb
"""
import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time

from cluster import WORDS, cpu_seconds, default_bin_dir, event, free_port, http, start_cluster, stop

ACCESS_KEY, SECRET_KEY = "altdbbench", "altdbbenchsecret"


def start_s3s(root, data_dir):
    binary = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    port = free_port()
    log = open(os.path.join(data_dir, "s3s.log"), "w")
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", ACCESS_KEY,
                             "--secret-key", SECRET_KEY, root], stdout=log, stderr=log)
    time.sleep(0.5)
    return f"http://127.0.0.1:{port}", proc


def peak_rss_mb(proc):
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--event-bytes", type=int, default=1000)
    parser.add_argument("--gzip", action="store_true", help="write .json.gz objects")
    parser.add_argument("--bin-dir", default=default_bin_dir())
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="altdb-object-bench-")
    root = os.path.join(data_dir, "s3")
    prefix_dir = os.path.join(root, "bench", "events")
    os.makedirs(prefix_dir)
    total_bytes = int(args.gb * 1e9)
    per_object = total_bytes // args.objects
    events = 0
    written = 0
    paths = []
    print(f"writing {args.gb} GB of NDJSON as {args.objects} objects ...", file=sys.stderr)
    for o in range(args.objects):
        path = os.path.join(prefix_dir, f"part-{o:04d}.json" + (".gz" if args.gzip else ""))
        opener = gzip.open if args.gzip else open
        size = 0
        with opener(path, "wb") as f:
            lines = []
            while size < per_object:
                line = event(events, args.event_bytes, WORDS) + b"\n"
                lines.append(line)
                size += len(line)
                events += 1
                if len(lines) == 10_000:
                    f.write(b"".join(lines))
                    lines = []
            f.write(b"".join(lines))
        written += size
        paths.append(path)
    print(f"{events} events, {written / 1e6:.0f} MB", file=sys.stderr)

    endpoint, s3s = start_s3s(root, data_dir)
    os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                       "AWS_REGION": "us-east-1"})
    url, procs = start_cluster(args.bin_dir, data_dir)
    try:
        cpu_before = cpu_seconds(procs)
        started = time.perf_counter()
        status, body = http("POST", url + "/v1/collections", {
            "name": "backfill", "num_shards": 4,
            "sources": [{"type": "s3", "url": "s3://bench/events/", "endpoint": endpoint,
                         "region": "us-east-1", "poll_interval": "1s"}]})
        assert status in (200, 201), body
        first = None
        while True:
            status, body = http("POST", url + "/v1/query", {"sql": "SELECT COUNT(*) AS n FROM backfill"})
            seen = body["rows"][0][0] if status == 200 else 0
            if seen and first is None:
                first = time.perf_counter()
            if seen >= events:
                break
            time.sleep(0.2)
        altdb_s = time.perf_counter() - started
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(procs).items()}
        tailer = next(p for p in procs if p.args[0].endswith("altdb-tailer"))
        tailer_rss = peak_rss_mb(tailer)
        status, body = http("POST", url + "/v1/query", {"sql": "SELECT COUNT(DISTINCT seq) FROM backfill"})
        assert body["rows"][0][0] == events, body
    finally:
        stop(procs)
        s3s.terminate()

    import duckdb
    con = duckdb.connect()
    duck_started = time.perf_counter()
    glob = os.path.join(prefix_dir, "*.json" + (".gz" if args.gzip else ""))
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_json('{glob}', format='newline_delimited')")
    duck_s = time.perf_counter() - duck_started
    assert con.execute("SELECT COUNT(*) FROM t").fetchone()[0] == events

    gb = written / 1e9
    print(f"\n| measure | altdb | DuckDB {duckdb.__version__} | altdb/DuckDB |")
    print("|---|---|---|---|")
    print(f"| backfill of {written / 1e6:.0f} MB NDJSON{' (gzip)' if args.gzip else ''}, {events} events, "
          f"{args.objects} objects | {altdb_s:.1f} s | {duck_s:.1f} s | {altdb_s / duck_s:.1f}x |")
    print(f"| throughput | {written / 1e6 / altdb_s:.1f} MB/s, {events / altdb_s:,.0f} rows/s "
          f"({events / altdb_s / 2:,.0f} rows/s per leaf) | {written / 1e6 / duck_s:.1f} MB/s, "
          f"{events / duck_s:,.0f} rows/s | |")
    print(f"| time to first rows queryable | {first - started:.2f} s | | |")
    print("| CPU-seconds per GB | " + ", ".join(f"{k.replace('altdb-', '')} {v / gb:.0f}" for k, v in sorted(cpu.items()))
          + " | | |")
    print(f"| tailer peak RSS | {tailer_rss:.0f} MB (objects of {per_object / 1e6:.0f} MB) | | |")
    if args.keep:
        print(f"data in {data_dir}", file=sys.stderr)
    else:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
