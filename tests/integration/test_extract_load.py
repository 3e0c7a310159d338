"""extract_load: incremental windows, idempotent reruns, late updates, backfills."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from extract.load import SOURCE_TABLES, extract_all, extract_table

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def empty(shop_conn, warehouse_conn):
    raw = ", ".join(f"raw.{s.raw_table}" for s in SOURCE_TABLES)
    warehouse_conn.execute(f"truncate {raw}, ops.extract_batches")
    from simulator.source import truncate

    truncate(shop_conn.info.dsn)
    return shop_conn, warehouse_conn


def add_customer(shop, customer_id: int, at: datetime) -> None:
    shop.execute(
        """insert into shop.customers values
           (%s, %s, 'Ada', 'L', true, %s, 'Europe/Berlin', 'DE', %s, %s, %s)""",
        (customer_id, f"c{customer_id}@example.test", at, at, at, at),
    )


def add_order(shop, order_id: int, customer_id: int, at: datetime, status: str = "placed") -> None:
    shop.execute(
        "insert into shop.orders values (%s, %s, %s, 'EUR', 50, 0, 50, null, %s, %s)",
        (order_id, customer_id, status, at, at),
    )


def set_status(shop, order_id: int, status: str, at: datetime) -> None:
    shop.execute(
        "update shop.orders set status = %s, updated_at = %s where order_id = %s", (status, at, order_id)
    )


def raw_rows(warehouse, table: str) -> list[tuple]:
    """Every column but _loaded_at (the only one a rerun may change), in a stable order."""
    cols = [
        r[0]
        for r in warehouse.execute(
            """select column_name from information_schema.columns
               where table_schema = 'raw' and table_name = %s and column_name <> '_loaded_at'
               order by ordinal_position""",
            (table,),
        )
    ]
    return warehouse.execute(
        f"select {', '.join(cols)} from raw.{table} order by 1, {len(cols) - 1}"
    ).fetchall()


def test_first_batch_loads_history_then_only_the_interval(empty):
    shop, wh = empty
    add_customer(shop, 1, T0 - timedelta(days=30))
    add_order(shop, 10, 1, T0 - timedelta(days=2))
    first = extract_table("shop_orders", T0)
    assert first.window_start is None and first.row_count == 1

    add_order(shop, 11, 1, T0 + timedelta(minutes=20))
    add_order(shop, 12, 1, T0 + HOUR + timedelta(minutes=5))  # belongs to the next interval
    second = extract_table("shop_orders", T0 + HOUR)
    assert (second.window_start, second.row_count) == (T0, 1)
    assert [r[0] for r in raw_rows(wh, "shop_orders")] == [10, 11]


def test_rerunning_an_interval_leaves_identical_rows(empty):
    shop, wh = empty
    add_customer(shop, 1, T0 - HOUR)
    add_order(shop, 10, 1, T0 - HOUR)
    extract_all(T0)
    add_order(shop, 11, 1, T0 + timedelta(minutes=30))
    extract_all(T0 + HOUR)
    before = {s.raw_table: raw_rows(wh, s.raw_table) for s in SOURCE_TABLES}
    batches_before = wh.execute(
        "select batch_id, window_start, window_end, row_count from ops.extract_batches order by 1"
    ).fetchall()

    extract_all(T0 + HOUR)  # rerun the latest interval
    extract_all(T0)  # and an earlier one (a backfill of a covered interval)

    assert {s.raw_table: raw_rows(wh, s.raw_table) for s in SOURCE_TABLES} == before
    assert (
        wh.execute(
            "select batch_id, window_start, window_end, row_count from ops.extract_batches order by 1"
        ).fetchall()
        == batches_before
    )


def test_late_status_change_is_captured_as_a_new_version(empty):
    shop, wh = empty
    add_customer(shop, 1, T0 - HOUR)
    add_order(shop, 10, 1, T0 - timedelta(minutes=30))
    extract_table("shop_orders", T0)
    set_status(shop, 10, "shipped", T0 + 3 * HOUR + timedelta(minutes=1))
    for hour in (1, 2, 3, 4):
        extract_table("shop_orders", T0 + hour * HOUR)
    versions = wh.execute(
        "select status, _batch_id from raw.shop_orders where order_id = 10 order by updated_at"
    ).fetchall()
    assert [v[0] for v in versions] == ["placed", "shipped"]
    assert versions[1][1].endswith((T0 + 4 * HOUR).isoformat())


def test_a_paused_dag_loses_nothing(empty):
    shop, wh = empty
    add_customer(shop, 1, T0 - HOUR)
    extract_table("shop_customers", T0)
    add_customer(shop, 2, T0 + timedelta(minutes=10))
    add_customer(shop, 3, T0 + 2 * HOUR + timedelta(minutes=10))
    later = extract_table("shop_customers", T0 + 5 * HOUR)  # hours 1-4 never ran
    assert later.window_start == T0 and later.row_count == 2
    assert [r[0] for r in raw_rows(wh, "shop_customers")] == [1, 2, 3]


def test_naive_window_end_is_rejected(empty):
    with pytest.raises(ValueError, match="timezone-aware"):
        extract_table("shop_orders", datetime(2026, 3, 1))
