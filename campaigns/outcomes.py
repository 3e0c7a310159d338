"""Write what became of a delivered batch, and commit it.

Every message's result becomes a trigger update and a decision-log row: `sent`;
`failed` for a permanent refusal; for a transient one, `retry` with exponential
backoff until `max_send_attempts`, then `failed`; for a relay outage, `retry`
without counting the attempt (campaigns.engine); `suppressed`, `unsubscribed`
or `no_consent` for one withdrawn since the claim; `failed` and a dead letter
for one that could not be rendered. The batch's trigger updates, decisions,
assignments and dead letters go out as one statement each (unnest), in the
batch's transaction, which then commits and releases its locks.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from psycopg.types.json import Jsonb

from campaigns import dead_letters
from campaigns.batch import DEAD_LETTER_STAGE, Batch
from campaigns.eligibility import CustomerFacts, Decision, refused
from campaigns.lanes import Result


def finish(batch: Batch, results: list[Result], max_send_attempts: int) -> None:
    """Record every result and commit the batch's transaction."""
    first_tried: dict[str, datetime] = {}  # per trigger: its ledger row's creation, on an outage
    for res in results:
        r, d, attempts = res.row, res.decision, res.attempts
        if res.outcome == "sent":
            batch.record(r, d, attempts=attempts)
        elif res.outcome == "permanent":
            failed = Decision(
                "failed", variant=d.variant, detail={"error": res.error[:200], "permanent": True}
            )
            batch.record(r, failed, attempts=attempts)
        elif res.outcome == "withdrawn":
            stopped = refused(res.error or "suppressed")
            stopped.variant = d.variant
            stopped.detail["since_decision"] = True
            batch.record(r, stopped, attempts=attempts)
        elif res.outcome == "poisoned":
            batch.set_aside(r, res.error or "", variant=d.variant)
        elif res.outcome == "relay":
            first_tried = first_tried or {w[0]["trigger_id"]: w[3]["created_at"] for w in batch.work}
            _postpone(batch, res, first_tried[r["trigger_id"]])
        elif attempts < max_send_attempts:
            backoff = timedelta(seconds=min(30 * 2 ** max(attempts - 1, 0), 3600))
            retry = Decision(
                "retry",
                variant=d.variant,
                reschedule_to=batch.now + backoff,
                detail={"error": (res.error or "")[:200], "attempts": attempts},
            )
            batch.record(r, retry, attempts=attempts)
        else:
            failed = Decision(
                "failed", variant=d.variant, detail={"error": (res.error or "")[:200], "attempts": attempts}
            )
            batch.record(r, failed, attempts=attempts)
    write(batch)
    batch.lock_conn.commit()


def _postpone(batch: Batch, res: Result, first_tried: datetime) -> None:
    """A relay outage: the message stays due and its attempts are not counted; it is
    tried again after as long as it has waited since its first try (30 s to 1 h), so
    the waits double, as a mail queue's do."""
    backoff = min(max(batch.now - first_tried, timedelta(seconds=30)), timedelta(hours=1))
    detail = {"error": (res.error or "")[:200], "relay_outage": True, "attempts": res.attempts}
    retry = Decision("retry", variant=res.decision.variant, reschedule_to=batch.now + backoff, detail=detail)
    batch.record(res.row, retry, attempts=res.attempts)


def write(batch: Batch) -> None:
    """The batch's trigger updates, decisions, assignments and dead letters: one statement
    each (unnest).

    Every decision row carries the customer's score and the model versions
    behind it (`detail.score`), so each send is traceable to a model version."""

    def cols(rows: list[tuple]) -> tuple[list, ...]:
        return tuple(list(c) for c in zip(*rows, strict=True))

    lock_conn, updates, assignments = batch.lock_conn, batch.updates, batch.assignments
    decisions = [(*row[:5], Jsonb(_with_score(row[5], batch.facts.get(row[1])))) for row in batch.decisions]

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
    # logged there too, so each shows in the task log
    dead_letters.record(lock_conn, DEAD_LETTER_STAGE, batch.dead_letters)


def _with_score(detail: dict, facts: CustomerFacts | None) -> dict:
    if facts is None or facts.score is None or "score" in detail:
        return detail
    return {**detail, "score": facts.score}
