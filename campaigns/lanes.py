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
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import psycopg

from campaigns import deliver, ledger
from campaigns.batch import Batch
from campaigns.eligibility import Decision
from campaigns.messages import Messages


class Result(NamedTuple):
    """What became of one message: `outcome` is sent, permanent, transient or relay (an
    outage: deliver.RelayError); `attempts`
    counts relay attempts; `in_doubt` is 1 for a resend of an in-doubt `sending` row."""

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
            batch.sending = [self._send_groups(lanes[0], groups, batch.shared)]
            return
        batch.sending = [self._pool.submit(self._send_groups, lane, groups, batch.shared) for lane in lanes]

    @staticmethod
    def delivered(batch: Batch) -> tuple[list[Result], Exception | None]:
        """Wait for the batch's lanes: every message's result, and the relay failure
        that stopped a lane, if any."""
        results: list[Result] = []
        failure: Exception | None = None
        for lane in batch.sending:
            lane_results, lane_failure = lane.result() if isinstance(lane, Future) else lane
            results += lane_results
            failure = failure or lane_failure
        return results, failure

    def _send_groups(
        self, lane: _Lane, groups: queue.SimpleQueue, shared: dict
    ) -> tuple[list[Result], Exception | None]:
        """Runs in a lane's thread: its groups until the queue is empty."""
        conn, adapter, build = lane.conn, lane.adapter, self.messages.build
        out: list[Result] = []
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
                    outcome = "relay" if isinstance(failure, deliver.RelayError) else "transient"
                    out.append(Result(r, d, attempts - 1, outcome, str(failure), 0))
                    continue
                try:
                    data = build(r, d, payload, lr, profile, shared)
                except deliver.PermanentDeliveryError as exc:
                    ledger.fail(conn, lr["ledger_id"], str(exc)[:500])
                    out.append(Result(r, d, attempts - 1, "permanent", str(exc), 0))
                    continue
                group.append((r, d, lr, profile, data, attempts))
            if not group:
                continue
            # 'sending' is durable before the relay sees the group; the previous
            # group's 'sent' rides along in the same statement (one round trip)
            ledger.mark_group(conn, sending=[g[2]["ledger_id"] for g in group], sent=accepted)
            accepted = []
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
                ledger.fail(conn, lr["ledger_id"], str(error)[:500], judged=not unjudged)
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
            ledger.mark_group(conn, sending=[], sent=accepted)
        return out, failure
