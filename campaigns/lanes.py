"""Sender lanes: each an SMTP connection reused across batches and its own autocommit
ledger connection, in a thread of its own.

The lanes take a batch's messages a ledger group (`ledger_group`, 16) at a time
from one queue, so they finish the batch together. For each group a lane
renders the messages, then one statement marks the previous group's accepted
messages `sent` and this group `sending`, then hands the group to the relay,
pipelined (one round trip a message, deliver.send_group). A crash leaves at
most one group per lane in doubt (resent with the same Message-IDs). When the
relay fails a message after the adapter's own retries, the lane reschedules the
rest of its messages and reports the failure.

The mark is fenced (campaigns.ledger): when it finds the batch's claim lost
(its session dead, or its triggers claimed by another batch), the lane sends
nothing more and every lane of the batch stops (`Batch.stop`); a message whose
customer was suppressed or withdrew consent since the claim is not sent; a
message whose rendering raises is set aside (a dead letter) and the group goes on.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import psycopg

from campaigns import deliver, ledger
from campaigns.batch import Batch, fault
from campaigns.eligibility import Decision
from campaigns.messages import Messages


class Result(NamedTuple):
    """What became of one message: `outcome` is sent, permanent, transient, relay (an
    outage: deliver.RelayError), withdrawn (not sent: `error` is the suppression's
    reason or 'no_consent', recorded since the claim) or poisoned (it could not be
    rendered: `error` says why); `attempts` counts relay attempts; `in_doubt` is 1
    for a resend of an in-doubt `sending` row."""

    row: dict
    decision: Decision
    attempts: int
    outcome: str
    error: str | None
    in_doubt: int


@dataclass
class _Lane:
    conn: psycopg.Connection
    adapter: deliver.DeliveryAdapter

    def close(self) -> None:
        try:
            self.adapter.close()
        finally:
            self.conn.close()


class Lanes:
    def __init__(
        self,
        url: str,
        count: int,
        adapter_factory: Callable[[], deliver.DeliveryAdapter],
        messages: Messages,
        ledger_group: int,
    ):
        self.messages = messages
        self.ledger_group = ledger_group
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="sender") if count > 1 else None
        self._lanes: list[_Lane] = []
        try:
            for _ in range(count):
                self._lanes.append(_Lane(psycopg.connect(url, autocommit=True), adapter_factory()))
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
        self._lanes = []
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def start(self, batch: Batch) -> None:
        """Hand the batch's messages to the lanes; a few messages, or a single lane, are
        sent here and now."""
        lanes, work = self._lanes, batch.work
        if not work:
            return
        groups: queue.SimpleQueue = queue.SimpleQueue()
        for start in range(0, len(work), self.ledger_group):
            groups.put(work[start : start + self.ledger_group])
        if self._pool is None or len(work) < 2 * len(lanes):
            batch.sending = [self._send_groups(lanes[0], groups, batch)]
            return
        batch.sending = [self._pool.submit(self._send_groups, lane, groups, batch) for lane in lanes]

    @staticmethod
    def delivered(batch: Batch) -> tuple[list[Result], Exception | None]:
        """Wait for every lane of the batch: every message's result, and what stopped a
        lane, if anything (ledger.ClaimLost first: then nothing can be recorded)."""
        results: list[Result] = []
        failures: list[Exception] = []
        raised: BaseException | None = None
        for lane in batch.sending:
            try:
                lane_results, lane_failure = lane.result() if isinstance(lane, Future) else lane
            except BaseException as exc:  # a lane's ledger connection failed: the others stop too
                batch.stop.set()
                raised = raised or exc
                continue
            results += lane_results
            failures += [lane_failure] if lane_failure is not None else []
        if raised is not None:
            raise raised
        lost = [f for f in failures if isinstance(f, ledger.ClaimLost)]
        return results, (lost or failures or [None])[0]

    def _send_groups(
        self, lane: _Lane, groups: queue.SimpleQueue, batch: Batch
    ) -> tuple[list[Result], Exception | None]:
        """Runs in a lane's thread: its groups until the queue is empty (or the batch stops)."""
        conn, adapter, build, claim = lane.conn, lane.adapter, self.messages.build, batch.claim
        out: list[Result] = []
        failure: Exception | None = None
        accepted: list[int] = []  # accepted by the relay, 'sent' not yet written
        while not batch.stop.is_set():
            try:
                items = groups.get_nowait()
            except queue.Empty:
                break
            group = []
            for r, d, payload, lr, profile in items:
                attempts = lr["attempts"] + 1
                if failure is not None:  # relay down: reschedule the rest
                    outcome = "relay" if isinstance(failure, deliver.RelayError) else "transient"
                    out.append(Result(r, d, attempts - 1, outcome, str(failure), 0))
                    continue
                try:
                    data = build(r, d, payload, lr, profile, batch.shared)
                except deliver.PermanentDeliveryError as exc:
                    ledger.fail(conn, lr["ledger_id"], str(exc)[:500], claim=claim)
                    out.append(Result(r, d, attempts - 1, "permanent", str(exc), 0))
                    continue
                except Exception as exc:  # noqa: BLE001 - a hostile value its rendering cannot take
                    error = fault("rendering", exc)
                    ledger.fail(conn, lr["ledger_id"], error, claim=claim)
                    out.append(Result(r, d, attempts - 1, "poisoned", error, 0))
                    continue
                group.append((r, d, lr, profile, data, attempts))
            if not group:
                continue
            # 'sending' is durable before the relay sees the group, and only while the
            # batch holds its claim; the previous group's 'sent' rides along (one round trip)
            marked = ledger.mark_group(conn, claim, sending=[g[2]["ledger_id"] for g in group], sent=accepted)
            accepted = []
            if len(marked) < len(group):
                batch.stop.set()
                failure = ledger.ClaimLost(
                    f"claim lost: {len(group) - len(marked)} of a group of {len(group)} no longer held"
                    f" by this batch (its session {claim.pid} died, or another batch claimed them);"
                    " its lanes stopped, its triggers are pending again"
                )
                break
            sendable = []
            for g in group:
                r, d, lr, _profile, _data, attempts = g
                state, withdrawn = marked[lr["ledger_id"]]
                if state == "sending":
                    sendable.append(g)
                elif state == "sent":  # accepted before, for a claim lost since: not again
                    out.append(Result(r, d, attempts - 1, "sent", None, 0))
                else:
                    out.append(Result(r, d, attempts - 1, "withdrawn", withdrawn, 0))
            group = sendable
            if not group:
                continue
            # pipelined: one round trip a message (deliver.SmtpAdapter.send_many)
            results = deliver.send_group(
                adapter,
                [
                    deliver.OutgoingMessage(
                        lr["message_id"], self.messages.from_address, profile["email"], data
                    )
                    for _, _, lr, profile, data, _ in group
                ],
            )
            for (r, d, lr, _profile, _data, attempts), error in zip(group, results, strict=True):
                in_doubt = int(lr["state"] == "sending")
                if error is None:
                    accepted.append(lr["ledger_id"])
                    out.append(Result(r, d, attempts, "sent", None, in_doubt))
                    continue
                unjudged = isinstance(error, (deliver.NotAttempted, deliver.RelayError))
                ledger.fail(conn, lr["ledger_id"], str(error)[:500], judged=not unjudged, claim=claim)
                if isinstance(error, deliver.RelayError) or (
                    isinstance(error, deliver.NotAttempted) and isinstance(failure, deliver.RelayError)
                ):
                    out.append(Result(r, d, attempts - 1, "relay", str(error), 0))
                    failure = failure or error
                elif isinstance(error, deliver.NotAttempted):
                    out.append(Result(r, d, attempts - 1, "transient", str(error), 0))
                elif isinstance(error, deliver.PermanentDeliveryError):
                    out.append(Result(r, d, attempts, "permanent", str(error), in_doubt))
                else:
                    out.append(Result(r, d, attempts, "transient", str(error), in_doubt))
                    failure = failure or error
        if accepted:
            ledger.mark_group(conn, claim, sending=[], sent=accepted)
        return out, failure
