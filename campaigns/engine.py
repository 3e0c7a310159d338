"""Process due triggers exactly once: claim, decide, assign, render, deliver, record.

A batch is one transaction on `lock_conn` that holds the row locks of the
claimed ops.campaign_triggers rows (FOR UPDATE SKIP LOCKED) and advisory locks
on their customers (so frequency caps hold with several workers). Decisions,
assignments and trigger updates commit with it. The send ledger is written on a
second, autocommit connection *before* each step, so its state survives a crash:

    rendering -> sending -> sent | failed

If the worker dies mid-batch its transaction rolls back, the triggers are
pending again, and the next worker finds the ledger rows: `sent` rows are not
sent again; `rendering`/`failed` rows (and `claimed`, written by versions
before migration 0008) had not reached the relay and
are sent; `sending` rows are in doubt (the process died between handing the
message to the relay and recording the reply) and are resent with the same
Message-ID, which receivers and ESP APIs (idempotency key) deduplicate. A
transient SMTP failure after the adapter's own retries leaves the ledger row
`failed` and the trigger rescheduled with backoff, until `max_send_attempts`.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from campaigns import config, content, deliver, render
from campaigns.eligibility import CustomerFacts, Decision, decide, email_hash_of
from campaigns.schema import Campaign, EventTrigger, Policy, load_campaigns, load_policy
from campaigns.timers import render_payload
from campaigns.unsubscribe import TokenSigner, unsubscribe_url
from warehouse import settings

log = logging.getLogger(__name__)

FIRST_BATCH = 100  # triggers claimed by a run's first batch (then batch_size)
CUSTOMER_LOCK_NS = 0x5CA1AB1E  # xor'ed into customer ids for pg_try_advisory_xact_lock


class DeliveryUnavailable(RuntimeError):
    """The relay kept failing: the rest of the batch was rescheduled."""


def message_id_for(campaign: str, customer_id: int, trigger_id: str) -> str:
    digest = hashlib.sha256(f"{campaign}|{customer_id}|{trigger_id}".encode()).hexdigest()[:32]
    return f"<{digest}@{config.mail_domain()}>"


@dataclass
class RunStats:
    batches: int = 0
    claimed: int = 0
    sent: int = 0
    resent_in_doubt: int = 0
    outcomes: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "claimed": self.claimed,
            "sent": self.sent,
            "resent_in_doubt": self.resent_in_doubt,
            "outcomes": dict(self.outcomes),
            "seconds": round(self.seconds, 3),
        }


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

_CLAIM = """
    select trigger_id, campaign, customer_id, trigger_key, priority, first_activity_at, last_activity_at,
           original_due_at, due_at, expires_at, payload, attempts
    from ops.campaign_triggers
    where status = 'pending' and due_at <= %(now)s {shard}
    order by due_at
    limit %(limit)s
    for update skip locked
"""


@dataclass
class _Sender:
    """One delivery lane: an SMTP connection reused across batches, and its ledger connection."""

    conn: psycopg.Connection
    adapter: deliver.DeliveryAdapter

    def close(self) -> None:
        try:
            self.adapter.close()
        finally:
            self.conn.close()


@dataclass
class _Batch:
    """A claimed batch. Its transaction on `lock_conn` holds the triggers' row locks and
    the customers' advisory locks until its outcomes are written and committed."""

    lock_conn: psycopg.Connection
    now: datetime
    claimed: int
    facts: dict[int, CustomerFacts]
    updates: list[tuple] = field(default_factory=list)  # (status, due_at, outcome, attempts, trigger_id)
    decisions: list[tuple] = field(default_factory=list)  # decision_log rows
    assignments: list[tuple] = field(default_factory=list)
    work: list[tuple] = field(default_factory=list)  # (row, decision, payload, ledger row, profile)
    shared: dict[str, Any] = field(default_factory=dict)
    sending: list = field(default_factory=list)  # per lane: its (results, failure) or their Future


