"""Live mode: new shop rows and web events now, at the asked rate, within the asked time."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from simulator import generate, live

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def shop(test_databases) -> str:
    url = test_databases["shop"]
    generate.run(generate.Spec(customers=500, days=30, seed=3), url)
    return url


def recent(conn, table: str, column: str, since: dt.datetime) -> int:
    return conn.execute(f"select count(*) from {table} where {column} >= %s", (since,)).fetchone()[0]


def test_stream_writes_shop_rows_and_web_events_within_its_bound(shop, shop_conn):
    since = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    stats = live.stream(shop, rate=300, duration=3.0, seed=1)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 + 2.0  # bounded by --duration (plus start-up and the final flush)
    assert 0.6 * 300 * 3 <= stats.events <= 300 * 3 + 5
    assert recent(shop_conn, "web.events", "received_at", since) == stats.web_events > 0
    assert recent(shop_conn, "shop.carts", "created_at", since) == stats.carts > 0
    assert recent(shop_conn, "shop.cart_items", "added_at", since) == stats.cart_items > 0
    assert recent(shop_conn, "shop.orders", "placed_at", since) == stats.orders > 0
    # status changes are written with updated_at = now, after the order was placed
    assert recent(shop_conn, "shop.orders", "updated_at", since) >= stats.orders + 1
    assert stats.status_changes > 0
    new_orders_without_items = shop_conn.execute(
        "select count(*) from shop.orders o where o.placed_at >= %s "
        "and not exists (select 1 from shop.order_items i where i.order_id = o.order_id)",
        (since,),
    ).fetchone()[0]
    assert new_orders_without_items == 0
    converted = shop_conn.execute(
        "select count(*) from shop.carts where status = 'converted' and updated_at >= %s", (since,)
    ).fetchone()[0]
    assert converted == stats.orders


class _Collector(BaseHTTPRequestHandler):
    batches: list[dict] = []
    auth: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).batches.append({"path": self.path, "body": json.loads(body)})
        type(self).auth.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"success": true}')

    def log_message(self, *args) -> None:
        pass


def test_stream_sends_segment_batches_to_the_collector(shop, shop_conn):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        since = dt.datetime.now(dt.UTC)
        stats = live.stream(shop, rate=200, duration=2.0, collector_url=url, write_key="wk_test", seed=2)
    finally:
        server.shutdown()
    assert stats.batches_failed == 0 and stats.batches_sent == len(_Collector.batches) > 0
    assert {b["path"] for b in _Collector.batches} == {"/v1/batch"}
    assert set(_Collector.auth) == {"Basic " + base64.b64encode(b"wk_test:").decode()}
    events = [e for b in _Collector.batches for e in b["body"]["batch"]]
    assert len(events) == stats.web_events
    assert all(len(b["body"]["batch"]) <= 100 for b in _Collector.batches)
    assert {"type", "anonymousId", "context", "timestamp", "messageId"} <= set(events[0])
    assert {e["type"] for e in events} >= {"page", "track"}
    viewed = [e for e in events if e.get("event") == "Product Viewed"]
    assert viewed and {"product_id", "sku", "category", "price"} <= set(viewed[0]["properties"])
    assert len({e["messageId"] for e in events}) == len(events)
    # the web events went to the collector, not into web.events
    assert recent(shop_conn, "web.events", "received_at", since) == 0


def test_purchases_reach_a_real_collector_as_signed_shop_webhooks(shop, test_databases, tmp_path):
    """Only signed purchases cancel cart timers (campaigns.timers), so the simulated shop
    reports each order as its backend would: an order.placed webhook, never a web event."""
    from tests.integration.test_collector_api import SHOP_SECRET, WRITE_KEY, CollectorProcess

    collector = CollectorProcess(test_databases["warehouse"], tmp_path / "collector.log").start()
    try:
        stats = live.stream(
            shop, rate=200, duration=3.0, collector_url=collector.url, write_key=WRITE_KEY, seed=4,
            shop_webhook_secret=SHOP_SECRET,
        )  # fmt: skip
    finally:
        collector.stop()
    assert stats.orders > 0 and stats.batches_failed == 0
    with psycopg.connect(test_databases["warehouse"]) as conn:
        by_source = dict(
            conn.execute(
                "select source, count(*) from raw.events where event = 'Order Completed' group by source"
            ).fetchall()
        )
        placed = conn.execute(
            "select count(distinct properties->>'order_id') from raw.events"
            " where source = 'webhook:shop' and message_id like 'webhook:shop:order-%'"
        ).fetchone()[0]
    assert by_source == {"webhook:shop": stats.orders} and placed == stats.orders
