"""Claim a batch of due triggers and decide each one.

A batch is one transaction on its `lock_conn`: the claimed ops.campaign_triggers
rows stay locked (FOR UPDATE SKIP LOCKED), and so do advisory locks on their
customers, so frequency caps hold with several workers and shards. The facts
every decision needs (profiles, suppressions, consent, recent sends, events and
orders since the trigger, segments, scores) are fetched in bulk, once per batch;
the decisions themselves are pure (campaigns.eligibility). What the batch
decided is kept on it (`record`) until its outcomes are written and committed
(campaigns.outcomes).

One bad trigger never stops the others: a trigger whose payload or profile
makes reading, deciding or (in its lane) rendering it raise is set aside
(`set_aside`): an ops.dead_letters row (stage 'engine', its trigger_id, the
error), the trigger done with a `failed` decision (`detail.dead_letter`),
written with the batch's other outcomes. A database error is the batch's, not
a row's: it fails the batch as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from campaigns import content, deliver, ledger, timers
from campaigns.eligibility import NOT_MAILABLE, CustomerFacts, Decision, decide, email_hash_of
from campaigns.schema import Campaign, EventTrigger, Policy

CUSTOMER_LOCK_NS = 0x5CA1AB1E  # xor'ed into customer ids for pg_try_advisory_xact_lock
DEAD_LETTER_STAGE = "engine"  # ops.dead_letters.stage of the triggers the engine set aside

_CLAIM = """
    select trigger_id, campaign, customer_id, trigger_key, priority, first_activity_at, last_activity_at,
           original_due_at, due_at, expires_at, payload, attempts
    from ops.campaign_triggers
    where status = 'pending' and due_at <= %(now)s {shard}
      and ops.customer_id_hash(customer_id) not in (select customer_id_hash from ops.erased_customers)
    order by due_at
    limit %(limit)s
    for update skip locked
"""


@dataclass
class Batch:
    """A claimed batch. Its transaction on `lock_conn` holds the triggers' row locks and
    the customers' advisory locks until its outcomes are written and committed."""

    lock_conn: psycopg.Connection
    claim: ledger.Claim
    now: datetime
    claimed: int
    facts: dict[int, CustomerFacts] = field(default_factory=dict)
    catalogue: dict[int, dict] = field(default_factory=dict)  # the products the payloads name
    updates: list[tuple] = field(default_factory=list)  # (status, due_at, outcome, attempts, trigger_id)
    decisions: list[tuple] = field(default_factory=list)  # decision_log rows
    assignments: list[tuple] = field(default_factory=list)
    to_send: list[tuple] = field(default_factory=list)  # (row, decision, payload)
    work: list[tuple] = field(default_factory=list)  # (row, decision, payload, ledger row, profile)
    shared: dict[str, Any] = field(default_factory=dict)
    sending: list = field(default_factory=list)  # per lane: its (results, failure) or their Future
    stop: threading.Event = field(default_factory=threading.Event)  # set: the lanes take no more groups
    dead_letters: list[tuple[str, str]] = field(default_factory=list)  # (trigger_id, error)

    def record(self, r: dict, d: Decision, attempts: int | None = None) -> None:
        """The trigger's update and its decision-log row, written when the batch commits."""
        attempts = attempts if attempts is not None else r["attempts"]
        if d.reschedule_to is not None:
            self.updates.append(("pending", d.reschedule_to, None, attempts, r["trigger_id"]))
        else:
            status = "done" if d.outcome != "cancelled" else "cancelled"
            self.updates.append((status, r["due_at"], d.outcome, attempts, r["trigger_id"]))
        self.decisions.append(
            (r["campaign"], r["customer_id"], r["trigger_id"], d.outcome, d.variant, d.detail)
        )

    def set_aside(self, r: dict, error: str, variant: str | None = None) -> None:
        """A trigger its payload or profile made fail: a dead letter, and done as `failed`."""
        self.dead_letters.append((r["trigger_id"], error))
        self.record(
            r, Decision("failed", variant=variant, detail={"dead_letter": True, "error": error[:200]})
        )


def fault(stage: str, exc: Exception) -> str:
    """What a trigger's content made fail, for its dead letter: never an address."""
    return f"{stage}: {type(exc).__name__}: {deliver.redact(str(exc))}"[:500]


