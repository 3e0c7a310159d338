"""The dbt project on a real PostgreSQL: builds, incremental models, marts' contents.

A scenario (tests/integration/dbt_scenario.py) is loaded in two batches. After
batch 1 a full build, after batch 2 an incremental build; then a rerun must
change nothing, and a full refresh must give the same tables as the
incremental run.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.integration import dbt_scenario as scenario
from tests.integration import dbt_support
from tests.integration.dbt_support import run_dbt

dbt_warehouse = dbt_support.dbt_warehouse  # the module's own warehouse (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Relations compared between runs: every table dbt materialises.
COMPARED_SCHEMAS = ("intermediate", "marts")


def build(dbt_warehouse, *args: str, **kwargs):
    return run_dbt(dbt_warehouse, "build", *args, **kwargs)


def tables(conn: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "select format('%%I.%%I', table_schema, table_name) from information_schema.tables "
            "where table_schema = any(%s) and table_type = 'BASE TABLE' order by 1",
            (list(COMPARED_SCHEMAS),),
        )
    ]


def copy_tables(conn: psycopg.Connection, into: str) -> dict[str, str]:
    """Copy every dbt table into schema `into`; returns {table: copy}."""
    conn.execute(f"drop schema if exists {into} cascade")
    conn.execute(f"create schema {into}")
    copies = {}
    for table in tables(conn):
        copy = f"{into}.{table.replace('.', '__')}"
        conn.execute(f"create table {copy} as select * from {table}")
        copies[table] = copy
    return copies


def differences(conn: psycopg.Connection, copies: dict[str, str]) -> dict[str, int]:
    """Rows in one but not the other (multiset), per table; empty when identical."""
    diff = {}
    for table, copy in copies.items():
        n = conn.execute(
            f"select count(*) from ((table {table} except all table {copy}) "
            f"union all (table {copy} except all table {table})) as d"
        ).fetchone()[0]
        if n:
            diff[table] = n
    return diff


@pytest.fixture(scope="module")
def built(dbt_warehouse) -> dict:
    """Batch 1 + full build, then batch 2 + incremental build; keeps what each saw."""
    url = dbt_warehouse["url"]
    scenario.load_batch(url, 1)
    build(dbt_warehouse)
    with psycopg.connect(url, autocommit=True) as conn:
        after_1 = {
            "sessions_c": conn.execute(
                "select count(*) from intermediate.int_sessions_inferred where anonymous_id = 'anon-c'"
            ).fetchone()[0],
            "triggers": conn.execute(
                "select trigger_type, customer_id from marts.trigger_candidates order by 1, 2"
            ).fetchall(),
            "events_b": conn.execute(
                "select count(*) from intermediate.int_events_stitched "
                "where anonymous_id = 'anon-b' and customer_id is null"
            ).fetchone()[0],
        }
    scenario.load_batch(url, 2)
    build(dbt_warehouse)
    return {"after_1": after_1}


def query(url: str, sql: str, *params):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def test_batch_1_as_it_arrived(built):
    after_1 = built["after_1"]
    assert after_1["sessions_c"] == 2  # a 40-minute gap
    assert after_1["events_b"] == 3  # anon-b not linked to anyone yet
    assert after_1["triggers"] == [("lapsed_vip", 2)]


def test_events_are_deduplicated_across_streams_and_stitched(built, dbt_warehouse):
    url = dbt_warehouse["url"]
    ((stream, web_at, collector_at),) = query(
        url,
        "select event_stream, web_received_at, collector_received_at from intermediate.int_events_stitched "
        "where event_id = 'both-1'",
    )
    assert stream == "collector" and web_at is not None and collector_at is not None
    assert query(
        url, "select customer_id from intermediate.int_events_stitched where event_id = 'both-1'"
    ) == [(3,)]
    # batch 2's identity link re-stitched anon-b's events merged in batch 1
    rows = query(
        url,
        "select customer_id, is_identity_stitched from intermediate.int_events_stitched "
        "where anonymous_id = 'anon-b' and call_type <> 'identify' order by event_id",
    )
    assert rows == [(4, True)] * 3
    types = dict(query(url, "select event_id, event_type from intermediate.int_events_stitched"))
    assert types["w-a1"] == "page_viewed" and types["w-b3"] == "products_searched"
    assert types["w-c3"] == "product_added" and types["webhook:esp:1"] == "email_opened"


def test_late_event_joins_two_sessions(built, dbt_warehouse):
    rows = query(
        dbt_warehouse["url"],
        "select event_count, product_view_count, cart_add_count, customer_id "
        "from intermediate.int_sessions_inferred where anonymous_id = 'anon-c'",
    )
    assert rows == [(3, 2, 1, 5)]


def test_trigger_candidates(built, dbt_warehouse):
    """Batch audiences only: cart and browse abandonment belong to campaigns/timers.py."""
    url = dbt_warehouse["url"]
    rows = query(
        url,
        "select trigger_type, customer_id, payload from marts.trigger_candidates order by trigger_type, customer_id",
    )
    assert [(t, c) for t, c, _ in rows] == [("lapsed_vip", 2)]
    assert rows[0][2]["rfm_segment"] in ("At Risk", "Cannot Lose Them")
    # the contract's column types, which campaigns/timers.py reads by name
    types = dict(
        query(
            url,
            "select attname, format_type(atttypid, atttypmod) from pg_attribute"
            " where attrelid = 'marts.trigger_candidates'::regclass and attnum > 0 and not attisdropped",
        )
    )
    assert types == {
        "trigger_id": "text",
        "customer_id": "bigint",
        "trigger_type": "text",
        "last_activity_at": "timestamp with time zone",
        "due_at": "timestamp with time zone",
        "payload": "jsonb",
        "as_of_at": "timestamp with time zone",
    }


def test_campaign_facts_attribution(built, dbt_warehouse):
    rows = query(
        dbt_warehouse["url"],
        "select message_id, customer_id, is_delivered, is_clicked, attributed_orders, attributed_revenue, "
        "orders_within_window, is_hard_bounced from marts.campaign_facts order by message_id",
    )
    assert [r[:4] for r in rows] == [("m-1", 1, True, True), ("m-2", 2, False, False)]
    assert rows[0][4:7] == (1, 130, 1) and rows[0][7] is False
    assert rows[1][4:7] == (0, 0, 0) and rows[1][7] is True


def test_rerun_changes_nothing_and_full_refresh_equals_incremental(built, dbt_warehouse):
    url = dbt_warehouse["url"]
    with psycopg.connect(url, autocommit=True) as conn:
        incremental = copy_tables(conn, "compare_incremental")
        assert "intermediate.int_events_stitched" in incremental and "marts.customer_rfm" in incremental
        snapshot_rows = conn.execute("select count(*) from snapshots.customer_rfm_snapshot").fetchone()[0]
    build(dbt_warehouse)
    with psycopg.connect(url, autocommit=True) as conn:
        assert differences(conn, incremental) == {}, "a rerun on the same data changed tables"
        assert (
            conn.execute("select count(*) from snapshots.customer_rfm_snapshot").fetchone()[0]
            == snapshot_rows
        )
    build(dbt_warehouse, "--full-refresh")
    with psycopg.connect(url, autocommit=True) as conn:
        assert differences(conn, incremental) == {}, "full refresh differs from the incremental run"


def test_segment_snapshot_records_changes(built, dbt_warehouse):
    url = dbt_warehouse["url"]
    rows = query(
        url,
        "select customer_id, rfm_segment, dbt_valid_from, dbt_valid_to from snapshots.customer_rfm_snapshot "
        "order by customer_id, dbt_valid_from",
    )
    customers = {r[0] for r in rows}
    assert customers == {1, 2, 3, 4, 5}
    # each customer has exactly one current version
    current = [r for r in rows if r[3] is None]
    assert len(current) == len(customers)


def test_customer_features_are_point_in_time(built, dbt_warehouse):
    url = dbt_warehouse["url"]
    cutoff = scenario.d(-3)
    build(dbt_warehouse, "--select", "customer_features", vars={"cutoff": cutoff.isoformat()})
    rows = query(
        url,
        "select customer_id, order_count, total_revenue, emails_sent, email_open_rate, email_click_rate, "
        "views_7d, (cutoff_at at time zone 'UTC')::date - (last_clicked_at at time zone 'UTC')::date, "
        "discount_order_share "
        "from marts.customer_features order by customer_id",
    )
    by_customer = {r[0]: r[1:] for r in rows}
    assert set(by_customer) == {1, 2, 3, 4, 5, 6}
    # order 101 was refunded after the cutoff: at the cutoff it still counted
    assert by_customer[1][:2] == (2, 180)
    assert by_customer[1][2:5] == (1, 1.0, 1.0)
    assert by_customer[1][6] == 7 and by_customer[1][7] == 0.5
    # customer 3's order (1.5 days before T) and browsing (hours before T) are after the cutoff
    assert by_customer[3][0] == 0 and by_customer[3][5] == 0
    build(dbt_warehouse, "--select", "customer_features")
    ((count, revenue),) = query(
        url, "select order_count, total_revenue from marts.customer_features where customer_id = 1"
    )
    assert (count, revenue) == (1, 130)


def test_unique_test_skips_only_what_a_unique_index_enforces(built, dbt_warehouse):
    """macros/test_unique.sql: duplicates are found unless a unique index on the column forbids them."""
    url = dbt_warehouse["url"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("drop schema if exists unique_check cascade")
        conn.execute("create schema unique_check")
        conn.execute(
            "create table unique_check.plain as select * from (values (1, 1), (1, 2), (2, 3)) as t (k, other)"
        )
        conn.execute("create table unique_check.other_indexed as table unique_check.plain")
        conn.execute("create unique index on unique_check.other_indexed (other)")
        conn.execute("create table unique_check.indexed as select * from (values (1), (2)) as t (k)")
        conn.execute("create unique index on unique_check.indexed (k)")

    def duplicates(relation: str) -> list:
        result = run_dbt(
            dbt_warehouse, "show", "--inline", f"{{{{ postgres__test_unique('{relation}', 'k') }}}}"
        )
        return [tuple(row) for row in result.result.results[0].agate_table.rows]

    assert duplicates("unique_check.plain") == [(1, 2)]
    assert duplicates("unique_check.other_indexed") == [(1, 2)]
    assert duplicates("unique_check.indexed") == []
