"""The send ledger (ops.send_ledger): one row per message, written before each step.

    rendering -> sending -> sent | failed

Rows are unique on (campaign, customer, trigger) and written on autocommit
connections, apart from the batch's transaction, so their state survives a
crash (campaigns.engine explains the recovery): `sent` is not sent again,
`rendering`/`failed` (and `claimed`, written before migration 0008) had not
reached the relay, `sending` is in doubt and is resent with the same
Message-ID (message_id_for), which receivers and ESP APIs deduplicate.
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg.rows import dict_row

from campaigns import config

IN_PROGRESS = ("sending", "claimed", "rendering", "failed")  # eligible once, not sent yet

# Marks the ledger rows `next` as sending and `done` (the previous group of this
# sender, accepted by the relay) as sent, in one statement.
_MARK_GROUP = """
    update ops.send_ledger set
        state = case when ledger_id = any(%(done)s::bigint[]) then 'sent' else 'sending' end,
        sent_at = case when ledger_id = any(%(done)s::bigint[]) then now() else sent_at end,
        last_error = case when ledger_id = any(%(done)s::bigint[]) then null else last_error end,
        attempts = case when ledger_id = any(%(next)s::bigint[]) then attempts + 1 else attempts end,
        sending_at = case when ledger_id = any(%(next)s::bigint[]) then now() else sending_at end,
        updated_at = now()
    where ledger_id = any(%(next)s::bigint[]) or ledger_id = any(%(done)s::bigint[])
"""


def message_id_for(campaign: str, customer_id: int, trigger_id: str) -> str:
    """The message's Message-ID, the same on every attempt: the idempotency key."""
    digest = hashlib.sha256(f"{campaign}|{customer_id}|{trigger_id}".encode()).hexdigest()[:32]
    return f"<{digest}@{config.mail_domain()}>"


def existing(conn: psycopg.Connection, rows: list[dict]) -> dict[str, dict]:
    """The ledger rows of these claimed triggers, by trigger_id (after a crash or a retry)."""
    cur = conn.cursor(row_factory=dict_row)
    found = cur.execute(
        """select ledger_id, trigger_id, state, variant, message_id, attempts from ops.send_ledger
           where (campaign, customer_id, trigger_id) in (
               select * from unnest(%b::text[], %b::bigint[], %b::text[]))""",
        (
            [r["campaign"] for r in rows],
            [r["customer_id"] for r in rows],
            [r["trigger_id"] for r in rows],
        ),
    ).fetchall()
    return {f["trigger_id"]: f for f in found}


def open_rows(conn: psycopg.Connection, entries: list[tuple]) -> dict[str, dict]:
    """The ledger rows of messages about to be rendered, by trigger_id: new ones
    'rendering', existing ones as they were (an in-doubt 'sending' row keeps its
    state until resent). `entries`: (campaign, customer_id, trigger_id, variant,
    template_version, email_hash, due_at)."""
    columns = [(c, cu, t, v, tv, message_id_for(c, cu, t), h, du) for c, cu, t, v, tv, h, du in entries]
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        """insert into ops.send_ledger (campaign, customer_id, trigger_id, state, variant, template_version,
               message_id, email_hash, due_at)
           select c, cu, t, 'rendering', v, tv, m, h, du
           from unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                       %b::timestamptz[]) as x(c, cu, t, v, tv, m, h, du)
           on conflict (campaign, customer_id, trigger_id) do update set
               state = case when ops.send_ledger.state in ('claimed', 'failed') then 'rendering'
                            else ops.send_ledger.state end,
               updated_at = now()
           returning ledger_id, trigger_id, state, message_id, attempts, created_at""",
        tuple(list(col) for col in zip(*columns, strict=True)),
    ).fetchall()
    return {lr["trigger_id"]: lr for lr in rows}


def mark_group(conn: psycopg.Connection, sending: list[int], sent: list[int]) -> None:
    """One statement: this group `sending` (durable before the relay sees it) and the
    lane's previous group, accepted by the relay, `sent`."""
    conn.execute(_MARK_GROUP, {"next": sending, "done": sent})


def fail(conn: psycopg.Connection, ledger_id: int, error: str, judged: bool = True) -> None:
    """`judged=False`: the relay never judged the message (an outage, or not handed
    over), so the attempt its `sending` mark counted is taken back."""
    conn.execute(
        """update ops.send_ledger set state = 'failed', last_error = %s, updated_at = now(),
               attempts = attempts - %s where ledger_id = %s""",
        (error, int(not judged), ledger_id),
    )
