"""The same queries through altdb's three doors: HTTP JSON, the Postgres wire
protocol (psycopg 3, binary results) and Arrow Flight SQL (the ADBC driver),
against one cluster on this machine (release build).

    python3 bench/doors_bench.py [--docs 200000] [--rows 1000000] [--clients 16]

For a needle query and an aggregate: p50 of `--queries` sequential runs on one
connection, and QPS with `--clients` concurrent connections for `--seconds`.
Then a `--rows`-row answer (a cross join of the loaded rows with a small
range): seconds to receive it whole and MB/s of its Arrow size. Each door gets
the same statements with the same values, so the differences are the doors'
(encoding, protocol round trips), not the engine's. HTTP answers are cut at
max_result_rows, so the bulk transfer raises it for this cluster.
"""
import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg

from cluster import Connection, default_bin_dir, http, start_cluster, free_port

NEEDLE = "SELECT kind, price FROM events WHERE \"user\" = 'u{n}' ORDER BY price LIMIT 5"
AGGREGATE = "SELECT kind, COUNT(*), SUM(price), AVG(price) FROM events GROUP BY kind ORDER BY kind"


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


class HttpDoor:
    name = "http json"

    def __init__(self, url, key, pg_port, flight_port):
        self.conn = Connection(url, key)

    def run(self, sql):
        status, body = self.conn.post("/v1/query", {"sql": sql})
        assert status == 200, body
        return len(body["rows"])

    def close(self):
        self.conn.close()


class PostgresDoor:
    name = "postgres"

    def __init__(self, url, key, pg_port, flight_port):
        self.conn = psycopg.connect(f"host=127.0.0.1 port={pg_port} user=bench password={key} dbname=altdb",
                                    autocommit=True)

    def run(self, sql):
        with self.conn.cursor(binary=True) as cur:
            cur.execute(sql)
            return len(cur.fetchall())

    def close(self):
        self.conn.close()


class FlightSqlDoor:
    name = "flight sql"

    def __init__(self, url, key, pg_port, flight_port):
        self.conn = flight_sql.connect(f"grpc://127.0.0.1:{flight_port}",
                                       db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {key}"},
                                       autocommit=True)

    def run(self, sql):
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetch_arrow_table().num_rows

    def close(self):
        self.conn.close()


DOORS = [HttpDoor, PostgresDoor, FlightSqlDoor]


def p50_ms(door, sql_of, queries):
    times = []
    for i in range(queries):
        started = time.perf_counter()
        door.run(sql_of(i))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def qps(make, sql_of, clients, seconds):
    done = [0] * clients
    errors = []
    deadline = time.perf_counter() + seconds

    def run(n):
        try:
            door = make()
            i = n
            while time.perf_counter() < deadline:
                door.run(sql_of(i))
                done[n] += 1
                i += clients
            door.close()
        except Exception as error:  # reported after the run
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return sum(done) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=default_bin_dir())
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    key = "admin-" + os.urandom(16).hex()
    pg_port, flight_port = free_port(), free_port()
    os.environ["ALTDB_MAX_RESULT_ROWS"] = str(args.rows)
    os.environ["ALTDB_MAX_RESULT_BYTES"] = str(1 << 30)
    results = {}
    with tempfile.TemporaryDirectory(prefix="altdb-doors-bench-") as tmp:
        url, procs = start_cluster(args.bin_dir, tmp, admin_key=key, postgres_port=pg_port,
                                   flight_sql_port=flight_port)
        try:
            load(url, key, args.docs)
            # The bulk answer: every loaded row times a small range.
            repeat = max(1, args.rows // args.docs)
            bulk = (f"SELECT e.id, e.\"user\", e.kind, e.price, r.value AS k FROM events e, "
                    f"range({repeat}) r")
            for make in DOORS:
                door = make(url, key, pg_port, flight_port)
                door.run(AGGREGATE)
                p50_needle = p50_ms(door, lambda i: NEEDLE.format(n=i % 5000), args.queries)
                p50_aggregate = p50_ms(door, lambda i: AGGREGATE, max(20, args.queries // 4))
                started = time.perf_counter()
                rows = door.run(bulk)
                bulk_s = time.perf_counter() - started
                door.close()
                factory = lambda: make(url, key, pg_port, flight_port)
                qps_needle = qps(factory, lambda i: NEEDLE.format(n=i % 5000), args.clients, args.seconds)
                qps_aggregate = qps(factory, lambda i: AGGREGATE, args.clients, args.seconds)
                results[make.name] = dict(p50_needle=p50_needle, p50_aggregate=p50_aggregate,
                                          qps_needle=qps_needle, qps_aggregate=qps_aggregate,
                                          bulk_rows=rows, bulk_s=bulk_s)
                print(f"{make.name}: needle p50 {p50_needle:.2f} ms, {qps_needle:.0f} QPS; aggregate p50 "
                      f"{p50_aggregate:.2f} ms, {qps_aggregate:.0f} QPS; {rows} rows in {bulk_s:.2f} s", flush=True)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
    # Arrow size of the bulk answer: 8-byte id, price and k, ~5-byte user and kind.
    arrow_mb = args.rows * (8 * 3 + 5 + 5) / 1e6
    print(f"\n{args.docs} documents; needle and aggregate queries; {args.clients} clients for QPS")
    print("| door | needle p50 ms | needle QPS | aggregate p50 ms | aggregate QPS | "
          f"{args.rows:,}-row answer s | MB/s (Arrow size) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['p50_needle']:.2f} | {r['qps_needle']:.0f} | {r['p50_aggregate']:.2f} | "
              f"{r['qps_aggregate']:.0f} | {r['bulk_s']:.2f} | {arrow_mb / r['bulk_s']:.0f} |")


if __name__ == "__main__":
    main()