class Engine:
    def __init__(
        self,
        *,
        url: str | None = None,
        campaigns: dict[str, Campaign] | None = None,
        policy: Policy | None = None,
        adapter_factory: Callable[[], deliver.DeliveryAdapter] | None = None,
        batch_size: int = 500,
        senders: int = 3,
        ledger_group: int = 16,
        shard: int = 0,
        shards: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.url = url or settings.warehouse_url()
        self.campaigns = campaigns if campaigns is not None else load_campaigns()
        self.policy = policy or load_policy()
        self.adapter_factory = adapter_factory or (lambda: deliver.SmtpAdapter())
        self.batch_size = batch_size
        self.senders = max(1, senders)
        self.ledger_group = max(1, ledger_group)
        self._from_address = _address(self.policy.sender.from_)
        self._pool: ThreadPoolExecutor | None = None
        self._lanes: list[_Sender] | None = None
        self._lock_conns: list[psycopg.Connection] | None = None
        self._conn: psycopg.Connection | None = None
        self.shard, self.shards = shard, shards
        self.clock = clock
        self.renderer = render.Renderer(self.campaigns)
        self.signer = TokenSigner()
        self.cancel_events = sorted(
            {"Order Completed"}
            | {
                e
                for c in self.campaigns.values()
                if isinstance(c.trigger, EventTrigger)
                for e in c.trigger.cancel_on
            }
        )
        self._scoring_checked_at: float | None = None
        self._scoring_is_live = False
        self.cap_window = max((cap.per for cap in self.policy.frequency_caps), default=timedelta(0))

    # -- the loop ---------------------------------------------------------------------------
    def open(self) -> Engine:
        """Open the connections (kept across run() calls until close())."""
        if self._lanes is not None:
            return self
        self._pool = (
            ThreadPoolExecutor(self.senders, thread_name_prefix="sender") if self.senders > 1 else None
        )
        self._lanes = []
        try:
            for _ in range(self.senders):
                self._lanes.append(
                    _Sender(psycopg.connect(self.url, autocommit=True), self.adapter_factory())
                )
            # two batch transactions: one delivering, the next one being claimed
            self._lock_conns = [psycopg.connect(self.url) for _ in range(2)]
            self._conn = psycopg.connect(self.url, autocommit=True)
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        for lane in self._lanes or []:
            lane.close()
        for c in [*(self._lock_conns or []), self._conn]:
            if c is not None:
                c.close()
        if self._pool is not None:
            self._pool.shutdown()
        self._lanes, self._lock_conns, self._conn, self._pool = None, None, None, None

    def __enter__(self) -> Engine:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, *, max_seconds: float | None = None, max_batches: int | None = None) -> RunStats:
        """Process due triggers until none is due (or a limit is reached).

        Pipelined: while the lanes deliver one batch, the next one is claimed and
        decided in the other transaction, so the relay does not wait for it. The
        customers' advisory locks keep the two batches apart, as they keep shards
        apart."""
        stats = RunStats()
        started = time.monotonic()
        opened_here = self._lanes is None
        self.open()
        try:
            turn = 0
            # a small first batch: the lanes start sooner, and the next batch is
            # claimed while they send it
            batch = self._prepare(self._lock_conns[turn], limit=min(self.batch_size, FIRST_BATCH))
            if batch is not None:
                self._start_sending(batch)
            while batch is not None:
                stats.batches += 1
                more = not (max_batches and stats.batches >= max_batches) and not (
                    max_seconds and time.monotonic() - started > max_seconds
                )
                turn ^= 1
                following = self._prepare(self._lock_conns[turn]) if more else None
                results, failure = self._delivered(batch)
                if following is not None and failure is None:
                    self._start_sending(following)  # the lanes go on while this batch is written
                elif following is not None:
                    following.lock_conn.rollback()  # relay down: its triggers are pending again
                    following = None
                self._finish(batch, results, stats)
                if failure is not None:
                    raise DeliveryUnavailable(str(failure)) from failure
                batch = following
        except BaseException:
            self.close()  # connections in an unknown state: the next run opens fresh ones
            raise
        finally:
            if opened_here:
                self.close()
            stats.seconds = time.monotonic() - started
        return stats

    def _claim(self, lock_conn: psycopg.Connection, now: datetime, limit: int) -> list[dict]:
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

    def _facts(self, conn: psycopg.Connection, rows: list[dict], now: datetime) -> dict[int, CustomerFacts]:
        ids = sorted({r["customer_id"] for r in rows})
        profiles = content.profiles(conn, ids)
        hashes = {cid: email_hash_of(p) for cid, p in profiles.items()}
        supp = content.suppressed(conn, [h for h in hashes.values() if h])
        consent = content.consent_overrides(conn, ids, [h for h in hashes.values() if h])
        sends = content.recent_sends(conn, ids, now - self.cap_window) if self.cap_window else {}
        since = min(r["first_activity_at"] for r in rows)
        events: dict[int, dict[str, datetime]] = {}
        for uid, event, at in conn.execute(
            """select user_id, event, max(occurred_at) from raw.events
               where user_id = any(%s) and event = any(%s) and occurred_at >= %s group by user_id, event""",
            ([str(i) for i in ids], self.cancel_events, since),
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
        realtime = self._realtime_scores(conn, ids, now)
        facts = {}
        for cid in ids:
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
        return facts

    def _realtime_scores(self, conn: psycopg.Connection, ids: list[int], now: datetime) -> dict[int, dict]:
        """The batch's customers scored now by the champion models, or {} (then the batch scores of
        ml.customer_segments stand in). ml.realtime.scores never raises nor waits for the models.
        Audiences keep the labels of ml.customer_segments (the segments the CRM and the campaigns
        were written for); the send-time scores and their model versions go into the decision log."""
        from ml import realtime

        return realtime.scores(conn, ids, now)

    def _prepare(self, lock_conn: psycopg.Connection, limit: int | None = None) -> _Batch | None:
        """Claim up to `limit` (batch_size) due triggers in a new transaction on `lock_conn`,
        decide each, and write the ledger rows of those to send; None (transaction
        ended) when nothing is due."""
        now = self.clock()
        rows = self._claim(lock_conn, now, limit or self.batch_size)
        if not rows:
            lock_conn.rollback()
            return None
        conn = self._conn
        rows.sort(key=lambda r: (-r["priority"], r["due_at"]))
        ledger = self._existing_ledger(conn, rows)
        facts = self._facts(conn, rows, now)
        batch = _Batch(lock_conn, now, len(rows), facts)
        to_send: list[tuple[dict, Decision, dict]] = []
        for r in rows:
            campaign = self.campaigns.get(r["campaign"])
            if campaign is None:
                d = Decision("cancelled", detail={"reason": "campaign not defined or disabled"})
            else:
                payload = render_payload(r["payload"] or {})
                existing = ledger.get(r["trigger_id"])
                if existing and existing["state"] == "sent":
                    d = Decision("sent", variant=existing["variant"], detail={"recovered": True})
                elif existing and existing["state"] in ("sending", "claimed", "rendering", "failed"):
                    # already eligible once: only a new suppression stops it now
                    f = facts[r["customer_id"]]
                    if f.suppression or not f.profile or not f.profile.get("email"):
                        d = decide(r, campaign, self.policy, f, now, payload)
                        self._fail_ledger(conn, existing["ledger_id"], f"not sent: {d.outcome}")
                    else:
                        d = Decision("sent", send=True, variant=existing["variant"])
                        if existing["state"] == "sending":
                            d.detail["in_doubt_resend"] = True
                else:
                    d = decide(r, campaign, self.policy, facts[r["customer_id"]], now, payload)
                if d.send:
                    f = facts[r["customer_id"]]
                    f.recent_sends.append((now, r["trigger_id"]))  # caps within the batch
                    to_send.append((r, d, payload))
                    if d.bucket is not None:
                        batch.assignments.append(
                            (campaign.name, r["customer_id"], campaign.experiment, d.variant, d.bucket)
                        )
                    continue
                if d.variant == "holdout":
                    batch.assignments.append(
                        (campaign.name, r["customer_id"], campaign.experiment, d.variant, d.bucket)
                    )
            self._record(r, d, batch)
        if to_send:
            self._ledger_and_content(batch, to_send)
        return batch

    def _start_sending(self, batch: _Batch) -> None:
        """Hand the batch's messages to the lanes (one SMTP connection and one ledger
        connection each), which take them a group at a time from one queue, so they
        finish the batch together; a few messages, or a single lane, are sent here
        and now."""
        lanes, work = self._lanes, batch.work
        if not work:
            return
        groups: queue.SimpleQueue = queue.SimpleQueue()
        for start in range(0, len(work), self.ledger_group):
            groups.put(work[start : start + self.ledger_group])
        if self._pool is None or len(work) < 2 * len(lanes):
            batch.sending = [self._send_groups(lanes[0], groups, batch.shared)]
            return
        batch.sending = [self._pool.submit(self._send_groups, lane, groups, batch.shared) for lane in lanes]

    @staticmethod
    def _delivered(batch: _Batch) -> tuple[list[tuple], Exception | None]:
        """Wait for the batch's lanes: every message's result, and the relay failure
        that stopped a lane, if any."""
        results: list[tuple] = []
        failure: Exception | None = None
        for lane in batch.sending:
            lane_results, lane_failure = lane.result() if isinstance(lane, Future) else lane
            results += lane_results
            failure = failure or lane_failure
        return results, failure

    def _finish(self, batch: _Batch, results: list[tuple], stats: RunStats) -> None:
        """Record every outcome and commit the batch's transaction."""
        for r, d, attempts, outcome, error, in_doubt in results:
            stats.resent_in_doubt += in_doubt
            if outcome == "sent":
                stats.sent += 1
                self._record(r, d, batch, attempts=attempts)
            elif outcome == "permanent":
                d2 = Decision("failed", variant=d.variant, detail={"error": error[:200], "permanent": True})
                self._record(r, d2, batch, attempts=attempts)
            else:
                self._retry_or_fail(r, d, attempts, error, batch)
        self._write(batch)
        batch.lock_conn.commit()
        stats.claimed += batch.claimed
        stats.outcomes.update(row[3] for row in batch.decisions)

    @staticmethod
    def _record(r: dict, d: Decision, batch: _Batch, attempts: int | None = None) -> None:
        attempts = attempts if attempts is not None else r["attempts"]
        if d.reschedule_to is not None:
            batch.updates.append(("pending", d.reschedule_to, None, attempts, r["trigger_id"]))
        else:
            status = "done" if d.outcome != "cancelled" else "cancelled"
            batch.updates.append((status, r["due_at"], d.outcome, attempts, r["trigger_id"]))
        batch.decisions.append(
            (r["campaign"], r["customer_id"], r["trigger_id"], d.outcome, d.variant, d.detail)
        )

    def _existing_ledger(self, conn: psycopg.Connection, rows: list[dict]) -> dict[str, dict]:
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

    @staticmethod
    def _fail_ledger(conn: psycopg.Connection, ledger_id: int, error: str) -> None:
        conn.execute(
            "update ops.send_ledger set state = 'failed', last_error = %s, updated_at = now() where ledger_id = %s",
            (error, ledger_id),
        )

    def _ledger_and_content(self, batch: _Batch, to_send: list[tuple[dict, Decision, dict]]) -> None:
        """The ledger rows of the messages to send, and what their rendering shares
        (catalogue, recommendations, bestsellers): `batch.work` and `batch.shared`."""
        conn, facts, now = self._conn, batch.facts, batch.now
        # 1. ledger rows, new ones 'rendering'; after a crash the existing ones
        #    (in-doubt 'sending' rows keep their state until resent)
        cur = conn.cursor(row_factory=dict_row)
        params = []
        for r, d, _ in to_send:
            profile = facts[r["customer_id"]].profile
            params.append(
                (
                    r["campaign"],
                    r["customer_id"],
                    r["trigger_id"],
                    d.variant,
                    self.renderer.template_version(r["campaign"]),
                    message_id_for(r["campaign"], r["customer_id"], r["trigger_id"]),
                    email_hash_of(profile),
                    r["due_at"],
                )
            )
        ledger_rows = cur.execute(
            """insert into ops.send_ledger (campaign, customer_id, trigger_id, state, variant, template_version,
                   message_id, email_hash, due_at)
               select c, cu, t, 'rendering', v, tv, m, h, du
               from unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                           %b::timestamptz[]) as x(c, cu, t, v, tv, m, h, du)
               on conflict (campaign, customer_id, trigger_id) do update set
                   state = case when ops.send_ledger.state in ('claimed', 'failed') then 'rendering'
                                else ops.send_ledger.state end,
                   updated_at = now()
               returning ledger_id, trigger_id, state, message_id, attempts""",
            tuple(list(col) for col in zip(*params, strict=True)),
        ).fetchall()
        by_trigger = {lr["trigger_id"]: lr for lr in ledger_rows}
        recs_by_customer = content.recommendations(conn, sorted({r["customer_id"] for r, _, _ in to_send}))
        fallback_recs = content.bestsellers(conn) if len(recs_by_customer) < len(to_send) else []
        product_ids = sorted(
            {
                int(i["product_id"])
                for _, _, p in to_send
                for i in (p.get("items") or []) + (p.get("viewed") or [])
                if str(i.get("product_id") or "").isdigit()
            }
        )
        shop = config.shop_url()
        shared = {
            "catalogue": content.products(conn, product_ids),
            # converted once per batch, not per recipient
            "recs": {
                c: render.as_obj([render.product_view(p, shop) for p in ps])
                for c, ps in recs_by_customer.items()
            },
            "fallback_recs": render.as_obj([render.product_view(p, shop) for p in fallback_recs]),
            "issued": int(now.timestamp()),
            "public_url": config.public_url(),
            "mailto": f"mailto:unsubscribe@{config.mail_domain()}?subject=unsubscribe",
        }
        batch.shared = shared
        batch.work = [
            (r, d, payload, by_trigger[r["trigger_id"]], facts[r["customer_id"]].profile)
            for r, d, payload in to_send
        ]

    def _send_groups(
        self, sender: _Sender, groups: queue.SimpleQueue, shared: dict
    ) -> tuple[list, Exception | None]:
        """Runs in a sender thread: its own SMTP adapter and autocommit ledger connection.

        Messages go in groups of `ledger_group`: the group is rendered, then one
        statement marks the previous group's accepted messages `sent` and this
        group `sending`, then its messages are handed to the relay. A crash leaves
        at most one group per lane in doubt (resent with the same Message-IDs)."""
        conn, adapter = sender.conn, sender.adapter
        out: list[tuple] = []
        failure: Exception | None = None
        accepted: list[int] = []  # accepted by the relay, 'sent' not yet written
        while True:
            try:
                items = groups.get_nowait()
            except queue.Empty:
                break
            group = []
            for r, d, payload, lr, profile in items:
                attempts = lr["attempts"] + 1
                if failure is not None:  # relay down: reschedule the rest
                    out.append((r, d, attempts - 1, "transient", str(failure), 0))
                    continue
                try:
                    data = self._message(r, d, payload, lr, profile, shared)
                except deliver.PermanentDeliveryError as exc:
                    self._fail_ledger(conn, lr["ledger_id"], str(exc)[:500])
                    out.append((r, d, attempts - 1, "permanent", str(exc), 0))
                    continue
                group.append((r, d, lr, profile, data, attempts))
            if not group:
                continue
            # 'sending' is durable before the relay sees the group; the previous
            # group's 'sent' rides along in the same statement (one round trip)
            conn.execute(_MARK_GROUP, {"next": [g[2]["ledger_id"] for g in group], "done": accepted})
            accepted = []
            # pipelined: one round trip a message (deliver.SmtpAdapter.send_many)
            results = deliver.send_group(
                adapter,
                [
                    deliver.OutgoingMessage(lr["message_id"], self._from_address, profile["email"], data)
                    for _, _, lr, profile, data, _ in group
                ],
            )
            for (r, d, lr, _profile, _data, attempts), error in zip(group, results, strict=True):
                in_doubt = int(lr["state"] == "sending")
                if error is None:
                    accepted.append(lr["ledger_id"])
                    out.append((r, d, attempts, "sent", None, in_doubt))
                    continue
                self._fail_ledger(conn, lr["ledger_id"], str(error)[:500])
                if isinstance(error, deliver.NotAttempted):
                    out.append((r, d, attempts - 1, "transient", str(error), 0))
                elif isinstance(error, deliver.PermanentDeliveryError):
                    out.append((r, d, attempts, "permanent", str(error), in_doubt))
                else:
                    out.append((r, d, attempts, "transient", str(error), in_doubt))
                    failure = failure or error
        if accepted:
            conn.execute(_MARK_GROUP, {"next": [], "done": accepted})
        return out, failure

    def _message(self, r: dict, d: Decision, payload: dict, lr: dict, profile: dict, shared: dict) -> bytes:
        campaign = self.campaigns[r["campaign"]]
        policy_sender = self.policy.sender
        token = self.signer.sign(r["customer_id"], email_hash_of(profile), campaign.name, shared["issued"])
        unsub = unsubscribe_url(token, shared["public_url"])
        recs = shared["recs"].get(r["customer_id"])
        ctx = render.make_context(
            campaign=campaign,
            customer=profile,
            payload=payload,
            products=shared["catalogue"],
            recommendations=recs or shared["fallback_recs"],
            recommendations_are_fallback=not recs,
            unsubscribe_url=unsub,
        )
        email = self.renderer.render(campaign.name, d.variant, ctx)
        return deliver.build_message(
            sender=policy_sender.from_,
            recipient=profile["email"],
            reply_to=policy_sender.reply_to,
            message_id=lr["message_id"],
            subject=email.subject,
            html=email.html,
            text=email.text,
            list_unsubscribe_url=unsub,
            list_unsubscribe_mailto=shared["mailto"],
            headers={
                "X-Emailp-Campaign": campaign.name,
                "X-Emailp-Variant": d.variant,
                "Feedback-ID": f"{d.variant}:{campaign.name}:emailp",
            },
        )

    def _retry_or_fail(self, r, d, attempts, error, batch: _Batch) -> None:
        if attempts < self.policy.max_send_attempts:
            backoff = timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))
            d2 = Decision(
                "retry",
                variant=d.variant,
                reschedule_to=batch.now + backoff,
                detail={"error": (error or "")[:200], "attempts": attempts},
            )
        else:
            d2 = Decision(
                "failed", variant=d.variant, detail={"error": (error or "")[:200], "attempts": attempts}
            )
        self._record(r, d2, batch, attempts=attempts)

    @staticmethod
    def _write(batch: _Batch) -> None:
        """The batch's trigger updates, decisions and assignments: one statement each (unnest).

        Every decision row carries the customer's score and the model versions
        behind it (`detail.score`), so each send is traceable to a model version."""

        def cols(rows: list[tuple]) -> tuple[list, ...]:
            return tuple(list(c) for c in zip(*rows, strict=True))

        lock_conn, updates, assignments = batch.lock_conn, batch.updates, batch.assignments
        decisions = [
            (*row[:5], Jsonb(_with_score(row[5], batch.facts.get(row[1])))) for row in batch.decisions
        ]

        if updates:
            lock_conn.execute(
                """update ops.campaign_triggers t set status = u.status, due_at = u.due_at, outcome = u.outcome,
                       attempts = u.attempts, updated_at = now()
                   from unnest(%b::text[], %b::timestamptz[], %b::text[], %b::int[], %b::text[])
                       as u(status, due_at, outcome, attempts, trigger_id)
                   where t.trigger_id = u.trigger_id""",
                cols(updates),
            )
        if decisions:
            lock_conn.execute(
                """insert into ops.decision_log (campaign, customer_id, trigger_id, outcome, variant, detail)
                   select * from unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::jsonb[])""",
                cols(decisions),
            )
        if assignments:
            lock_conn.execute(
                """insert into ops.experiment_assignments (campaign, customer_id, experiment, variant, bucket)
                   select * from unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::float8[])
                   on conflict do nothing""",
                cols(assignments),
            )


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


def _with_score(detail: dict, facts: CustomerFacts | None) -> dict:
    if facts is None or facts.score is None or "score" in detail:
        return detail
    return {**detail, "score": facts.score}


def _address(header_value: str) -> str:
    from email.utils import parseaddr

    return parseaddr(header_value)[1]


def next_due(conn: psycopg.Connection) -> datetime | None:
    return conn.execute("select min(due_at) from ops.campaign_triggers where status = 'pending'").fetchone()[
        0
    ]
