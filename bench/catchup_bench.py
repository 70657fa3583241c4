#!/usr/bin/env python3
"""Catch-up and anti-entropy benchmark: a copy that missed writes while its
leaf was down, and the periodic comparison of equal copies.

Starts etcd (Debian's etcd-server) and a release cluster on it: 3 leaves, one
tailer, one aggregator. A collection of --shards shards with replication 3
(write quorum 2) gets --docs generated events of ~--doc-bytes bytes each over
the HTTP API. Then:

1. Catch-up: leaf 2 is killed (SIGKILL); --missed documents are written
   while it is down (half of them upserts of existing `_id`s, half new ones;
   acknowledged by the other two copies, leaf 2's copies marked behind). Leaf
   2 restarts on its data; timed from its start until no copy is behind.
   Reported: documents and bytes it fetched (`altdb_leaf_repaired_docs_total`,
   `altdb_leaf_copied_bytes_total`), their rate, and the documents compared
   per second (it compares range digests of the whole shard, fetching only
   differing ranges). The peer, in the same run: a fresh leaf 3 with no data
   would copy every page — the same shards' whole documents at the rate of
   `move_bench.py`; here the ratio is documents fetched / documents held.
2. Anti-entropy: every leaf restarts with `anti_entropy_secs = 5`; the leaves'
   CPU seconds from just before the first pass until each has logged one
   (each of its copies compared with the two other copies; both sides of
   each comparison count) — per GB of documents compared.

Usage: bench/catchup_bench.py [--docs 200000] [--missed 40000] [--doc-bytes 1000] [--shards 6]
Needs: cargo build --release --bins; apt-get install etcd-server
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import WORDS, cpu_seconds, default_bin_dir, event, http, stop  # noqa: E402
from move_bench import Cluster, start_etcd  # noqa: E402


class Leaves:
    """The leaves of a move_bench Cluster, each restartable on its port and data."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.ports = [int(url.rsplit(":", 1)[1]) for url in cluster.leaf_urls]

    def proc(self, index):
        name = os.path.join(self.cluster.bin_dir, "altdb-leaf")
        return [p for p in self.cluster.procs if p.args[0] == name][index]

    def start(self, index, anti_entropy_secs=0):
        env = dict(self.cluster.env, ALTDB_ANTI_ENTROPY_SECS=str(anti_entropy_secs))
        proc = subprocess.Popen(
            [os.path.join(self.cluster.bin_dir, "altdb-leaf"), "--listen", f"127.0.0.1:{self.ports[index]}",
             "--data-dir", os.path.join(self.cluster.work, f"leaf-{index}"),
             "--metastore", self.cluster.metastore, "--seal-interval-secs", "2"],
            stdout=self.cluster.log, stderr=self.cluster.log, env=env)
        old = self.proc(index)
        self.cluster.procs[self.cluster.procs.index(old)] = proc
        return proc


def metric(url, name, labels=""):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        total = 0.0
        for line in response.read().decode().splitlines():
            if line.startswith(name) and labels in line:
                total += float(line.split()[-1])
        return total


def write(cluster, docs):
    for start in range(0, len(docs), 2000):
        chunk = docs[start:start + 2000]
        status, answer = http("POST", cluster.url + "/v1/collections/events/docs", b"\n".join(chunk))
        assert status == 200 and answer["written"] == len(chunk), (status, str(answer)[:300])


