"""Hand-placed rows for tests, the trigger benchmark and the demo's live stage.

Writes customers and the preview's sample products into the raw tables the way
extract_load would (append-only, with a batch id) and behaviour into raw.events
the way the collector does (then NOTIFY on the collector's channel).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from campaigns import assignment
from campaigns.preview import SAMPLE_PRODUCTS, image_url
from campaigns.schema import Campaign
from warehouse.settings import RAW_EVENTS_CHANNEL


def insert_products(conn: psycopg.Connection, now: datetime | None = None) -> None:
    now = now or datetime.now(UTC)
    with conn.cursor() as cur:
        cur.executemany(
            """insert into raw.shop_products (product_id, sku, name, category, price, image_url, stock, is_active,
                   created_at, updated_at, _batch_id, _loaded_at)
               values (%s, %s, %s, %s, %s, %s, 100, true, %s, %s, 'fixtures', %s)""",
            [
                (pid, sku, name, cat, price, image_url(sku), now, now, now)
                for pid, sku, name, cat, price in SAMPLE_PRODUCTS
            ],
        )


def insert_customers(
    conn: psycopg.Connection,
    ids: list[int],
    *,
    timezone: str = "UTC",
    consent: bool = True,
    first_name: str | None = "Ada",
    domain: str = "example.test",
    now: datetime | None = None,
) -> None:
    now = now or datetime.now(UTC)
    with conn.cursor() as cur:
        cur.executemany(
            """insert into raw.shop_customers (customer_id, email, first_name, last_name, accepts_email_marketing,
                   email_consent_at, timezone, country, signup_at, created_at, updated_at, _batch_id, _loaded_at)
               values (%s, %s, %s, 'Tester', %s, %s, %s, 'GB', %s, %s, %s, 'fixtures', %s)""",
            [
                (
                    i,
                    f"customer{i}@{domain}",
                    first_name,
                    consent,
                    now if consent else None,
                    timezone,
                    now - timedelta(days=30),
                    now,
                    now,
                    now,
                )
                for i in ids
            ],
        )


def daytime_timezone(now: datetime | None = None) -> str:
    """An Etc/GMT zone where it is early afternoon now, so quiet hours never interfere."""
    now = now or datetime.now(UTC)
    offset = (13 - now.hour + 12) % 24 - 12  # hours to add to UTC to reach ~13:00
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"  # Etc/GMT-3 is UTC+3


def track_event(
    customer_id: int | None,
    event: str,
    properties: dict[str, Any],
    occurred_at: datetime,
    *,
    anonymous_id: str | None = None,
    received_at: datetime | None = None,
) -> tuple:
    return (
        f"fx-{uuid.uuid4()}",
        "track",
        event,
        str(customer_id) if customer_id is not None else None,
        anonymous_id or f"anon-{customer_id}",
        Jsonb(properties),
        occurred_at,
        received_at or datetime.now(UTC),
    )


def insert_events(
    conn: psycopg.Connection, events: list[tuple], notify: bool = True, source: str = "fixtures"
) -> None:
    """INSERT into raw.events and NOTIFY raw_events after the commit, as the collector does.
    `source` "webhook:<name>" stands for a signed webhook (the provider's or the shop's)."""
    with conn.transaction():
        with conn.cursor() as cur:
            cur.executemany(
                """insert into raw.events (message_id, type, event, user_id, anonymous_id, properties, occurred_at,
                       received_at, source)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [(*e, source) for e in events],
            )
    if notify:
        conn.execute("select pg_notify(%s, %s)", (RAW_EVENTS_CHANNEL, str(len(events))))
        if not conn.autocommit:
            conn.commit()


def _cart_properties(customer_id: int, product: tuple | None, cart_id: str | None) -> dict[str, Any]:
    """'Product Added' properties; `product` is (product_id, sku, name, price), by default
    the sample oak lamp."""
    if product is None:
        pid, sku, name, _cat, price = next(p for p in SAMPLE_PRODUCTS if p[0] == 3)
        product = (pid, sku, name, price)
    pid, sku, name, price = product
    return {
        "product_id": pid,
        "sku": sku,
        "name": name,
        "price": float(price),
        "quantity": 1,
        "cart_id": cart_id or f"cart-{customer_id}",
    }


def cart_event(
    customer_id: int, occurred_at: datetime, product_id: int = 3, cart_id: str | None = None
) -> tuple:
    pid, sku, name, _cat, price = next(p for p in SAMPLE_PRODUCTS if p[0] == product_id)
    properties = _cart_properties(customer_id, (pid, sku, name, price), cart_id)
    return track_event(customer_id, "Product Added", properties, occurred_at)


def cart_call(
    customer_id: int,
    occurred_at: datetime,
    *,
    product: tuple[int, str, str, float] | None = None,
    cart_id: str | None = None,
    prefix: str = "fx",
) -> dict[str, Any]:
    """A Segment 'Product Added' track call, as a shop's site sends it to the collector.
    `product` is (product_id, sku, name, price); by default the sample oak lamp."""
    return {
        "type": "track",
        "event": "Product Added",
        "userId": str(customer_id),
        "messageId": f"{prefix}-{uuid.uuid4()}",
        "timestamp": occurred_at.isoformat(),
        "properties": _cart_properties(customer_id, product, cart_id),
    }


def treated_customers(campaign: Campaign, n: int, start: int) -> list[int]:
    """The first `n` customer ids from `start` that `campaign` does not hold out."""
    out, i = [], start
    while len(out) < n:
        if assignment.assign(campaign, i)[0] != assignment.HOLDOUT:
            out.append(i)
        i += 1
    return out