class Claimer:
    """Claims due triggers (of one customer shard, when sharded) and decides each."""

    def __init__(
        self,
        campaigns: dict[str, Campaign],
        policy: Policy,
        *,
        realtime_scores: Callable[[psycopg.Connection, list[int], datetime], dict[int, dict]],
        shard: int = 0,
        shards: int = 1,
    ):
        self.campaigns = campaigns
        self.policy = policy
        self.realtime_scores = realtime_scores
        self.shard, self.shards = shard, shards
        self.cancel_events = sorted(
            {"Order Completed"}
            | {
                e
                for c in campaigns.values()
                if isinstance(c.trigger, EventTrigger)
                for e in c.trigger.cancel_on
            }
        )
        self.cap_window = max((cap.per for cap in policy.frequency_caps), default=timedelta(0))

    def claim(
        self, lock_conn: psycopg.Connection, conn: psycopg.Connection, now: datetime, limit: int
    ) -> Batch | None:
        """Claim up to `limit` due triggers in a new transaction on `lock_conn` and decide
        each (facts read on `conn`); None (transaction ended) when nothing is due. The
        messages to send are `to_send`; every other decision is recorded."""
        rows = self._locked_rows(lock_conn, now, limit)
        if not rows:
            lock_conn.rollback()
            return None
        rows.sort(key=lambda r: (-r["priority"], r["due_at"]))
        batch = Batch(lock_conn, ledger.Claim.of(lock_conn), now, len(rows))
        existing = ledger.existing(conn, rows)
        batch.facts, bad_profiles = self._facts(conn, rows, now)
        faults = {
            r["trigger_id"]: bad_profiles[r["customer_id"]] for r in rows if r["customer_id"] in bad_profiles
        }
        # what emails show about products is the catalogue's (timers.render_payload)
        batch.catalogue = content.products(conn, _product_ids(rows, faults))
        for r in rows:
            campaign = self.campaigns.get(r["campaign"])
            if campaign is None:
                batch.record(r, Decision("cancelled", detail={"reason": "campaign not defined or disabled"}))
                continue
            error = faults.get(r["trigger_id"])
            if error is None:
                try:
                    payload = timers.render_payload(r["payload"] or {}, batch.catalogue)
                    d = self._decide(conn, r, campaign, batch.facts[r["customer_id"]], now, payload, existing)
                except psycopg.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - a hostile payload or profile: set aside
                    error = fault("deciding", exc)
            if error is not None:
                batch.set_aside(r, error)
                continue
            if d.send:
                batch.facts[r["customer_id"]].recent_sends.append((now, r["trigger_id"]))  # caps in the batch
                batch.to_send.append((r, d, payload))
            if d.bucket is not None and (d.send or d.variant == "holdout"):
                batch.assignments.append(
                    (campaign.name, r["customer_id"], campaign.experiment, d.variant, d.bucket)
                )
            if not d.send:
                batch.record(r, d)
        return batch

    def _decide(
        self,
        conn: psycopg.Connection,
        r: dict,
        campaign: Campaign,
        f: CustomerFacts,
        now: datetime,
        payload: dict,
        existing: dict[str, dict],
    ) -> Decision:
        """The decision; a trigger with a ledger row (a retry, a relay outage, a crash, a
        lost claim) is decided again in full, not sent on the strength of the old
        decision. Only an in-doubt row (`sending`: the relay may have it) is resent
        whatever else changed, unless its customer may no longer be mailed."""
        found = existing.get(r["trigger_id"])
        if found and found["state"] == "sent":
            return Decision("sent", variant=found["variant"], detail={"recovered": True})
        d = decide(r, campaign, self.policy, f, now, payload)
        if found is None:
            return d
        if found["state"] == ledger.IN_DOUBT and d.outcome not in NOT_MAILABLE:
            return Decision("sent", send=True, variant=found["variant"], detail={"in_doubt_resend": True})
        if not d.send:
            ledger.fail(conn, found["ledger_id"], f"not sent: {d.outcome}")
        return d

    def _locked_rows(self, lock_conn: psycopg.Connection, now: datetime, limit: int) -> list[dict]:
        """Due triggers locked in this transaction, of customers no other batch holds."""
        shard = ""
        params: dict[str, Any] = {"now": now, "limit": limit}
        if self.shards > 1:
            shard = "and mod(abs(hashtextextended(customer_id::text, 0)), %(shards)s) = %(shard)s"
            params |= {"shards": self.shards, "shard": self.shard}
        cur = lock_conn.cursor(row_factory=dict_row)
        rows = cur.execute(_CLAIM.format(shard=shard), params).fetchall()
        if not rows:
            return []
        customers = sorted({r["customer_id"] for r in rows})
        locked = {
            c
            for (c,) in lock_conn.execute(
                "select c from unnest(%s::bigint[]) c where pg_try_advisory_xact_lock(c # %s::bigint)",
                (customers, CUSTOMER_LOCK_NS),
            )
        }
        return [r for r in rows if r["customer_id"] in locked]

    def _facts(
        self, conn: psycopg.Connection, rows: list[dict], now: datetime
    ) -> tuple[dict[int, CustomerFacts], dict[int, str]]:
        """The facts of the batch's customers, and the error of each customer whose profile
        cannot be read (an address that is not a string, from identify traits)."""
        ids = sorted({r["customer_id"] for r in rows})
        profiles = content.profiles(conn, ids)
        hashes: dict[int, str | None] = {}
        faults: dict[int, str] = {}
        for cid, p in profiles.items():
            try:
                hashes[cid] = email_hash_of(p)
            except Exception as exc:  # noqa: BLE001 - a hostile profile: its triggers are set aside
                faults[cid] = fault("reading the profile", exc)
        supp = content.suppressed(conn, [h for h in hashes.values() if h])
        consent = content.consent_overrides(conn, ids, [h for h in hashes.values() if h])
        sends = content.recent_sends(conn, ids, now - self.cap_window) if self.cap_window else {}
        since = min(r["first_activity_at"] for r in rows)
        events: dict[int, dict[str, datetime]] = {}
        # a purchase counts from signed webhooks only (timers.SIGNED_ONLY_EVENTS), and
        # no client timestamp beyond the ingest's window (year 10000 cannot be loaded)
        for uid, event, at in conn.execute(
            """select user_id, event, max(occurred_at) from raw.events
               where user_id = any(%s) and event = any(%s) and occurred_at >= %s and occurred_at <= %s
                 and (event <> all(%s) or starts_with(source, %s))
               group by user_id, event""",
            (
                [str(i) for i in ids],
                self.cancel_events,
                since,
                now + timers.EVENT_MAX_SKEW,
                sorted(timers.SIGNED_ONLY_EVENTS),
                timers.SIGNED_SOURCE_PREFIX,
            ),
        ):
            events.setdefault(int(uid), {})[event] = at
        orders = dict(
            conn.execute(
                "select customer_id, max(placed_at) from raw.shop_orders where customer_id = any(%s)"
                " and placed_at >= %s group by customer_id",
                (ids, since),
            ).fetchall()
        )
        segs = content.segments(conn, ids)
        realtime = self.realtime_scores(conn, ids, now)
        facts = {}
        for cid in ids:
            if cid in faults:
                continue
            h = hashes.get(cid)
            override = consent.get(cid)
            if h is not None and h in consent:
                override = consent[h] if override is None else (override and consent[h])
            facts[cid] = CustomerFacts(
                profile=profiles.get(cid),
                suppression=supp.get(h) if h else None,
                consent=override,
                recent_sends=sends.get(cid, []),
                last_event_at=events.get(cid, {}),
                last_order_at=orders.get(cid),
                segment_labels=content.segment_labels(segs.get(cid)),
                has_segment_data=bool(segs),
                score=_score_fact(realtime.get(cid), segs.get(cid)),
            )
        return facts, faults


def _product_ids(rows: list[dict], faults: dict[str, str]) -> list[int]:
    """The catalogue ids the rows' payloads name; a payload that cannot be read is a fault."""
    ids: set[int] = set()
    for r in rows:
        try:
            ids.update(timers.payload_product_ids([r["payload"] or {}]))
        except Exception as exc:  # noqa: BLE001 - a hostile payload: its trigger is set aside
            faults.setdefault(r["trigger_id"], fault("reading its payload", exc))
    return sorted(ids)


_SCORE_KEYS = ("vip_score", "churn_score", "vip_model_version", "churn_model_version", "scored_at")


def _score_fact(realtime: dict | None, batch: dict | None) -> dict[str, Any] | None:
    """The score a decision records: the send-time one, else the batch row's (with its versions)."""
    if realtime is not None:
        return {"source": "realtime", **{k: realtime.get(k) for k in _SCORE_KEYS}}
    if batch is not None and (batch.get("vip_score") is not None or batch.get("churn_score") is not None):
        out: dict[str, Any] = {"source": "batch", **{k: batch.get(k) for k in _SCORE_KEYS}}
        if isinstance(out["scored_at"], datetime):
            out["scored_at"] = out["scored_at"].isoformat()
        return out
    return None
