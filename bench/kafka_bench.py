#!/usr/bin/env python3
"""Kafka ingest benchmark: sustained events/s per leaf and produce-to-queryable latency.

Starts tansu (in-memory Kafka-protocol broker) and the release binaries (2 leaves,
1 tailer, 1 aggregator) on loopback, then:

1. backlog: produces --backlog events of ~--event-bytes each to a topic, attaches a
   collection to it and times until every event is queryable: sustained events/s
   (and per leaf) with every field indexed;
2. steady: produces at --rate events/s for --seconds to a second topic that is
   already attached; every --poll-ms it asks `SELECT MAX(sent_us)` and records
   now - newest visible event (RockBench's data latency): p50/p95/p99.

Usage: bench/kafka_bench.py [--backlog 200000] [--rate 5000] [--seconds 60]
Needs: cargo build --release --bins; tansu on PATH; pip install confluent-kafka
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

from confluent_kafka import Producer

from cluster import WORDS, cpu_seconds, create_topic, default_bin_dir, event, http, start_cluster, start_tansu, stop


def count(url, collection):
    status, body = http("POST", url + "/v1/query", {"sql": f"SELECT COUNT(*) FROM {collection}"})
    return body["rows"][0][0] if status == 200 else -1


def attach(url, name, brokers, topic):
    status, body = http("POST", url + "/v1/collections", {
        "name": name, "num_shards": 4,
        "sources": [{"type": "kafka", "brokers": brokers, "topic": topic, "include_metadata": False}],
    })
    assert status == 201, body


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--event-bytes", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--poll-ms", type=int, default=100)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="altdb-kafka-bench-")
    brokers, tansu = start_tansu(work)
    url, procs = start_cluster(args.bin_dir, work)
    procs.append(tansu)
    try:
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "queue.buffering.max.messages": 500_000})

        # 1. Backlog: sustained ingest rate.
        create_topic(brokers, "backlog", args.partitions)
        payload_bytes = 0
        ndjson = open(os.path.join(work, "backlog.ndjson"), "wb")
        for seq in range(args.backlog):
            body = event(seq, args.event_bytes, WORDS)
            payload_bytes += len(body)
            ndjson.write(body + b"\n")
            while True:
                try:
                    producer.produce("backlog", body, key=str(seq))
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
        producer.flush(120)
        ndjson.close()
        # Peer: DuckDB parsing and loading the same events from a local file (no broker,
        # no durability, no indexing): an upper bound for a single-node JSON load.
        import duckdb
        con = duckdb.connect()
        duck_started = time.perf_counter()
        con.execute(f"CREATE TABLE backlog AS SELECT * FROM read_json('{ndjson.name}', format='newline_delimited')")
        duck_s = time.perf_counter() - duck_started
        assert con.execute("SELECT COUNT(*) FROM backlog").fetchone()[0] == args.backlog
        cpu_before = cpu_seconds(procs)
        started = time.perf_counter()
        attach(url, "backlog", brokers, "backlog")
        first_seen = None
        while (seen := count(url, "backlog")) < args.backlog:
            if seen > 0 and first_seen is None:
                first_seen = (time.perf_counter(), seen)
            time.sleep(0.05)
        backlog_s = time.perf_counter() - started
        # Discovery and the consumer group join are start-up cost, not throughput.
        join_s = first_seen[0] - started
        rate_s = time.perf_counter() - first_seen[0]
        cpu_after = cpu_seconds(procs)
        cpu = {k: cpu_after[k] - cpu_before.get(k, 0) for k in cpu_after}
        rate = (args.backlog - first_seen[1]) / rate_s

        # 2. Steady rate: produce-to-queryable latency.
        create_topic(brokers, "steady", args.partitions)
        attach(url, "steady", brokers, "steady")
        # One probe event first: the measurement starts once the consumer group has
        # joined and the first event is queryable (joining is start-up, not freshness).
        producer.produce("steady", event(-1, args.event_bytes, WORDS), key="probe")
        producer.flush(30)
        while count(url, "steady") != 1:
            time.sleep(0.1)
        stop_flag = threading.Event()
        produced = [0]

        def produce_steady():
            tick = 0.01
            per_tick = args.rate * tick
            owed = 0.0
            next_at = time.perf_counter()
            seq = 0
            while not stop_flag.is_set():
                owed += per_tick
                while owed >= 1:
                    producer.produce("steady", event(seq, args.event_bytes, WORDS), key=str(seq))
                    seq += 1
                    owed -= 1
                producer.poll(0)
                next_at += tick
                time.sleep(max(0, next_at - time.perf_counter()))
            producer.flush(60)
            produced[0] = seq

        thread = threading.Thread(target=produce_steady)
        thread.start()
        samples, query_ms, freshness_reported, timeline = [], [], [], []
        warmup_until = time.perf_counter() + 5
        end_at = time.perf_counter() + args.seconds
        while time.perf_counter() < end_at:
            t0_us = time.time_ns() // 1000
            q0 = time.perf_counter()
            status, body = http("POST", url + "/v1/query", {"sql": "SELECT MAX(sent_us) FROM steady"})
            q_ms = (time.perf_counter() - q0) * 1000
            if status == 200 and body["rows"][0][0] is not None and time.perf_counter() > warmup_until:
                samples.append(max(0, t0_us - body["rows"][0][0]) / 1000)
                timeline.append((t0_us, samples[-1], q_ms))
                query_ms.append(q_ms)
                if body["stats"].get("freshness_ms") is not None:
                    freshness_reported.append(body["stats"]["freshness_ms"])
            time.sleep(args.poll_ms / 1000)
        stop_flag.set()
        thread.join()
        with open(os.path.join(work, "latency.csv"), "w") as f:
            f.write("time_us,latency_ms,query_ms\n")
            f.writelines(f"{t},{lat:.1f},{q:.1f}\n" for t, lat, q in timeline)
        while count(url, "steady") < produced[0] + 1:
            time.sleep(0.1)
        assert count(url, "steady") == produced[0] + 1

        print(f"\n## Kafka ingest, {os.cpu_count()} cores, tansu in-memory broker, 2 leaves, 1 tailer, "
              f"{args.partitions} partitions, ~{args.event_bytes} B JSON events\n")
        print("| measure | value |")
        print("|---|---|")
        print(f"| backlog of {args.backlog:,} events: time to all queryable | {backlog_s:.1f} s "
              f"(first events queryable after {join_s:.1f} s: source discovery + group join) |")
        print(f"| sustained ingest | {rate:,.0f} events/s ({rate / 2:,.0f} per leaf), "
              f"{payload_bytes / args.backlog * rate / 1e6:.1f} MB/s |")
        gb = payload_bytes / 1e9
        print("| CPU-seconds per GB of events during the backlog | " + ", ".join(
            f"{name.replace('altdb-', '')} {sec / gb:,.0f}" for name, sec in sorted(cpu.items())) + " |")
        print(f"| peer: DuckDB {duckdb.__version__} read_json of the same events from a file | "
              f"{args.backlog / duck_s:,.0f} events/s ({duck_s:.1f} s); DuckDB/altdb rate {args.backlog / duck_s / rate:.1f}x |")
        print(f"| steady rate | {args.rate:,} events/s for {args.seconds} s ({produced[0]:,} events, all queryable) |")
        print(f"| produce-to-queryable p50 / p95 / p99 | {percentile(samples, 50):.0f} / "
              f"{percentile(samples, 95):.0f} / {percentile(samples, 99):.0f} ms ({len(samples)} samples) |")
        print(f"| polling query MAX(sent_us) p50 | {statistics.median(query_ms):.0f} ms |")
        if freshness_reported:
            print(f"| freshness reported by altdb p50 / p99 | {percentile(freshness_reported, 50):.0f} / "
                  f"{percentile(freshness_reported, 99):.0f} ms |")
    finally:
        stop(procs)
        print(f"logs: {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
