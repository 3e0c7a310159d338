"""Right to erasure: remove a customer from the warehouse, keep only a hashed suppression.

    python -m campaigns erase --customer-id 42 [--yes]
    python -m campaigns erase --email someone@example.com [--yes]

In one transaction: finds the customer's addresses and anonymous ids (identity
links, events), records a suppression keyed by the SHA-256 of each address (so
they are never mailed again, even if the shop re-sends them), then deletes
every row that names the customer from every table in the raw, ops, ml and dbt
schemas: by customer_id, user_id, anonymous_id, email or email_hash column, plus
orders' and carts' line items. ops.suppressions and ops.erasure_log keep hashes
only. The shop's own database is the source system: it must erase there too,
or the next extract brings the profile back (still suppressed).
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import sql

from campaigns.suppressions import hash_email, normalise_email
from warehouse import settings

SKIP_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")
KEEP = {("ops", "suppressions"), ("ops", "erasure_log"), ("ops", "alembic_version")}
KEY_COLUMNS = ("customer_id", "user_id", "anonymous_id", "email", "email_hash", "previous_id")


def _identities(conn: psycopg.Connection, customer_id: int | None, email: str | None) -> tuple[set, set, set]:
    ids: set[int] = {customer_id} if customer_id is not None else set()
    emails: set[str] = {normalise_email(email)} if email else set()
    for _ in range(2):  # ids -> emails -> ids
        if emails:
            ids |= {
                r[0]
                for r in conn.execute(
                    "select distinct customer_id from raw.shop_customers where lower(email) = any(%s)",
                    (list(emails),),
                )
            }
        if ids:
            emails |= {
                normalise_email(r[0])
                for r in conn.execute(
                    "select distinct email from raw.shop_customers where customer_id = any(%s)", (list(ids),)
                )
            }
            emails |= {
                normalise_email(r[0])
                for r in conn.execute(
                    "select distinct traits->>'email' from raw.events where type = 'identify' and user_id = any(%s)"
                    " and traits ? 'email'",
                    ([str(i) for i in ids],),
                )
            }
    anon: set[str] = set()
    if ids:
        text_ids = [str(i) for i in ids]
        anon |= {
            r[0]
            for r in conn.execute(
                "select anonymous_id from raw.identity_links where user_id = any(%s)", (text_ids,)
            )
        }
        anon |= {
            r[0]
            for r in conn.execute(
                "select distinct anonymous_id from raw.events where user_id = any(%s) and anonymous_id is not null",
                (text_ids,),
            )
        }
    return ids, emails, anon


def _tables(conn: psycopg.Connection) -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for schema, table, column, dtype in conn.execute(
        """select c.table_schema, c.table_name, c.column_name, c.data_type
           from information_schema.columns c
           join information_schema.tables t using (table_schema, table_name)
           where t.table_type = 'BASE TABLE' and c.table_schema <> all(%s) and c.column_name = any(%s)""",
        (list(SKIP_SCHEMAS), list(KEY_COLUMNS)),
    ):
        if (schema, table) not in KEEP:
            out.setdefault((schema, table), {})[column] = dtype
    return out


def erase(
    *, customer_id: int | None = None, email: str | None = None, url: str | None = None
) -> dict[str, Any]:
    if customer_id is None and not email:
        raise ValueError("give a customer_id or an email")
    with psycopg.connect(url or settings.warehouse_url()) as conn, conn.transaction():
        ids, emails, anon = _identities(conn, customer_id, email)
        hashes = sorted(hash_email(e) for e in emails)
        for h in hashes:
            conn.execute(
                "insert into ops.suppressions (email_hash, reason, source) values (%s, 'erasure', 'erasure')"
                " on conflict do nothing",
                (h,),
            )
        text_ids = sorted(str(i) for i in ids)
        values = {
            "customer_id": text_ids,
            "user_id": text_ids,
            "previous_id": sorted(anon),
            "anonymous_id": sorted(anon),
            "email": sorted(emails),
            "email_hash": hashes,
        }
        deleted: dict[str, int] = {}
        # line items first: they name the customer only through their order or cart
        if ids:
            for child, parent, key, who in (
                ("shop_order_items", "shop_orders", "order_id", "customer_id::text = any(%(ids)s)"),
                (
                    "shop_cart_items",
                    "shop_carts",
                    "cart_id",
                    "customer_id::text = any(%(ids)s) or anonymous_id = any(%(anon)s)",
                ),
            ):
                cur = conn.execute(
                    f"delete from raw.{child} where {key} in (select {key} from raw.{parent} where {who})",
                    {"ids": text_ids, "anon": sorted(anon)},
                )
                deleted[f"raw.{child}"] = cur.rowcount
        for (schema, table), cols in sorted(_tables(conn).items()):
            clauses = []
            params: list[Any] = []
            for col in cols:
                vals = values[col]
                if not vals:
                    continue
                expr = sql.SQL("lower({}::text)") if col == "email" else sql.SQL("{}::text")
                clauses.append(sql.SQL("{} = any(%s)").format(expr.format(sql.Identifier(col))))
                params.append(vals)
            if table == "events" and schema == "raw" and emails:  # provider webhooks carry the address
                clauses.append(sql.SQL("lower(properties->>'email') = any(%s)"))
                params.append(sorted(emails))
            if not clauses:
                continue
            cur = conn.execute(
                sql.SQL("delete from {}.{} where {}").format(
                    sql.Identifier(schema), sql.Identifier(table), sql.SQL(" or ").join(clauses)
                ),
                params,
            )
            if cur.rowcount:
                deleted[f"{schema}.{table}"] = deleted.get(f"{schema}.{table}", 0) + cur.rowcount
        conn.execute(
            "insert into ops.erasure_log (email_hash, customer_id_hash, rows_deleted) values (%s, %s, %s)",
            (
                hashes[0] if hashes else None,
                hashlib.sha256(",".join(text_ids).encode()).hexdigest() if text_ids else None,
                psycopg.types.json.Jsonb(deleted),
            ),
        )
    return {"customers": len(ids), "addresses_suppressed": len(hashes), "rows_deleted": deleted}
