"""The shop's source database: its schema and how to reset it."""

from __future__ import annotations

from pathlib import Path

import psycopg

SCHEMA_SQL = Path(__file__).with_name("source_schema.sql")
SOURCE_TABLES = (
    "shop.customers",
    "shop.products",
    "shop.orders",
    "shop.order_items",
    "shop.carts",
    "shop.cart_items",
    "esp.email_events",
    "web.events",
    "simulator.customer_truth",
)


def create_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.read_text())


def truncate(url: str) -> None:
    """Empty every source table (a fresh simulation replaces the previous one)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"truncate {', '.join(SOURCE_TABLES)} cascade")
