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


def add_email_event(shop, event_id: str, event_type: str, occurred: datetime, received: datetime) -> None:
    shop.execute(
        "insert into esp.email_events values (%s, 'msg-1', 'newsletter', 'bob@example.test', %s, null, %s, %s, %s)",
        (event_id, event_type, "hard" if event_type == "bounce" else None, occurred, received),
    )


def test_a_late_bounce_is_extracted_once_and_becomes_a_suppression(empty, warehouse_conn):
    from campaigns import suppressions, timers

    shop, wh = empty
    add_email_event(shop, "e-delivery", "delivery", T0 - timedelta(minutes=40), T0 - timedelta(minutes=39))
    assert extract_table("esp_email_events", T0).row_count == 1
    # the bounce happened inside the window just extracted, but reached the export after it
    add_email_event(shop, "e-bounce", "bounce", T0 - timedelta(minutes=30), T0 + timedelta(minutes=50))
    late = extract_table("esp_email_events", T0 + HOUR)
    assert late.row_count == 1
    rows = raw_rows(wh, "esp_email_events")
    assert sorted(r[0] for r in rows) == ["e-bounce", "e-delivery"]

    extract_table("esp_email_events", T0 + HOUR)  # a rerun of the same batch changes nothing
    assert raw_rows(wh, "esp_email_events") == rows

    wh.execute("truncate ops.suppressions, ops.campaign_cursors")
    timers.ingest(warehouse_conn, {})
    reasons = wh.execute("select email_hash, reason from ops.suppressions").fetchall()
    assert reasons == [(suppressions.hash_email("bob@example.test"), "hard_bounce")]


def test_an_event_raw_already_has_is_not_loaded_again(empty):
    """Batches windowed by event time (before arrival windows) loaded events that the
    first window by arrival reads again: each stays in raw once, in its first batch."""
    shop, wh = empty
    add_email_event(shop, "e-open", "open", T0 - timedelta(minutes=1), T0 + timedelta(minutes=2))
    wh.execute(
        """insert into raw.esp_email_events (event_id, message_id, campaign, email, event_type, occurred_at,
               _batch_id, _loaded_at) values ('e-open', 'msg-1', 'newsletter', 'bob@example.test', 'open', %s,
               'esp_email_events/by-event-time', now())""",
        (T0 - timedelta(minutes=1),),
    )
    wh.execute(
        """insert into ops.extract_batches (batch_id, source_table, window_start, window_end, row_count, loaded_at)
           values ('esp_email_events/by-event-time', 'esp_email_events', null, %s, 1, now())""",
        (T0,),
    )
    add_email_event(shop, "e-click", "click", T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))
    result = extract_table("esp_email_events", T0 + HOUR)
    assert result.row_count == 1
    assert wh.execute(
        "select event_id, _batch_id from raw.esp_email_events order by event_id"
    ).fetchall() == [("e-click", result.batch_id), ("e-open", "esp_email_events/by-event-time")]
