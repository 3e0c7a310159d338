"""The real CDNOW data set loaded into the shop schema."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from simulator import cdnow, source

pytestmark = pytest.mark.integration


def count(conn, table: str) -> int:
    return conn.execute(f"select count(*) from {table}").fetchone()[0]


def test_sample_loads_customers_and_orders_only(test_databases, shop_conn):
    shop_conn.execute("set time zone 'UTC'")
    rows = cdnow.load_cdnow(test_databases["shop"], sample=True)
    assert rows == {"shop.customers": 2357, "shop.orders": 6919}
    assert count(shop_conn, "shop.customers") == 2357
    assert count(shop_conn, "shop.orders") == 6919
    for table in set(source.SOURCE_TABLES) - {"shop.customers", "shop.orders"}:
        assert count(shop_conn, table) == 0, table
    _, _, _, cents = cdnow.read(sample=True)
    total, first, last, statuses = shop_conn.execute(
        "select sum(total), min(placed_at), max(placed_at), array_agg(distinct status) from shop.orders"
    ).fetchone()
    assert total * 100 == int(np.sum(cents))
    assert first == dt.datetime(1997, 1, 1, 12, tzinfo=dt.UTC)
    assert last < dt.datetime(1998, 7, 1, tzinfo=dt.UTC)
    assert statuses == ["delivered"]
    bad = shop_conn.execute(
        """
        select count(*) from shop.customers c
        where c.email <> 'customer-' || c.customer_id || '@cdnow.example'
           or not c.accepts_email_marketing or c.timezone <> 'America/New_York' or c.country <> 'US'
           or c.signup_at <> (select min(placed_at) from shop.orders o where o.customer_id = c.customer_id)
        """
    ).fetchone()[0]
    assert bad == 0
    assert count(shop_conn, "shop.orders where updated_at <> placed_at or placed_at::time <> '12:00'") == 0


@pytest.mark.slow
def test_master_loads_all_transactions(test_databases, shop_conn):
    rows = cdnow.load_cdnow(test_databases["shop"], sample=False)
    assert rows == {"shop.customers": 23_570, "shop.orders": 69_659}
    assert count(shop_conn, "shop.orders o join shop.customers c using (customer_id)") == 69_659
