"""Suppressions and consent: who must never be mailed, keyed by a hash of the address.

Bounces (hard), complaints and unsubscribes reported by the email provider, as
webhook track events in raw.events or rows of raw.esp_email_events, become
suppressions here (see `campaigns.timers.ingest`, which calls `add`). Erased
customers (campaigns.erasure) also leave a tombstone, keyed by a hash of their
id, that the ingest (`forget_erased`) and the engine's claim check.
"""

from __future__ import annotations

import hashlib

import psycopg

REASONS = ("unsubscribe", "hard_bounce", "complaint", "erasure", "manual")


def normalise_email(email: str) -> str:
    return email.strip().lower()


def hash_email(email: str) -> str:
    """SHA-256 of the normalised address: what we keep after an erasure."""
    return hashlib.sha256(normalise_email(email).encode()).hexdigest()


def add(conn: psycopg.Connection, email_hash: str, reason: str, source: str) -> bool:
    """Record a suppression; True when it is new. The first reason recorded stays."""
    if reason not in REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    cur = conn.execute(
        "insert into ops.suppressions (email_hash, reason, source) values (%s, %s, %s) on conflict do nothing",
        (email_hash, reason, source),
    )
    return cur.rowcount == 1


def revoke_consent(conn: psycopg.Connection, email_hash: str, customer_id: int | None, source: str) -> None:
    conn.execute(
        "insert into ops.consent (customer_id, email_hash, granted, source) values (%s, %s, false, %s)",
        (customer_id, email_hash, source),
    )


# Customers with a tombstone (campaigns.erasure); the engine's claim query checks
# ops.erased_customers too. The exists() is evaluated once: no tombstone, no work.
_ERASED = """
    select c from unnest(%b::bigint[]) c
    where exists (select from ops.erased_customers)
      and ops.customer_id_hash(c) in (select customer_id_hash from ops.erased_customers)
"""


def forget_erased(conn: psycopg.Connection, rows: list[dict]) -> None:
    """Detach rows of erased customers from them (customer_id None): an event arriving after
    the erasure (a browser tab still open, a late export) creates nothing for them."""
    # an id out of bigint's range (hostile input) is nobody's: it must not fail the query
    ids = sorted({c for r in rows if (c := r["customer_id"]) is not None and -(2**63) <= c < 2**63})
    erased = {c for (c,) in conn.execute(_ERASED, (ids,))} if ids else set()
    for r in rows:
        if r["customer_id"] in erased:
            r["customer_id"] = None
