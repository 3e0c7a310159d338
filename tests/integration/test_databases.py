import pytest

pytestmark = pytest.mark.integration


def test_migrations_create_raw_tables(warehouse_conn):
    tables = {
        r[0]
        for r in warehouse_conn.execute(
            "select table_name from information_schema.tables where table_schema = 'raw'"
        )
    }
    assert {"shop_orders", "shop_customers", "web_events", "esp_email_events"} <= tables


def test_source_schema_exists(shop_conn):
    count = shop_conn.execute(
        "select count(*) from information_schema.tables where table_schema in ('shop', 'esp', 'web')"
    ).fetchone()[0]
    assert count == 8
