"""The loader's drop-and-rebuild of keys and indexes survives a load that dies half way."""

from __future__ import annotations

import psycopg
import pytest

from simulator import load, source

pytestmark = pytest.mark.integration


def definitions(conn: psycopg.Connection) -> set[tuple[str, str]]:
    rows = conn.execute(
        """
        select conrelid::regclass::text, pg_get_constraintdef(oid) from pg_constraint
        where conrelid::regclass::text = any(%(t)s) and contype in ('p', 'u', 'f')
        union all
        select indrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index
        where indrelid::regclass::text = any(%(t)s)
        """,
        {"t": list(source.SOURCE_TABLES)},
    ).fetchall()
    return set(rows)


def test_an_interrupted_load_is_repaired(test_databases, shop_conn):
    url = test_databases["shop"]
    before = definitions(shop_conn)
    assert any("FOREIGN KEY" in d for _, d in before) and any("PRIMARY KEY" in d for _, d in before)

    load.prepare(url)  # ... and the process dies here: no keys, no indexes, the ledger remembers
    assert definitions(shop_conn) == set()
    keys = sum(d.startswith(("PRIMARY KEY", "UNIQUE")) for _, d in before)  # a key and its index: one entry
    assert shop_conn.execute(f"select count(*) from {load.LEDGER}").fetchone()[0] == len(before) - keys
    # half way through rebuilding: one key's index is built but not yet attached
    shop_conn.execute("create unique index customers_pkey on shop.customers (customer_id)")

    load.prepare(url)  # the next run first restores what the ledger holds, then drops again
    assert definitions(shop_conn) == set()
    load.finish(url)
    assert definitions(shop_conn) == before
    assert shop_conn.execute(f"select count(*) from {load.LEDGER}").fetchone()[0] == 0


def test_indexes_of_one_table_build_side_by_side(test_databases, shop_conn):
    url = test_databases["shop"]
    before = definitions(shop_conn)
    load.prepare(url)
    load.rebuild_indexes(url, "shop.customers")
    customers = {d for t, d in definitions(shop_conn) if t == "shop.customers"}
    assert customers == {d for t, d in before if t == "shop.customers" and "FOREIGN KEY" not in d}
    load.finish(url)
    assert definitions(shop_conn) == before


def test_a_table_in_parts_on_two_streams(test_databases, shop_conn):
    """The path web.events takes at scale: parts spread over two connections, keys after the last."""
    import dataclasses
    import datetime as dt

    from simulator import generate

    url = test_databases["shop"]
    before = definitions(shop_conn)
    spec = generate.Spec(customers=200, days=30, seed=1, end=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    tables = list(generate.tables(spec))
    load.prepare(url)
    loader = load.Loader(url, workers=2)
    for table in tables:
        if table.name != "web.events":
            loader.submit(table)
            continue
        bounds = [0, table.rows // 3, 2 * table.rows // 3, table.rows]
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
            columns = {
                k: v[a:b] if hasattr(v, "dtype") else v.slice(a, b - a) for k, v in table.columns.items()
            }
            part = dataclasses.replace(table, columns=columns, streams=2, last_part=i == 2)
            loader.submit(part)
    rows = loader.wait()
    load.finish(url)
    events = next(t for t in tables if t.name == "web.events")
    assert (
        rows["web.events"]
        == events.rows
        == shop_conn.execute("select count(*) from web.events").fetchone()[0]
    )
    assert definitions(shop_conn) == before
