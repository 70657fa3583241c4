"""The ADBC Flight SQL driver (adbc-driver-flightsql) against altdb's Flight SQL
door, over the `events` collection of postgres_clients.py; answers compared
with DuckDB's.

    python3 flight_sql_clients.py <host> <port> <api key>
"""

import sys

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa

from postgres_clients import oracle, same


def main():
    host, port, key = sys.argv[1:4]
    duck = oracle()
    con = flight_sql.connect(
        f"grpc://{host}:{port}",
        db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {key}"},
        autocommit=True,
    )
    try:
        cur = con.cursor()
        # A statement, its answer as Arrow.
        cur.execute('SELECT "user", COUNT(*) AS n, SUM(price) AS total FROM events GROUP BY "user" ORDER BY "user"')
        table = cur.fetch_arrow_table()
        expected = duck.execute(
            'SELECT "user", COUNT(*) AS n, SUM(price) AS total FROM events GROUP BY "user" ORDER BY "user"'
        ).fetchall()
        same("flight sql statement", [tuple(r.values()) for r in table.to_pylist()], expected)
        same("flight sql arrow types", [str(t) for t in table.schema.types], ["string", "int64", "double"])

        # A prepared statement with parameters, run twice with other values.
        sql = "SELECT id, _event_time FROM events WHERE qty = $1 AND \"user\" = $2 ORDER BY id"
        for qty, user in [(3, "u1"), (0, "u0")]:
            cur.execute(sql, parameters=(qty, user))
            got = cur.fetch_arrow_table().to_pylist()
            expected = duck.execute(
                "SELECT id, _event_time FROM events WHERE qty = ? AND \"user\" = ? ORDER BY id", [qty, user]
            ).fetchall()
            same(
                f"flight sql prepared ({qty}, {user})",
                [(r["id"], r["_event_time"]) for r in got],
                [(a, b) for a, b in expected],
            )

        # A large answer streams as Arrow batches.
        cur.execute("SELECT a.id, b.id AS id2 FROM events a, events b")
        table = cur.fetch_arrow_table()
        same("flight sql 10000-row answer", table.num_rows, 10000)

        # Catalog objects.
        objects = con.adbc_get_objects(depth="all").read_all().to_pylist()
        catalogs = [c["catalog_name"] for c in objects]
        same("flight sql catalogs", catalogs, ["altdb"])
        schemas = objects[0]["catalog_db_schemas"]
        same("flight sql schemas", [s["db_schema_name"] for s in schemas], ["public"])
        tables = {t["table_name"]: t for t in schemas[0]["db_schema_tables"]}
        assert "events" in tables, tables.keys()
        columns = [c["column_name"] for c in tables["events"]["table_columns"]]
        for column in ["_event_time", "price", "user"]:
            assert column in columns, columns
        print("ok  flight sql adbc_get_objects")
        info = con.adbc_get_info()
        same("flight sql vendor name", info.get("vendor_name"), "altdb")
    finally:
        con.close()

    # A wrong key is refused.
    bad = flight_sql.connect(
        f"grpc://{host}:{port}",
        db_kwargs={"adbc.flight.sql.authorization_header": "Bearer wrong"},
        autocommit=True,
    )
    try:
        bad.cursor().execute("SELECT 1")
        raise AssertionError("a wrong key was accepted")
    except Exception as error:  # the driver raises its own error classes
        assert "unauthenticated" in str(error).lower() or "UNAUTHENTICATED" in str(error), error
        print("ok  flight sql wrong key refused")
    finally:
        try:
            bad.close()
        except Exception:
            pass


if __name__ == "__main__":
    main()
