"""Real Postgres clients against altdb's Postgres door.

Run by tests/tests/postgres.rs against a cluster whose collection `events`
holds 100 documents:

    {"id": i, "user": "u<i % 5>", "qty": i % 7, "price": i * 1.5,
     "tags": ["t<i % 3>", "all"], "ts": "2024-03-01T00:<i % 60>:00Z",
     "event_time": 1709251200000 + i * 60000}   (the collection's event time)

Every answer is compared with DuckDB's over the same documents (the oracle).

    python3 postgres_clients.py <host> <port> <api key> <check>...

Checks: psycopg, sqlalchemy, asyncpg, grafana. Exits non-zero with the first
difference.
"""

import asyncio
import datetime as dt
import sys

import duckdb


def documents():
    return [
        {
            "id": i,
            "user": f"u{i % 5}",
            "qty": i % 7,
            "price": i * 1.5,
            "tags": [f"t{i % 3}", "all"],
            "ts": f"2024-03-01T00:{i % 60:02d}:00Z",
            "_event_time": dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
            + dt.timedelta(minutes=i),
        }
        for i in range(100)
    ]


def oracle():
    """DuckDB over the same documents, as table `events`."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        'CREATE TABLE events (id BIGINT, "user" VARCHAR, qty BIGINT, price DOUBLE, '
        "tags VARCHAR[], ts VARCHAR, _event_time TIMESTAMPTZ)"
    )
    for d in documents():
        con.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            [d["id"], d["user"], d["qty"], d["price"], d["tags"], d["ts"], d["_event_time"]],
        )
    return con


def same(what, got, expected):
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")
    print(f"ok  {what}")


def check_psycopg(host, port, key, duck):
    import psycopg

    dsn = f"host={host} port={port} user=grafana password={key} dbname=altdb"
    # autocommit off, as psycopg's default: the client sends BEGIN first.
    with psycopg.connect(dsn) as con:
        cur = con.cursor()
        cur.execute("SELECT COUNT(*) FROM events")
        same("psycopg count", cur.fetchone()[0], 100)
        # Server-side parameters (psycopg 3 binds them, never splices).
        cur.execute(
            'SELECT id, "user", price FROM events WHERE "user" = %s AND qty > %s ORDER BY id',
            ("u1", 2),
        )
        expected = duck.execute(
            'SELECT id, "user", price FROM events WHERE "user" = ? AND qty > ? ORDER BY id',
            ["u1", 2],
        ).fetchall()
        same("psycopg parameters", [tuple(r) for r in cur.fetchall()], expected)
        # A hostile value is data, whatever it holds.
        cur.execute('SELECT COUNT(*) FROM events WHERE "user" = %s', ("u1' OR '1'='1",))
        same("psycopg injection is data", cur.fetchone()[0], 0)
        # Types: timestamptz, arrays, floats, text.
        cur.execute("SELECT _event_time, tags, price, ts FROM events WHERE id = 7")
        row = cur.fetchone()
        same(
            "psycopg types",
            row,
            (
                dt.datetime(2024, 3, 1, 0, 7, tzinfo=dt.timezone.utc),
                ["t1", "all"],
                10.5,
                "2024-03-01T00:07:00Z",
            ),
        )
        same(
            "psycopg column types",
            [d.type_code for d in cur.description],
            [1184, 1009, 701, 25],
        )
        cur.execute("SHOW server_version")
        same("psycopg SHOW", cur.fetchone()[0], "16.6")
        cur.execute("SELECT version()")
        version = cur.fetchone()[0]
        assert version.startswith("PostgreSQL 16.6"), version
        print("ok  psycopg version()")
        con.rollback()
        # An error says what is wrong, with a SQLSTATE, and the session goes on.
        try:
            cur.execute("SELECT nope FROM events")
            raise AssertionError("an unknown column was accepted")
        except psycopg.errors.UndefinedColumn as error:
            assert "nope" in str(error), error
            print("ok  psycopg error 42703")
        con.rollback()
        try:
            cur.execute("SELECT * FROM missing_collection")
            raise AssertionError("an unknown table was accepted")
        except psycopg.errors.UndefinedTable:
            print("ok  psycopg error 42P01")
        con.rollback()
        cur.execute("SELECT 1")
        same("psycopg after errors", cur.fetchone()[0], 1)


def check_sqlalchemy(host, port, key, duck):
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(f"postgresql+psycopg://reader:{key}@{host}:{port}/altdb")
    with engine.connect() as con:
        rows = con.execute(
            sa.text('SELECT "user", COUNT(*) AS n FROM events WHERE qty >= :q GROUP BY "user" ORDER BY "user"'),
            {"q": 3},
        ).fetchall()
        expected = duck.execute(
            'SELECT "user", COUNT(*) AS n FROM events WHERE qty >= 3 GROUP BY "user" ORDER BY "user"'
        ).fetchall()
        same("sqlalchemy parameters", [tuple(r) for r in rows], expected)
        frame = pd.read_sql(
            sa.text("SELECT id, price FROM events WHERE id < :n ORDER BY id"), con, params={"n": 5}
        )
        same("pandas.read_sql", frame["price"].tolist(), [0.0, 1.5, 3.0, 4.5, 6.0])
        names = sa.inspect(con).get_table_names()
        assert "events" in names, names
        print("ok  sqlalchemy inspector tables")


def check_asyncpg(host, port, key, duck):
    import asyncpg

    async def run():
        con = await asyncpg.connect(host=host, port=port, user="app", password=key, database="altdb")
        try:
            # asyncpg prepares every statement and reads results in binary.
            statement = await con.prepare(
                "SELECT id, price, _event_time, tags FROM events WHERE qty = $1 AND _event_time >= $2 ORDER BY id"
            )
            since = dt.datetime(2024, 3, 1, 0, 30, tzinfo=dt.timezone.utc)
            rows = await statement.fetch(3, since)
            expected = duck.execute(
                "SELECT id, price, _event_time, tags FROM events WHERE qty = 3 AND _event_time >= ? ORDER BY id",
                [since],
            ).fetchall()
            same(
                "asyncpg prepared binary",
                [(r["id"], r["price"], r["_event_time"], list(r["tags"])) for r in rows],
                [(a, b, c, list(d)) for a, b, c, d in expected],
            )
            # The same prepared statement with other values.
            rows = await statement.fetch(0, since)
            same("asyncpg prepared again", len(rows), duck.execute(
                "SELECT COUNT(*) FROM events WHERE qty = 0 AND _event_time >= ?", [since]
            ).fetchone()[0])
            value = await con.fetchval("SELECT SUM(price) FROM events WHERE \"user\" = $1", "u2")
            same("asyncpg fetchval", value, duck.execute(
                "SELECT SUM(price) FROM events WHERE \"user\" = 'u2'"
            ).fetchone()[0])
        finally:
            await con.close()

    asyncio.run(run())


# The statements Grafana's PostgreSQL data source sends, as it builds them
# (public/app/plugins/datasource/grafana-postgresql-datasource/
# postgresMetaQuery.ts; the health check sends "-- ping"), and a time-series
# panel with the $__timeFilter and $__timeGroupAlias macros expanded as its
# backend expands them (`c BETWEEN '<RFC3339>' AND '<RFC3339>'`,
# `floor(extract(epoch from c)/300)*300 AS "time"`).
GRAFANA_HEALTH = "-- ping"
GRAFANA_VERSION = "SELECT current_setting('server_version_num')::int/100 as version"
GRAFANA_TIMESCALE = "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
GRAFANA_SCHEMAS = """SELECT schema_name AS "name"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name"""
SCHEMA_CONSTRAINT = """
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )"""
GRAFANA_TABLES = f"""SELECT
    CASE WHEN {SCHEMA_CONSTRAINT}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN {SCHEMA_CONSTRAINT} THEN 0 ELSE 1 END, 1"""
GRAFANA_COLUMNS = f"""SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('events'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('events'))[1]
          AND quote_ident(table_name) = (parse_ident('events'))[2]
        ELSE quote_ident(table_name) = 'events'
          AND {SCHEMA_CONSTRAINT}
      END"""
GRAFANA_PANEL = """SELECT floor(extract(epoch from _event_time)/300)*300 AS "time", count(*) AS "value"
FROM events
WHERE _event_time BETWEEN '2024-03-01T00:10:00Z' AND '2024-03-01T00:59:59Z'
GROUP BY 1
ORDER BY 1"""
GRAFANA_PANEL_STRING = """SELECT floor(extract(epoch from ts)/300)*300 AS "time", count(*) AS "value"
FROM events
WHERE ts BETWEEN '2024-03-01T00:10:00Z' AND '2024-03-01T00:59:59Z'
GROUP BY 1
ORDER BY 1"""
# DuckDB needs the string field cast to answer the same panel.
DUCK_PANEL_STRING = GRAFANA_PANEL_STRING.replace("epoch from ts)", "epoch from ts::timestamptz)")


def check_grafana(host, port, key, duck):
    import psycopg

    dsn = f"host={host} port={port} user=grafana password={key} dbname=altdb"
    with psycopg.connect(dsn, autocommit=True) as con:
        cur = con.cursor()
        cur.execute(GRAFANA_HEALTH)
        print("ok  grafana health check")
        cur.execute(GRAFANA_VERSION)
        same("grafana version", cur.fetchone()[0], 1600)
        cur.execute(GRAFANA_TIMESCALE)
        same("grafana timescaledb probe", cur.fetchall(), [])
        cur.execute(GRAFANA_SCHEMAS)
        same("grafana schemas", [r[0] for r in cur.fetchall()], ["public"])
        cur.execute(GRAFANA_TABLES)
        # The admin key reads the dead letters too.
        same("grafana tables", [r[0] for r in cur.fetchall()], ["_dlq", "events"])
        cur.execute(GRAFANA_COLUMNS)
        columns = dict(cur.fetchall())
        same(
            "grafana columns",
            {k: columns.get(k) for k in ["_event_time", "price", "qty", "tags", "user"]},
            {
                "_event_time": "timestamp with time zone",
                "price": "double precision",
                "qty": "bigint",
                "tags": "ARRAY",
                "user": "text",
            },
        )
        for name, sql, oracle_sql in [
            ("grafana panel", GRAFANA_PANEL, GRAFANA_PANEL),
            ("grafana panel on a string field", GRAFANA_PANEL_STRING, DUCK_PANEL_STRING),
        ]:
            cur.execute(sql)
            got = [(float(t), int(v)) for t, v in cur.fetchall()]
            expected = [(float(t), int(v)) for t, v in duck.execute(oracle_sql).fetchall()]
            assert expected, name
            same(name, got, expected)


CHECKS = {
    "psycopg": check_psycopg,
    "sqlalchemy": check_sqlalchemy,
    "asyncpg": check_asyncpg,
    "grafana": check_grafana,
}


def main():
    host, port, key, *checks = sys.argv[1:]
    duck = oracle()
    for check in checks:
        CHECKS[check](host, int(port), key, duck)


if __name__ == "__main__":
    main()
