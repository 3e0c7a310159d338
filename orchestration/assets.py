"""Airflow Assets: how DAGs connect by data, not by clock offsets.

URIs name warehouse relations (`warehouse://<schema>/<relation>`). Producers
declare them as outlets, consumers schedule on them.
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

RAW = {table: Asset(f"warehouse://raw/{table}") for table in RAW_TABLES}

# dbt marts, emitted by dbt_build; ML and campaign DAGs schedule on them.
MARTS = {
    name: Asset(f"warehouse://marts/{name}")
    for name in (
        "customer_rfm",
        "customer_features",
        "product_affinity",
        "trigger_candidates",
        "campaign_facts",
    )
}

# ML outputs, emitted by score_customers.
CUSTOMER_SEGMENTS = Asset("warehouse://ml/customer_segments")
