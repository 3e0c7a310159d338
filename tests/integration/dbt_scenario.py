"""A small, hand-written shop history in raw.*, loaded in two batches, for the dbt tests.

Batch 1 is what extract_load and the collector had written by T (2026-03-01
12:00 UTC); batch 2 arrives an hour later and holds what makes incremental
models hard: a late identity link for events already merged, a late event that
joins two sessions, the web copy of a message the collector already had, a new
order. The expectations the tests check are written next to the rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LOADED_1 = T
LOADED_2 = T + timedelta(hours=1)
SIGNUP = datetime(2025, 1, 1, tzinfo=UTC)


def h(hours: float) -> datetime:
    return T + timedelta(hours=hours)


def d(days: float) -> datetime:
    return T + timedelta(days=days)


CUSTOMERS = [(c, f"customer{c}@example.com") for c in range(1, 7)]
PRODUCTS = [
    (10, "SKU-10", "Runner", "shoes", "50.00"),
    (11, "SKU-11", "Trail runner", "shoes", "80.00"),
    (12, "SKU-12", "Cap", "hats", "20.00"),
    (13, "SKU-13", "Backpack", "bags", "120.00"),
]

# order_id, customer, status, total, discount, placed_at, updated_at, [(item_id, product, qty, price)]
ORDERS_1 = [
    (100, 1, "delivered", "130.00", "0.00", d(-9.5), d(-8), [(1000, 10, 1, "50.00"), (1001, 11, 1, "80.00")]),
    # order 101 was placed, then refunded two days later: two versions in raw
    (101, 1, "placed", "50.00", "5.00", d(-4.5), d(-4.5), [(1010, 10, 1, "50.00")]),
    (101, 1, "refunded", "50.00", "5.00", d(-4.5), d(-2.5), []),
    (
        102,
        2,
        "delivered",
        "480.00",
        "0.00",
        datetime(2025, 6, 1, tzinfo=UTC),
        datetime(2025, 6, 5, tzinfo=UTC),
        [(1020, 13, 4, "120.00")],
    ),
    (
        103,
        2,
        "delivered",
        "420.00",
        "0.00",
        datetime(2025, 7, 1, tzinfo=UTC),
        datetime(2025, 7, 5, tzinfo=UTC),
        [(1030, 13, 3, "120.00"), (1031, 12, 3, "20.00")],
    ),
    (104, 3, "shipped", "70.00", "0.00", d(-1.5), d(-1), [(1040, 10, 1, "50.00"), (1041, 12, 1, "20.00")]),
    (105, 4, "delivered", "130.00", "0.00", d(-50), d(-45), [(1050, 10, 1, "50.00"), (1051, 11, 1, "80.00")]),
    (106, 5, "delivered", "130.00", "0.00", d(-28), d(-25), [(1060, 10, 1, "50.00"), (1061, 11, 1, "80.00")]),
]
ORDERS_2 = [
    (107, 5, "placed", "120.00", "0.00", h(0.33), h(0.33), [(1070, 13, 1, "120.00")]),
]

# cart_id, customer (None while anonymous), anonymous_id, status, created_at, [(item, product, qty, price, added, removed)]
CARTS_1 = [
    # customer 1 left product 10 in the cart 2 h 50 min before T (11 was removed): due after 60 min
    (
        500,
        1,
        "anon-d",
        "open",
        h(-3),
        [(5000, 10, 1, "50.00", h(-3), None), (5001, 11, 1, "80.00", h(-2.95), h(-2.83))],
    ),
    # an anonymous cart; its device is linked to customer 4 in batch 2
    (501, None, "anon-b", "open", h(-2), [(5010, 12, 2, "20.00", h(-2), None)]),
    # customer 6 is still shopping: activity 20 minutes ago is not due yet
    (502, 6, "anon-e", "open", h(-0.5), [(5020, 13, 1, "120.00", h(-0.33), None)]),
]


def _event(message_id, type_, event, anonymous_id, user_id, properties, occurred_at, received_at):
    return (message_id, type_, event, anonymous_id, user_id, json.dumps(properties), occurred_at, received_at)


# Web tracking (raw.web_events). anon-a browses then identifies as customer 3;
# anon-b browses anonymously (linked to customer 4 in batch 2); anon-c is
# customer 5, logged in, with a 40 minute gap that batch 2's late event closes.
WEB_EVENTS_1 = [
    _event("w-a1", "page", None, "anon-a", None, {"path": "/"}, h(-5), h(-5)),
    _event("w-a2", "track", "Product Viewed", "anon-a", None, {"product_id": 12}, h(-4.98), h(-4.98)),
    _event("w-a3", "track", "Product Viewed", "anon-a", None, {"product_id": "13"}, h(-4.83), h(-4.83)),
    _event("w-a4", "identify", None, "anon-a", "3", {}, h(-4.75), h(-4.75)),
    _event("w-b1", "track", "Product Viewed", "anon-b", None, {"product_id": 10}, h(-3), h(-3)),
    _event("w-b2", "track", "Product Viewed", "anon-b", None, {"product_id": 11}, h(-2.92), h(-2.92)),
    _event("w-b3", "track", "Products Searched", "anon-b", None, {"query": "trail"}, h(-2.9), h(-2.9)),
    _event("w-c1", "track", "Product Viewed", "anon-c", "5", {"product_id": 10}, h(-1), h(-1)),
    _event("w-c2", "track", "Product Viewed", "anon-c", "5", {"product_id": 11}, h(-1 / 3), h(-1 / 3)),
]
WEB_EVENTS_2 = [
    # late: happened 40 minutes before T, received 30 minutes after
    _event("w-c3", "track", "Product Added", "anon-c", "5", {"product_id": 11}, h(-2 / 3), h(0.5)),
    # the web export's copy of a message the collector received first
    _event(
        "both-1",
        "track",
        "Product Viewed",
        "anon-a",
        None,
        {"product_id": 13},
        h(-2),
        h(-2) + timedelta(seconds=1),
    ),
]

# Collector (raw.events): a webhook and the collector's copy of both-1.
COLLECTOR_EVENTS_1 = [
    (
        "both-1",
        "track",
        "Product Viewed",
        None,
        None,
        "anon-a",
        None,
        json.dumps({"product_id": 13}),
        h(-2),
        h(-2),
        "web",
    ),
    (
        "webhook:esp:1",
        "track",
        "Email Opened",
        None,
        "1",
        None,
        None,
        json.dumps({"message_id": "m-1"}),
        d(-10) + timedelta(hours=1),
        d(-10) + timedelta(hours=1),
        "webhook:esp",
    ),
]
COLLECTOR_EVENTS_2 = [
    ("c-ident-b", "identify", None, None, "4", "anon-b", None, "{}", h(0.17), h(0.17), "web"),
]
IDENTITY_LINKS_2 = [("anon-b", "4", "c-ident-b", h(0.17))]

# Email provider export: m-1 to customer 1 (clicked, then order 100 within 5
# days), m-2 to customer 2 (hard bounce).
EMAIL_EVENTS_1 = [
    ("e-1", "m-1", "cart_recovery", "customer1@example.com", "send", None, None, d(-10)),
    (
        "e-2",
        "m-1",
        "cart_recovery",
        "customer1@example.com",
        "delivery",
        None,
        None,
        d(-10) + timedelta(minutes=1),
    ),
    ("e-3", "m-1", "cart_recovery", "customer1@example.com", "open", None, None, d(-10) + timedelta(hours=1)),
    (
        "e-4",
        "m-1",
        "cart_recovery",
        "customer1@example.com",
        "click",
        "https://shop/p/10",
        None,
        d(-10) + timedelta(hours=2),
    ),
    ("e-5", "m-2", "vip_offer", "customer2@example.com", "send", None, None, d(-3)),
    (
        "e-6",
        "m-2",
        "vip_offer",
        "customer2@example.com",
        "bounce",
        None,
        "hard",
        d(-3) + timedelta(minutes=1),
    ),
]


def load_batch(url: str, batch: int) -> None:
    """Write batch 1 or 2 into raw.* as extract_load and the collector would."""
    loaded_at = LOADED_1 if batch == 1 else LOADED_2
    batch_id = f"test/{batch}"
    with psycopg.connect(url, autocommit=True) as conn:
        if batch == 1:
            for customer_id, email in CUSTOMERS:
                conn.execute(
                    """insert into raw.shop_customers values
                       (%s, %s, 'First', 'Last', true, %s, 'Europe/Paris', 'FR', %s, %s, %s, %s, %s)""",
                    (customer_id, email, SIGNUP, SIGNUP, SIGNUP, SIGNUP, batch_id, loaded_at),
                )
            for product_id, sku, name, category, price in PRODUCTS:
                conn.execute(
                    """insert into raw.shop_products values
                       (%s, %s, %s, %s, %s, 'https://img/p.png', 10, true, %s, %s, %s, %s)""",
                    (product_id, sku, name, category, price, SIGNUP, SIGNUP, batch_id, loaded_at),
                )
            for cart_id, customer_id, anonymous_id, status, created_at, items in CARTS_1:
                conn.execute(
                    "insert into raw.shop_carts values (%s, %s, %s, %s, null, %s, %s, %s, %s)",
                    (cart_id, customer_id, anonymous_id, status, created_at, created_at, batch_id, loaded_at),
                )
                for item_id, product_id, qty, price, added, removed in items:
                    conn.execute(
                        "insert into raw.shop_cart_items values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (
                            item_id,
                            cart_id,
                            product_id,
                            qty,
                            price,
                            added,
                            removed,
                            removed or added,
                            batch_id,
                            loaded_at,
                        ),
                    )
            conn.cursor().executemany(
                "insert into raw.esp_email_events values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(*row, batch_id, loaded_at) for row in EMAIL_EVENTS_1],
            )
        for order_id, customer_id, status, total, discount, placed_at, updated_at, items in (
            ORDERS_1 if batch == 1 else ORDERS_2
        ):
            subtotal = f"{float(total) + float(discount):.2f}"
            conn.execute(
                "insert into raw.shop_orders values (%s, %s, %s, 'EUR', %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    order_id,
                    customer_id,
                    status,
                    subtotal,
                    discount,
                    total,
                    "SAVE5" if float(discount) else None,
                    placed_at,
                    updated_at,
                    batch_id,
                    loaded_at,
                ),
            )
            for item_id, product_id, qty, price in items:
                conn.execute(
                    "insert into raw.shop_order_items values (%s, %s, %s, %s, %s, 0, %s, %s, %s, %s)",
                    (item_id, order_id, product_id, qty, price, placed_at, updated_at, batch_id, loaded_at),
                )
        conn.cursor().executemany(
            "insert into raw.web_events values (%s, %s, %s, %s, %s, %s, '{}', %s, %s, %s, %s)",
            [(*row, batch_id, loaded_at) for row in (WEB_EVENTS_1 if batch == 1 else WEB_EVENTS_2)],
        )
        conn.cursor().executemany(
            """insert into raw.events (message_id, type, event, name, user_id, anonymous_id, previous_id,
                   properties, occurred_at, received_at, source)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            COLLECTOR_EVENTS_1 if batch == 1 else COLLECTOR_EVENTS_2,
        )
        if batch == 2:
            conn.cursor().executemany(
                "insert into raw.identity_links values (%s, %s, %s, %s)", IDENTITY_LINKS_2
            )
        for table in ("shop_customers", "shop_orders", "web_events", "esp_email_events"):
            conn.execute(
                """insert into ops.extract_batches values (%s, %s, null, %s, 0, %s)
                   on conflict do nothing""",
                (f"{table}/{batch}", table, loaded_at, loaded_at),
            )
