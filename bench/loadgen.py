#!/usr/bin/env python3
"""Closed-loop query load: `clients` processes, each with one kept-alive HTTP
connection (as a dashboard's or a driver's pool holds), each sending its next
statement as soon as the previous answer is read.

Clients are processes, not threads, so that Python's GIL does not queue the
clients behind each other and the latencies are the server's. Every client
reports its latencies and the CPU seconds it used itself, so a report can say
how much of the machine the load generator took.

    from loadgen import run
    result = run(url, statements, clients=16, seconds=30)
    result.qps, result.p50, result.p99, result.client_cpu, result.errors

Client `i` starts at statement `i` and walks the list round-robin, so a list of
needle statements with different literals gives every request a new literal.
"""
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Connection, percentile  # noqa: E402


class Result:
    def __init__(self, latencies, total, seconds, client_cpu, errors):
        self.latencies = latencies
        self.total = total  # requests answered, warm-up included
        self.count = len(latencies)
        self.qps = len(latencies) / seconds
        self.p50 = percentile(latencies, 0.50)
        self.p99 = percentile(latencies, 0.99)
        self.client_cpu = client_cpu
        self.errors = errors


def run(url, statements, clients, seconds, warmup=1.0):
    """Runs the load for `seconds` (after `warmup` seconds of unmeasured load)."""
    start_at = time.time() + 1.0 + 0.05 * clients  # after every client has started
    measure_from = start_at + warmup
    stop_at = measure_from + seconds
    job = json.dumps({"url": url, "statements": statements, "measure_from": measure_from, "stop_at": stop_at,
                      "start_at": start_at})
    procs = []
    for client in range(clients):
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(client)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdin.write(job)
        proc.stdin.close()
        procs.append(proc)
    latencies, total, cpu, errors = [], 0, 0.0, 0
    for proc in procs:
        out = json.loads(proc.stdout.read())
        proc.wait()
        latencies += out["latencies"]
        total += out["total"]
        cpu += out["cpu"]
        errors += out["errors"]
    return Result(latencies, total, seconds, cpu, errors)


def worker(client):
    job = json.loads(sys.stdin.read())
    statements = job["statements"]
    conn = Connection(job["url"])
    time.sleep(max(0.0, job["start_at"] - time.time()))
    latencies, errors, total = [], 0, 0
    i = client
    cpu_before = None
    while True:
        now = time.time()
        if now >= job["stop_at"]:
            break
        if cpu_before is None and now >= job["measure_from"]:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu_before = usage.ru_utime + usage.ru_stime
        sql = statements[i % len(statements)]
        i += 1
        started = time.perf_counter()
        status, _ = conn.post("/v1/query", {"sql": sql})
        elapsed = (time.perf_counter() - started) * 1000
        total += 1
        if status != 200:
            errors += 1
        elif now >= job["measure_from"]:
            latencies.append(elapsed)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - (cpu_before if cpu_before is not None else 0.0)
    conn.close()
    json.dump({"latencies": latencies, "total": total, "cpu": cpu, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]))
    else:
        sys.exit(__doc__)
