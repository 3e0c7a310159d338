"""The send ledger (ops.send_ledger): one row per message, written before each step.

    rendering -> sending -> sent | failed

Rows are unique on (campaign, customer, trigger) and written on autocommit
connections, apart from the batch's transaction, so their state survives a
crash (campaigns.engine explains the recovery): `sent` is not sent again,
`rendering`/`failed` (and `claimed`, written before migration 0008) had not
reached the relay, `sending` is in doubt and is resent with the same
Message-ID (message_id_for), which receivers and ESP APIs deduplicate.

Fencing: a batch's claim is its transaction's row locks, and that session can
die while its lanes send. Every claimed batch writes its own token on its
ledger rows (`open_rows`), and `mark_group` marks a group `sending` only while
the rows carry that token and the claiming session is alive: a lane whose
claim was lost marks nothing (ClaimLost) and stops, so at most the group it was
sending is resent by the next claimer.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row

from campaigns import config

IN_DOUBT = "sending"  # handed to the relay, its reply not recorded


class ClaimLost(RuntimeError):
    """The session holding a batch's claims died (or another claimer took its triggers):
    its lanes stopped, its outcomes cannot be written, its triggers are pending again."""


@dataclass(frozen=True)
class Claim:
    """Who holds a batch's triggers: its own token (on its ledger rows) and the session
    holding the row locks (a pid is reused, a pid with its backend_start is not)."""

    token: uuid.UUID
    pid: int
    started: datetime  # the claiming session's backend_start
    at: datetime  # the claim's transaction start: a consent withdrawn since stops a send

    @classmethod
    def of(cls, lock_conn: psycopg.Connection) -> Claim:
        """A new claim by the transaction open on `lock_conn`."""
        pid, started, at = lock_conn.execute(
            "select pid, backend_start, now() from pg_stat_get_activity(pg_backend_pid())"
        ).fetchone()
        return cls(uuid.uuid4(), pid, started, at)


# One statement a group: the lane's previous group (accepted by the relay) `sent`,
# whoever holds it now; this group `sending`, only the rows this claim still holds
# while its session lives. A row `sent` meanwhile stays so (not sent again); a row
# whose customer was suppressed, or withdrew consent, since the claim becomes
# `failed` instead (`withdrawn` says why). Rows missing from the result: claim lost.
# `held` is materialized: inlined, each use of `withdrawn` ran its look-ups again.
_MARK_GROUP = """
    with done as (
        update ops.send_ledger set state = 'sent', sent_at = now(), last_error = null, updated_at = now()
        where ledger_id = any(%(done)s::bigint[])
    ), held as materialized (
        select l.ledger_id, l.state = 'sent' as was_sent,
               coalesce((select s.reason from ops.suppressions s where s.email_hash = l.email_hash),
                        case when exists (select from ops.consent c where c.customer_id = l.customer_id
                                              and c.recorded_at >= %(at)s and not c.granted)
                                  or exists (select from ops.consent c where c.email_hash = l.email_hash
                                                 and c.recorded_at >= %(at)s and not c.granted)
                             then 'no_consent' end) as withdrawn
        from ops.send_ledger l
        where l.ledger_id = any(%(next)s::bigint[]) and l.claim_token = %(token)s
          and exists (select from pg_stat_get_activity(%(pid)s) a where a.backend_start = %(started)s)
    )
    update ops.send_ledger l set
        state = case when h.was_sent then 'sent' when h.withdrawn is not null then 'failed' else 'sending' end,
        last_error = case when h.withdrawn is not null and not h.was_sent
                          then 'not sent: ' || h.withdrawn || ' since the decision' else l.last_error end,
        attempts = l.attempts + (not h.was_sent and h.withdrawn is null)::int,
        sending_at = case when h.was_sent or h.withdrawn is not null then l.sending_at else now() end,
        updated_at = now()
    from held h
    where l.ledger_id = h.ledger_id and l.claim_token = %(token)s
    returning l.ledger_id, l.state, h.withdrawn
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


def open_rows(conn: psycopg.Connection, claim: Claim, entries: list[tuple]) -> dict[str, dict]:
    """The ledger rows of messages about to be rendered, by trigger_id, now carrying
    the claim's token: new ones 'rendering', existing ones as they were (an in-doubt
    'sending' row keeps its state until resent). `entries`: (campaign, customer_id,
    trigger_id, variant, template_version, email_hash, due_at)."""
    columns = [(c, cu, t, v, tv, message_id_for(c, cu, t), h, du) for c, cu, t, v, tv, h, du in entries]
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        """insert into ops.send_ledger (campaign, customer_id, trigger_id, state, variant, template_version,
               message_id, email_hash, due_at, claim_token)
           select c, cu, t, 'rendering', v, tv, m, h, du, %b
           from unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                       %b::timestamptz[]) as x(c, cu, t, v, tv, m, h, du)
           on conflict (campaign, customer_id, trigger_id) do update set
               state = case when ops.send_ledger.state in ('claimed', 'failed') then 'rendering'
                            else ops.send_ledger.state end,
               claim_token = excluded.claim_token,
               updated_at = now()
           returning ledger_id, trigger_id, state, message_id, attempts, created_at""",
        (claim.token, *(list(col) for col in zip(*columns, strict=True))),
    ).fetchall()
    return {lr["trigger_id"]: lr for lr in rows}


def mark_group(
    conn: psycopg.Connection, claim: Claim, sending: list[int], sent: list[int]
) -> dict[int, tuple[str, str | None]]:
    """One statement: the lane's previous group, accepted by the relay, `sent`, and this
    group `sending` (durable before the relay sees it). Returns, per row of this group
    the claim still holds, its state and why it was withdrawn: `sending` (send it),
    `sent` (sent already, not again) or `failed` (suppressed, unsubscribed or consent
    withdrawn since the claim: the suppression's reason or 'no_consent'). A row
    missing from it was not marked: the claim is lost."""
    rows = conn.execute(
        _MARK_GROUP,
        {
            "next": sending,
            "done": sent,
            "token": claim.token,
            "pid": claim.pid,
            "started": claim.started,
            "at": claim.at,
        },
    ).fetchall()
    return {ledger_id: (state, withdrawn) for ledger_id, state, withdrawn in rows}


def fail(
    conn: psycopg.Connection,
    ledger_id: int,
    error: str,
    judged: bool = True,
    claim: Claim | None = None,
) -> None:
    """`judged=False`: the relay never judged the message (an outage, or not handed
    over), so the attempt its `sending` mark counted is taken back. With `claim`, only
    while the row carries its token: a lane whose claim was lost leaves alone a row
    another claimer may have sent since."""
    conn.execute(
        """update ops.send_ledger set state = 'failed', last_error = %s, updated_at = now(),
               attempts = attempts - %s
           where ledger_id = %s and (%s::uuid is null or claim_token = %s::uuid)""",
        (error, int(not judged), ledger_id, claim and claim.token, claim and claim.token),
    )
