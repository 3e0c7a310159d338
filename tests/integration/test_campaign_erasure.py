"""Erasure removes the customer everywhere and keeps only a hashed suppression."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from campaigns import suppressions, timers
from campaigns.engine import Engine
from campaigns.schema import load_campaigns
from harness import fixtures

pytestmark = pytest.mark.integration


class NoSend:
    def send(self, message):
        pytest.fail(f"must not send to {message.recipient}")

    def close(self):
        pass


def test_erase_customer_everywhere_and_never_mail_again(warehouse_conn, test_databases, monkeypatch):
    db = warehouse_conn
    db.execute(
        "truncate ops.campaign_triggers, ops.send_ledger, ops.decision_log, ops.suppressions, ops.consent,"
        " ops.campaign_cursors, ops.erasure_log, raw.events, raw.shop_customers, raw.shop_products,"
        " raw.shop_orders, raw.shop_order_items, raw.identity_links, raw.esp_email_events"
    )
    fixtures.insert_products(db)
    fixtures.insert_customers(db, [77, 78], timezone=fixtures.daytime_timezone())
    now = datetime.now(UTC)
    fixtures.insert_events(
        db, [fixtures.cart_event(77, now - timedelta(minutes=5)), fixtures.cart_event(78, now)]
    )
    db.execute("insert into raw.identity_links values ('anon-77', '77', 'm1', now())")
    db.execute("""insert into raw.events (message_id, type, event, anonymous_id, properties, occurred_at, received_at, source)
                  values ('anon-view', 'track', 'Product Viewed', 'anon-77', '{}', now(), now(), 't')""")
    db.execute(
        """insert into raw.shop_orders values (1, 77, 'paid', 'USD', 10, 0, 10, null, now(), now(), 'b', now())"""
    )
    db.execute("""insert into raw.shop_order_items values (1, 1, 3, 1, 10, 0, now(), now(), 'b', now())""")
    db.execute(
        """insert into raw.esp_email_events values ('e1', 'm', 'c', 'Customer77@example.test', 'open', null, null, now(), 'b', now())"""
    )
    db.execute("""insert into ml.recommendations values (77, 1, 3, 0.9, 'item_cf', 'v', now())""")
    timers.ingest(db, load_campaigns())
    assert (
        db.execute("select count(*) from ops.campaign_triggers where customer_id = 77").fetchone()[0] == 2
    )  # cart + browse (anonymous view, stitched)

    out = subprocess.run(
        [sys.executable, "-m", "campaigns", "erase", "--customer-id", "77", "--yes"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"customers": 1' in out.stdout
    for table, where in [
        ("raw.shop_customers", "customer_id = 77"),
        ("raw.events", "user_id = '77' or anonymous_id = 'anon-77'"),
        ("raw.identity_links", "user_id = '77'"),
        ("raw.shop_orders", "customer_id = 77"),
        ("raw.shop_order_items", "order_id = 1"),
        ("raw.esp_email_events", "lower(email) = 'customer77@example.test'"),
        ("ops.campaign_triggers", "customer_id = 77"),
        ("ml.recommendations", "customer_id = 77"),
    ]:
        assert db.execute(f"select count(*) from {table} where {where}").fetchone()[0] == 0, table
    # the other customer is untouched
    assert db.execute("select count(*) from raw.shop_customers where customer_id = 78").fetchone()[0] == 1
    h = suppressions.hash_email("customer77@example.test")
    assert db.execute("select reason from ops.suppressions where email_hash = %s", (h,)).fetchone() == (
        "erasure",
    )
    log = db.execute("select email_hash, rows_deleted from ops.erasure_log").fetchone()
    assert log[0] == h and "customer77" not in str(log)
    # the shop re-sends the profile in the next extract: still never mailed
    fixtures.insert_customers(db, [77], timezone=fixtures.daytime_timezone())
    fixtures.insert_events(db, [fixtures.cart_event(77, now - timedelta(minutes=40))])
    timers.ingest(db, load_campaigns())
    Engine(adapter_factory=NoSend).run()
    assert db.execute("select outcome from ops.decision_log where customer_id = 77").fetchall() == [
        ("suppressed",)
    ]
