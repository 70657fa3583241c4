"""What authentication costs a query: needle-query p50 and QPS with API keys on
and off, on two clusters holding the same documents, measured in alternating
rounds on the same machine (release build).

    python3 bench/auth_bench.py [--docs 50000] [--rounds 5] [--clients 4]

Cluster A runs open (no admin key); cluster B requires keys and is queried with a
`read-only` key (so every statement also checks its collections). Each round
measures A then B: the p50 of `--queries` sequential needle queries over one
kept-alive connection, then QPS with `--clients` concurrent connections for
`--seconds`. The report gives the medians over the rounds, B/A ratios, and the
spread of A's rounds as the noise to judge the ratios by.
"""
import argparse
import json
import os
import random
import secrets
import statistics
import tempfile
import threading
import time

from cluster import Connection, default_bin_dir, http, start_cluster


def load(url, key, docs):
    status, body = http("POST", url + "/v1/collections",
                        {"name": "events", "num_shards": 4, "id_field": "id"}, key=key)
    assert status == 201, body
    rng = random.Random(7)
    rows = [{"id": i, "user": f"u{rng.randrange(5000)}", "kind": rng.choice(["view", "click", "buy"]),
             "price": rng.randrange(1, 10_000) / 100} for i in range(docs)]
    for start in range(0, docs, 5000):
        body = "".join(json.dumps(r) + "\n" for r in rows[start:start + 5000]).encode()
        status, answer = http("POST", url + "/v1/collections/events/docs", body, key=key)
        assert status == 200 and answer["written"] == len(rows[start:start + 5000]), answer


def needle(i):
    return {"sql": f"SELECT kind, price FROM events WHERE user = 'u{i % 5000}' ORDER BY price LIMIT 5"}


def p50_ms(url, key, queries):
    conn = Connection(url, key)
    times = []
    for i in range(queries):
        started = time.perf_counter()
        status, body = conn.post("/v1/query", needle(i))
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200, body
    conn.close()
    return statistics.median(times)


def qps(url, key, clients, seconds):
    done = [0] * clients
    deadline = time.perf_counter() + seconds

    def run(n):
        conn = Connection(url, key)
        i = n
        while time.perf_counter() < deadline:
            status, body = conn.post("/v1/query", needle(i))
            assert status == 200, body
            done[n] += 1
            i += clients
        conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=default_bin_dir())
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    admin = "admin-" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="altdb-auth-bench-") as tmp:
        os.makedirs(os.path.join(tmp, "open"))
        os.makedirs(os.path.join(tmp, "keys"))
        open_url, open_procs = start_cluster(args.bin_dir, os.path.join(tmp, "open"))
        keys_url, keys_procs = start_cluster(args.bin_dir, os.path.join(tmp, "keys"), admin_key=admin)
        try:
            load(open_url, None, args.docs)
            load(keys_url, admin, args.docs)
            status, created = http("POST", keys_url + "/v1/keys", {"name": "bench", "role": "read-only"}, key=admin)
            assert status == 201, created
            reader = created["key"]
            status, _ = http("POST", keys_url + "/v1/query", needle(0))
            assert status == 401, "cluster B must refuse queries without a key"
            # Warm both (kept plans, remembered fields, connections).
            p50_ms(open_url, None, 100)
            p50_ms(keys_url, reader, 100)
            rounds = {"off": {"p50": [], "qps": []}, "on": {"p50": [], "qps": []}}
            for r in range(args.rounds):
                for mode, url, key in (("off", open_url, None), ("on", keys_url, reader)):
                    rounds[mode]["p50"].append(p50_ms(url, key, args.queries))
                    rounds[mode]["qps"].append(qps(url, key, args.clients, args.seconds))
                print(f"round {r + 1}: off p50 {rounds['off']['p50'][-1]:.2f} ms, {rounds['off']['qps'][-1]:.0f} QPS; "
                      f"on p50 {rounds['on']['p50'][-1]:.2f} ms, {rounds['on']['qps'][-1]:.0f} QPS", flush=True)
        finally:
            for p in open_procs + keys_procs:
                p.terminate()
            for p in open_procs + keys_procs:
                p.wait()
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in rounds.items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in rounds["off"].items()}
    print(f"\nneedle query, {args.docs} documents, {args.rounds} alternating rounds (median of rounds):")
    print(f"  auth off: p50 {med['off']['p50']:.2f} ms, {med['off']['qps']:.0f} QPS at {args.clients} clients")
    print(f"  auth on : p50 {med['on']['p50']:.2f} ms, {med['on']['qps']:.0f} QPS at {args.clients} clients")
    print(f"  on/off: p50 {med['on']['p50'] / med['off']['p50']:.3f}, QPS {med['on']['qps'] / med['off']['qps']:.3f}")
    print(f"  noise (spread of the auth-off rounds): p50 {spread['p50']:.1%}, QPS {spread['qps']:.1%}")


if __name__ == "__main__":
    main()