def joining(status):
    return next(c for c in status["collections"] if c["name"] == "events")["joining"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--missed", type=int, default=40_000)
    parser.add_argument("--doc-bytes", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="altdb-catchup-bench-")
    etcd_address, etcd = start_etcd(work)
    os.environ["ALTDB_ANTI_ENTROPY_SECS"] = "0"
    cluster = Cluster(args.bin_dir, work, etcd_address)
    cluster.add_leaf()
    cluster.wait(lambda s: len(s["leaves"]) == 3 and all(l["healthy"] for l in s["leaves"]))
    leaves = Leaves(cluster)
    try:
        status, body = http("POST", cluster.url + "/v1/collections", {
            "name": "events", "num_shards": args.shards, "replication": 3, "id_field": "seq"})
        assert status == 201, body
        started = time.perf_counter()
        write(cluster, [event(seq, args.doc_bytes, WORDS) for seq in range(args.docs)])
        load_s = time.perf_counter() - started
        time.sleep(5)  # sealed (seal interval 2 s)

        # 1. Catch-up.
        leaves.proc(2).send_signal(signal.SIGKILL)
        leaves.proc(2).wait()
        half = args.missed // 2
        missed = [event(seq, args.doc_bytes, WORDS) for seq in range(0, args.docs, max(1, args.docs // half))][:half]
        missed += [event(seq, args.doc_bytes, WORDS) for seq in range(args.docs, args.docs + args.missed - len(missed))]
        started = time.perf_counter()
        write(cluster, missed)
        down_write_s = time.perf_counter() - started
        behind = joining(cluster.status())
        started = time.perf_counter()
        leaves.start(2)
        cluster.wait(lambda s: joining(s) == 0, timeout=1200)
        catch_up_s = time.perf_counter() - started
        leaf2 = cluster.leaf_urls[2]
        fetched = metric(leaf2, "altdb_leaf_repaired_docs_total", 'reason="catch_up"')
        fetched_bytes = metric(leaf2, "altdb_leaf_copied_bytes_total")
        compared = metric(leaf2, "altdb_leaf_compared_docs_total", 'reason="catch_up"')
        total = args.docs + args.missed - half
        count = cluster.sql("SELECT COUNT(*), COUNT(DISTINCT _id) FROM events")[0]
        assert count == [total, total], count

        # 2. Anti-entropy over equal copies.
        for index in range(3):
            leaves.proc(index).terminate()
            leaves.proc(index).wait(timeout=60)
        passes_before = open(os.path.join(work, "cluster.log")).read().count("anti-entropy pass done")
        procs = [leaves.start(index, anti_entropy_secs=5) for index in range(3)]
        started = time.perf_counter()
        time.sleep(4.5)  # open; the first pass starts 5 s after the start
        cpu_before = sum(cpu_seconds(procs).values())
        while open(os.path.join(work, "cluster.log")).read().count("anti-entropy pass done") < passes_before + 3:
            assert time.perf_counter() - started < 1200, "no anti-entropy pass"
            time.sleep(0.05)
        cpu = sum(cpu_seconds(procs).values()) - cpu_before
        log = open(os.path.join(work, "cluster.log")).read()
        passes = [line for line in log.splitlines() if "anti-entropy pass done" in line][passes_before:passes_before + 3]
        ae_compared = sum(int(re.search(r"compared=(\d+)", line).group(1)) for line in passes)
        ae_repaired = sum(int(re.search(r"repaired=(\d+)", line).group(1)) for line in passes)
        ae_elapsed = max(float(re.search(r"elapsed_s=([\d.]+)", line).group(1)) for line in passes)
        gb = ae_compared * args.doc_bytes / 1e9

        print(f"# Catch-up and anti-entropy ({args.docs} documents of ~{args.doc_bytes} B, {args.shards} shards, "
              f"replication 3 on 3 leaves)")
        print(f"load: {args.docs / load_s:,.0f} docs/s acknowledged by a quorum of 2 of 3 copies")
        print(f"one leaf down: {len(missed)} documents ({half} upserts, {len(missed) - half} new) acknowledged at "
              f"{len(missed) / down_write_s:,.0f} docs/s; {behind} copies marked behind")
        print(f"catch-up: leaf restarted -> every copy ready in {catch_up_s:.1f} s (incl. its start); "
              f"fetched {fetched:,.0f} documents, {fetched_bytes / 1e6:.1f} MB "
              f"({fetched / catch_up_s:,.0f} docs/s, {fetched_bytes / 1e6 / catch_up_s:.1f} MB/s); "
              f"compared {compared:,.0f} documents by range digests ({compared / catch_up_s:,.0f} docs/s); "
              f"fetched {fetched / max(compared, 1):.1%} of what a full copy would")
        print(f"anti-entropy: one pass on each leaf compared {ae_compared:,.0f} documents "
              f"({gb:.2f} GB of documents) in {ae_elapsed:.1f} s, repaired {ae_repaired}; "
              f"{cpu:.1f} CPU s across the 3 leaves during the pass = "
              f"{cpu / max(gb, 1e-9):.1f} CPU s per GB compared")
    finally:
        stop(cluster.procs)
        etcd.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
