"""What a batch of sends needs from the warehouse, fetched in bulk.

Profiles come from the latest version of each customer in raw.shop_customers
(append-only), falling back to the latest identify traits in raw.events for a
customer the hourly extract has not brought yet. Segments and scores come from
ml.customer_segments and recommendations from ml.recommendations when those
tables exist; otherwise templates get bestsellers from raw orders (fallback
content) and no segment.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from warehouse.db import columns, relation_exists


def profiles(conn: psycopg.Connection, customer_ids: list[int]) -> dict[int, dict[str, Any]]:
    if not customer_ids:
        return {}
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        """select distinct on (customer_id) customer_id, email, first_name, accepts_email_marketing, timezone
           from raw.shop_customers where customer_id = any(%s)
           order by customer_id, updated_at desc, _loaded_at desc""",
        (list(customer_ids),),
    ).fetchall()
    out = {r["customer_id"]: r for r in rows}
    missing = [str(c) for c in customer_ids if c not in out]
    if missing:
        for r in cur.execute(
            """select distinct on (user_id) user_id, traits from raw.events
               where type = 'identify' and user_id = any(%s) and traits ? 'email'
               order by user_id, occurred_at desc""",
            (missing,),
        ):
            traits = r["traits"] or {}
            cid = int(r["user_id"])
            out[cid] = {
                "customer_id": cid,
                "email": traits.get("email"),
                "first_name": traits.get("first_name") or traits.get("firstName"),
                # consent must be explicit: only ops.consent can grant it for these
                "accepts_email_marketing": False,
                "timezone": traits.get("timezone") or "UTC",
            }
    return out


def consent_overrides(
    conn: psycopg.Connection, customer_ids: list[int], email_hashes: list[str]
) -> dict[Any, bool]:
    """Latest ops.consent row per customer id and per address hash (both as keys)."""
    out: dict[Any, bool] = {}
    if not customer_ids and not email_hashes:
        return out
    for cid, h, granted in conn.execute(
        """select distinct on (coalesce(customer_id::text, email_hash)) customer_id, email_hash, granted
           from ops.consent where customer_id = any(%s) or email_hash = any(%s)
           order by coalesce(customer_id::text, email_hash), recorded_at desc, consent_id desc""",
        (list(customer_ids), list(email_hashes)),
    ):
        if cid is not None:
            out[cid] = granted
        out[h] = granted if h not in out else (out[h] and granted)
    return out


def suppressed(conn: psycopg.Connection, email_hashes: list[str]) -> dict[str, str]:
    if not email_hashes:
        return {}
    return dict(
        conn.execute(
            "select email_hash, reason from ops.suppressions where email_hash = any(%s)",
            (list(email_hashes),),
        ).fetchall()
    )


def recent_sends(
    conn: psycopg.Connection, customer_ids: list[int], since: datetime
) -> dict[int, list[tuple]]:
    """(time, trigger_id) of sends (sent or in flight) per customer since `since`."""
    out: dict[int, list[tuple]] = {}
    for cid, at, trigger_id in conn.execute(
        """select customer_id, coalesce(sent_at, sending_at), trigger_id from ops.send_ledger
           where customer_id = any(%s) and state in ('sending', 'sent') and coalesce(sent_at, sending_at) >= %s""",
        (list(customer_ids), since),
    ):
        out.setdefault(cid, []).append((at, trigger_id))
    return out


def segments(conn: psycopg.Connection, customer_ids: list[int]) -> dict[int, dict[str, Any]]:
    if not customer_ids or not relation_exists(conn, "ml.customer_segments"):
        return {}
    cur = conn.cursor(row_factory=dict_row)
    return {
        r["customer_id"]: r
        for r in cur.execute(
            "select * from ml.customer_segments where customer_id = any(%s)", (list(customer_ids),)
        )
    }


def segment_labels(row: dict[str, Any] | None) -> set[str]:
    if not row:
        return set()
    labels: set[str] = set()
    for key in (
        "segment",
        "segment_label",
        "label",
        "segments",
        "vip_segment",
        "churn_segment",
        "value_segment",
    ):
        value = row.get(key)
        if isinstance(value, str):
            labels.add(value)
        elif isinstance(value, list | tuple):
            labels.update(str(v) for v in value)
    return labels


def products(conn: psycopg.Connection, product_ids: list[int]) -> dict[int, dict[str, Any]]:
    if not product_ids:
        return {}
    cur = conn.cursor(row_factory=dict_row)
    return {
        r["product_id"]: r
        for r in cur.execute(
            """select distinct on (product_id) product_id, sku, name, category, price, image_url, stock, is_active
               from raw.shop_products where product_id = any(%s) order by product_id, updated_at desc""",
            (list(product_ids),),
        )
    }


_bestsellers_cache: tuple[float, str, list] | None = None


def bestsellers(conn: psycopg.Connection, limit: int = 6, max_age_s: float = 300) -> list[dict[str, Any]]:
    """Top products by units ordered in the last 30 days of orders (cached a few minutes)."""
    global _bestsellers_cache
    key = conn.info.dbname
    if (
        _bestsellers_cache
        and _bestsellers_cache[1] == key
        and time.monotonic() - _bestsellers_cache[0] < max_age_s
    ):
        return _bestsellers_cache[2]
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        """with latest_products as (
               select distinct on (product_id) product_id, sku, name, category, price, image_url, stock, is_active
               from raw.shop_products order by product_id, updated_at desc),
           recent as (select max(placed_at) - interval '30 days' as since from raw.shop_orders),
           units as (
               select i.product_id, sum(i.quantity) as units
               from raw.shop_order_items i join raw.shop_orders o using (order_id), recent
               where o.placed_at >= recent.since group by i.product_id)
           select p.* from units u join latest_products p using (product_id)
           where p.is_active and p.stock > 0 order by u.units desc, p.product_id limit %s""",
        (limit,),
    ).fetchall()
    if not rows:  # no orders yet: any active products
        rows = cur.execute(
            """select distinct on (product_id) product_id, sku, name, category, price, image_url, stock, is_active
               from raw.shop_products order by product_id, updated_at desc limit %s""",
            (limit,),
        ).fetchall()
    _bestsellers_cache = (time.monotonic(), key, rows)
    return rows


def recommendations(
    conn: psycopg.Connection, customer_ids: list[int], limit: int = 6
) -> dict[int, list[dict]]:
    """Per customer, from ml.recommendations (ranked) when the table exists; else {}."""
    if not customer_ids or not relation_exists(conn, "ml.recommendations"):
        return {}
    cols = columns(conn, "ml", "recommendations")
    order = "rank" if "rank" in cols else ("score desc" if "score" in cols else "product_id")
    if "product_id" not in cols or "customer_id" not in cols:
        return {}
    out: dict[int, list[int]] = {}
    for cid, pid in conn.execute(
        f"""select customer_id, product_id from (
                select customer_id, product_id, row_number() over (partition by customer_id order by {order}) as n
                from ml.recommendations where customer_id = any(%s)) r where n <= %s""",
        (list(customer_ids), limit),
    ):
        out.setdefault(cid, []).append(pid)
    catalogue = products(conn, sorted({p for ps in out.values() for p in ps}))
    return {
        cid: [catalogue[p] for p in ps if p in catalogue and catalogue[p].get("is_active", True)]
        for cid, ps in out.items()
    }
