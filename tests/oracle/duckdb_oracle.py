#!/usr/bin/env python3
"""Computes expected query answers with DuckDB, independently of altdb.

Usage: duckdb_oracle.py TABLES.json QUERIES.json OUT.json

TABLES.json: [{"name": .., "path": NDJSON file, "id_field": .., "time_field": ..}]
QUERIES.json: [{"name": .., "sql": ..}]
OUT.json: {name: {"rows": [[..], ..], "columns": [..]} | {"error": ..}}

Documents are flattened the way altdb flattens them (nested objects become
dotted column names, nulls become missing) and loaded with DuckDB's own type
detection; `_id` and `_event_time` are derived from the configured fields.
"""
import datetime
import decimal
import json
import os
import sys
import tempfile

import duckdb


def flatten(obj, prefix="", out=None):
    out = {} if out is None else out
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            if value:
                flatten(value, path + ".", out)
        elif value is not None:
            out.setdefault(path, value)
    return out


def scalar_kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def text_of(value):
    """altdb's text form of a value in a varchar column (serde_json's formatting)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def widen_mixed_scalars(docs):
    """Applies altdb's documented widening (README, "Schemaless types"): a field holding
    strings and other scalars is varchar, with the other values as their JSON text.
    DuckDB would type such a field JSON instead."""
    kinds = {}
    for doc in docs:
        for key, value in doc.items():
            kinds.setdefault(key, set()).add(scalar_kind(value))
    textual = {k for k, v in kinds.items() if "string" in v and len(v) > 1 and "other" not in v}
    for doc in docs:
        for key in textual & doc.keys():
            doc[key] = text_of(doc[key])
    return docs


def normalize(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond // 1000:03d}" if value.microsecond % 1000 == 0 else f".{value.microsecond:06d}"
        return text + "Z"
    if isinstance(value, datetime.date):
        return value.strftime("%Y-%m-%dT00:00:00Z")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    return value


def main():
    tables, queries, out_path = sys.argv[1:4]
    with open(tables) as f:
        tables = json.load(f)
    with open(queries) as f:
        queries = json.load(f)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # altdb's search(column, 'word') for a single word: tantivy's default tokenizer
    # splits on non-alphanumerics and lowercases.
    con.execute(
        "CREATE MACRO search(col, q) AS "
        "regexp_matches(lower(col), '(^|[^a-z0-9])' || lower(q) || '([^a-z0-9]|$)')"
    )
    workdir = tempfile.mkdtemp()
    for table in tables:
        flat_path = os.path.join(workdir, table["name"] + ".ndjson")
        with open(table["path"]) as src:
            docs = [flatten(json.loads(line)) for line in src if line.strip()]
        with open(flat_path, "w") as dst:
            for doc in widen_mixed_scalars(docs):
                dst.write(json.dumps(doc) + "\n")
        time_expr = (
            f'CAST("{table["time_field"]}" AS TIMESTAMP)' if table.get("time_field") else "NULL"
        )
        id_expr = (
            f'CAST("{table["id_field"]}" AS VARCHAR)' if table.get("id_field") else "NULL::VARCHAR"
        )
        con.execute(
            f'CREATE TABLE "{table["name"]}" AS SELECT {id_expr} AS _id, '
            f"{time_expr} AS _event_time, * FROM read_json('{flat_path}', "
            f"format='newline_delimited', sample_size=-1, maximum_object_size=16777216)"
        )
    answers = {}
    for query in queries:
        try:
            result = con.execute(query["sql"])
            rows = result.fetchall()
            answers[query["name"]] = {
                "rows": [[normalize(v) for v in row] for row in rows],
                "columns": [d[0] for d in result.description],
            }
        except Exception as error:  # reported to the test, which fails on it
            answers[query["name"]] = {"error": str(error)}
    with open(out_path, "w") as f:
        json.dump(answers, f)


if __name__ == "__main__":
    main()
