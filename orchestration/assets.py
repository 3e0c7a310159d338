"""Airflow Assets: how DAGs connect by data, not by clock offsets.

URIs name warehouse relations (`warehouse://<schema>/<relation>`). Producers
declare them as outlets, consumers schedule on them. Only Assets a DAG is
scheduled on are emitted (tests/dags/test_dag_integrity.py checks it); the
top-level DECISIONS.md lists who consumes each.
"""

from __future__ import annotations

from airflow.sdk import Asset

RAW_TABLES = (
    "shop_customers",
    "shop_products",
    "shop_orders",
    "shop_order_items",
    "shop_carts",
    "shop_cart_items",
    "esp_email_events",
    "web_events",
)

# emitted by extract_load, one per task; dbt_build is scheduled on all of them
RAW = {table: Asset(f"warehouse://raw/{table}") for table in RAW_TABLES}

# dbt marts, emitted by dbt_build: customer_features schedules score_customers
MARTS = {name: Asset(f"warehouse://marts/{name}") for name in ("customer_features",)}
