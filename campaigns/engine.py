"""Process due triggers exactly once: claim, decide, assign, render, deliver, record.

The parts, each in its module:

- campaigns.batch: claim a batch of due triggers in a transaction that holds
  their row locks and their customers' advisory locks, and decide each;
- campaigns.messages: the batch's ledger rows and the messages' bytes;
- campaigns.lanes: sender lanes delivering a batch's messages;
- campaigns.outcomes: the batch's results written, then its transaction committed;
- campaigns.ledger: the send ledger's statements.

This module pipelines them (`Engine.run`) and scores the batch's customers at
send time. The send ledger is written on autocommit connections *before* each
step, so its state survives a crash:

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
A relay outage (deliver.RelayError: a refused login or sender, TLS that does
not verify, no connection) is nobody's message failing: the batch's messages
stay due, their attempts uncounted, retried after as long as they have waited
since their first try (30 s to 1 h), with one ERROR line in the log.

A batch whose claim is lost while its lanes send (its session killed, timed
out, or the server restarted) stops: the ledger's fence (campaigns.ledger)
lets its lanes mark nothing more, the run ends with ledger.ClaimLost, and
whoever claims the triggers next decides them again. A trigger whose payload
or profile cannot be decided or rendered is set aside (campaigns.batch) and
counted in RunStats.dead_letters; the rest of its batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from campaigns import deliver, outcomes
from campaigns.batch import Batch, Claimer
from campaigns.lanes import Lanes, Result
from campaigns.ledger import ClaimLost
from campaigns.messages import Messages
from campaigns.schema import Campaign, Policy, load_campaigns, load_policy
from warehouse import settings

log = logging.getLogger(__name__)

FIRST_BATCH = 100  # triggers claimed by a run's first batch (then batch_size)


class DeliveryUnavailable(RuntimeError):
    """The relay kept failing, or refused us (an outage): the rest of the batch was rescheduled."""


@dataclass
class RunStats:
    batches: int = 0
    claimed: int = 0
    sent: int = 0
    resent_in_doubt: int = 0
    dead_letters: int = 0  # triggers set aside (ops.dead_letters, stage 'engine')
    outcomes: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, batch: Batch, results: list[Result]) -> None:
        """A finished batch's counts."""
        self.claimed += batch.claimed
        self.sent += sum(res.outcome == "sent" for res in results)
        self.resent_in_doubt += sum(res.in_doubt for res in results)
        self.dead_letters += len(batch.dead_letters)
        self.outcomes.update(row[3] for row in batch.decisions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "claimed": self.claimed,
            "sent": self.sent,
            "resent_in_doubt": self.resent_in_doubt,
            "dead_letters": self.dead_letters,
            "outcomes": dict(self.outcomes),
            "seconds": round(self.seconds, 3),
        }


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
        self.clock = clock
        self.claimer = Claimer(
            self.campaigns, self.policy, realtime_scores=self._realtime_scores, shard=shard, shards=shards
        )
        self.messages = Messages(self.campaigns, self.policy)
        self._lanes: Lanes | None = None
        self._lock_conns: list[psycopg.Connection] | None = None
        self._conn: psycopg.Connection | None = None

    # -- connections: kept across run() calls until close() -------------------------------
    def open(self) -> Engine:
        if self._lanes is not None:
            return self
        try:
            self._lanes = Lanes(
                self.url, self.senders, self.adapter_factory, self.messages, self.ledger_group
            )
            # two batch transactions: one delivering, the next one being claimed
            self._lock_conns = [psycopg.connect(self.url) for _ in range(2)]
            self._conn = psycopg.connect(self.url, autocommit=True)
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._lanes is not None:
            self._lanes.close()
        for c in [*(self._lock_conns or []), self._conn]:
            if c is not None:
                c.close()
        self._lanes, self._lock_conns, self._conn = None, None, None

    def __enter__(self) -> Engine:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the loop -------------------------------------------------------------------------
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
        lanes = self._lanes
        try:
            turn = 0
            # a small first batch: the lanes start sooner, and the next batch is
            # claimed while they send it
            batch = self._prepare(self._lock_conns[turn], limit=min(self.batch_size, FIRST_BATCH))
            if batch is not None:
                lanes.start(batch)
            while batch is not None:
                stats.batches += 1
                more = not (max_batches and stats.batches >= max_batches) and not (
                    max_seconds and time.monotonic() - started > max_seconds
                )
                turn ^= 1
                following = self._prepare(self._lock_conns[turn]) if more else None
                results, failure = lanes.delivered(batch)
                if following is not None and failure is None:
                    lanes.start(following)  # the lanes go on while this batch is written
                elif following is not None:
                    following.lock_conn.rollback()  # relay down: its triggers are pending again
                    following = None
                if isinstance(failure, ClaimLost):
                    raise failure
                self._finish(batch, results)
                stats.add(batch, results)
                if failure is not None:
                    if isinstance(failure, deliver.RelayError):
                        waiting = sum(res.outcome == "relay" for res in results)
                        log.error(
                            "relay outage: %s; %d messages stay due, retried with backoff", failure, waiting
                        )
                    raise DeliveryUnavailable(str(failure)) from failure
                batch = following
        except BaseException as exc:
            if isinstance(exc, ClaimLost):
                log.error("%s", exc)
            self.close()  # connections in an unknown state: the next run opens fresh ones
            raise
        finally:
            if opened_here:
                self.close()
            stats.seconds = time.monotonic() - started
        return stats

    def _finish(self, batch: Batch, results: list) -> None:
        """The batch's outcomes written and committed; ClaimLost if its session died after
        its lanes' last mark (its triggers are pending again, the ledger has the sends)."""
        try:
            outcomes.finish(batch, results, self.policy.max_send_attempts)
        except psycopg.OperationalError as exc:
            if not batch.lock_conn.broken:
                raise
            raise ClaimLost(f"claim lost before its outcomes were written: {exc}") from exc

    def _prepare(self, lock_conn: psycopg.Connection, limit: int | None = None) -> Batch | None:
        """Claim and decide a batch (campaigns.batch), then write the ledger rows of its
        messages and fetch what their rendering shares; None when nothing is due."""
        batch = self.claimer.claim(lock_conn, self._conn, self.clock(), limit or self.batch_size)
        if batch is not None and batch.to_send:
            self.messages.prepare(self._conn, batch)
        return batch

    # -- send-time scores -----------------------------------------------------------------
    @staticmethod
    def _realtime_scores(conn: psycopg.Connection, ids: list[int], now: datetime) -> dict[int, dict]:
        """The batch's customers scored now by the champion models, or {} (then the batch scores of
        ml.customer_segments stand in). ml.realtime.scores never raises nor waits for the models.
        Audiences keep the labels of ml.customer_segments (the segments the CRM and the campaigns
        were written for); the send-time scores and their model versions go into the decision log."""
        from ml import realtime

        return realtime.scores(conn, ids, now)


def next_due(conn: psycopg.Connection) -> datetime | None:
    return conn.execute("select min(due_at) from ops.campaign_triggers where status = 'pending'").fetchone()[
        0
    ]
