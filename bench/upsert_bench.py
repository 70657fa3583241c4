#!/usr/bin/env python3
"""What versioned upserts, deletes and patches cost: HTTP ingest of new `_id`s
against rewriting the same `_id`s, then deleting half of them by `_id`
(`DELETE /v1/collections/u/docs`) and patching the other half (`PATCH
/v1/collections/u/docs`: increment a field, add another), on 2 leaves with replication 2 (each write
goes to both copies, and each copy reads the version it holds of every `_id`
it already has), with DuckDB's INSERT OR REPLACE on a primary key and
`DELETE .. WHERE _id IN (..)` and `UPDATE .. SET a = a + 1, p = true WHERE
_id IN (..)` as the peer on the same documents.

    cargo build --release --bins
    python3 bench/upsert_bench.py [--docs 200000]
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from cluster import default_bin_dir, http, start_cluster, stop  # noqa: E402

BATCH = 5_000


def docs(count, round_):
    return [{"_id": f"u{i}", "round": round_, "a": (i * 7919 + round_) % 100_000, "s": f"k{i % 1000}"}
            for i in range(count)]


def ingest(url, rows):
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        body = "".join(json.dumps(d) + "\n" for d in rows[start:start + BATCH]).encode()
        status, answer = http("POST", url + "/v1/collections/u/docs", body)
        assert status == 200 and answer["written"] == min(BATCH, len(rows) - start), answer
    return len(rows) / (time.perf_counter() - started)


def delete(url, ids):
    started = time.perf_counter()
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        status, answer = http("DELETE", url + "/v1/collections/u/docs", [{"_id": i} for i in chunk])
        assert status == 200 and answer["deleted"] == len(chunk), str(answer)[:300]
    return len(ids) / (time.perf_counter() - started)


def patch(url, ids):
    started = time.perf_counter()
    ops = [{"op": "increment", "path": "/a", "value": 1}, {"op": "add", "path": "/p", "value": True}]
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        status, answer = http("PATCH", url + "/v1/collections/u/docs", [{"_id": i, "patch": ops} for i in chunk])
        assert status == 200 and answer["patched"] == len(chunk), str(answer)[:300]
    return len(ids) / (time.perf_counter() - started)


def duckdb_rates(first, second, deleted, patched):
    import duckdb
    import pandas as pd
    con = duckdb.connect()
    con.execute("CREATE TABLE t (_id VARCHAR PRIMARY KEY, round BIGINT, a BIGINT, s VARCHAR)")
    rates = []
    for rows in (first, second):
        frame = pd.DataFrame(rows)
        started = time.perf_counter()
        for start in range(0, len(frame), BATCH):
            chunk = frame.iloc[start:start + BATCH]  # noqa: F841 (read by DuckDB)
            con.execute("INSERT OR REPLACE INTO t SELECT _id, round, a, s FROM chunk")
        rates.append(len(rows) / (time.perf_counter() - started))
    assert con.execute("SELECT COUNT(*), MIN(round) FROM t").fetchone() == (len(first), 1)
    frame = pd.DataFrame({"_id": deleted})
    started = time.perf_counter()
    for start in range(0, len(frame), BATCH):
        chunk = frame.iloc[start:start + BATCH]  # noqa: F841 (read by DuckDB)
        con.execute("DELETE FROM t WHERE _id IN (SELECT _id FROM chunk)")
    rates.append(len(deleted) / (time.perf_counter() - started))
    assert con.execute("SELECT COUNT(*) FROM t").fetchone() == (len(first) - len(deleted),)
    con.execute("ALTER TABLE t ADD COLUMN p BOOLEAN")
    frame = pd.DataFrame({"_id": patched})
    started = time.perf_counter()
    for start in range(0, len(frame), BATCH):
        chunk = frame.iloc[start:start + BATCH]  # noqa: F841 (read by DuckDB)
        con.execute("UPDATE t SET a = a + 1, p = true WHERE _id IN (SELECT _id FROM chunk)")
    rates.append(len(patched) / (time.perf_counter() - started))
    return rates, con.execute("SELECT COUNT(*), SUM(a) FROM t WHERE p").fetchone()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--bin-dir", default=default_bin_dir())
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="altdb-upsert-bench-")
    url, procs = start_cluster(args.bin_dir, work, leaves=2)
    try:
        status, body = http("POST", url + "/v1/collections", {"name": "u", "num_shards": 4, "replication": 2})
        assert status == 201, body
        first, second = docs(args.docs, 0), docs(args.docs, 1)
        new_rate = ingest(url, first)
        upsert_rate = ingest(url, second)
        for _ in range(600):
            status, body = http("POST", url + "/v1/query",
                                {"sql": "SELECT COUNT(*), MIN(round) FROM u"})
            if body["rows"][0] == [args.docs, 1]:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"upserts not all visible: {body}")
        deleted = [f"u{i}" for i in range(0, args.docs, 2)]
        delete_rate = delete(url, deleted)
        status, body = http("POST", url + "/v1/query", {"sql": "SELECT COUNT(*) FROM u"})
        assert body["rows"][0][0] == args.docs - len(deleted), body
        patched = [f"u{i}" for i in range(1, args.docs, 2)]
        patch_rate = patch(url, patched)
        status, body = http("POST", url + "/v1/query", {"sql": "SELECT COUNT(*), SUM(a) FROM u WHERE p"})
        (duck_new, duck_upsert, duck_delete, duck_patch), duck_patched = duckdb_rates(first, second, deleted, patched)
        assert tuple(body["rows"][0]) == duck_patched, (body, duck_patched)
        print(f"{args.docs} docs, 2 leaves, replication 2, batches of {BATCH} over HTTP")
        print(f"{'':<22} {'altdb docs/s':>14} {'DuckDB rows/s':>14} {'altdb/DuckDB':>13}")
        print(f"{'new _ids':<22} {new_rate:>14,.0f} {duck_new:>14,.0f} {new_rate / duck_new:>12.2f}x")
        print(f"{'same _ids (upserts)':<22} {upsert_rate:>14,.0f} {duck_upsert:>14,.0f} {upsert_rate / duck_upsert:>12.2f}x")
        print(f"{'deletes by _id':<22} {delete_rate:>14,.0f} {duck_delete:>14,.0f} {delete_rate / duck_delete:>12.2f}x")
        print(f"{'patches by _id':<22} {patch_rate:>14,.0f} {duck_patch:>14,.0f} {patch_rate / duck_patch:>12.2f}x")
        print(f"upserts / new: altdb {upsert_rate / new_rate:.2f}, DuckDB {duck_upsert / duck_new:.2f}")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
