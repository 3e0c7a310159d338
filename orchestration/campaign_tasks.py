"""What the trigger_campaigns DAG's two tasks run: a deferrable sensor and its
trigger, then the processing loop that lingers for imminent work.

`CampaignWakeTrigger` runs in the triggerer. It LISTENs on the collector's
channel (warehouse.settings.RAW_EVENTS_CHANNEL, psycopg async) and sleeps until
the earliest of: a NOTIFY that brought relevant events, the next pending
trigger's due time, and the polling fallback (`poll_interval`, which also lets
batch candidates sync). On start, and after every wake-up, it first *queries*
(due triggers, relevant raw events past the ingest cursor), so nothing that
arrived while no trigger was listening (between two DAG runs) is missed. It
fires `lead_s` before a due time, because resuming the sensor and starting the
next task take a few seconds; the task waits out the rest (`linger_s` of
`process_until_idle`). Several NOTIFYs coalesce into one event: a DAG run
handles everything that is there, never one event. The event
(TaskSuccessEvent) ends the sensor in the triggerer, with why it woke as its
XCom, so the next task starts without the sensor first resuming on a worker.

`process_until_idle` runs rounds of campaigns.runner (ingest, then every due
trigger) and, when the next trigger is due within `linger_s`, waits for it in
the task (LISTENing, so new events still wake it) instead of ending the run:
long waits belong to the deferred sensor, but a defer/resume cycle costs a few
seconds of scheduling. `max_seconds` bounds a run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from warehouse.settings import RAW_EVENTS_CHANNEL

log = logging.getLogger(__name__)

# One round trip: the next due time, whether one is due, and whether relevant
# events arrived past the ingest cursor (or provider exports past theirs).
CHECK_SQL = """
select
    (select min(due_at) from ops.campaign_triggers where status = 'pending') as next_due,
    exists (
        select 1 from raw.events
        where received_at > coalesce(
                  (select position from ops.campaign_cursors where name = 'raw.events'), '-infinity')
          and type = 'track' and event = any(%(events)s)
    ) as new_events,
    exists (
        select 1 from raw.esp_email_events
        where _loaded_at > coalesce(
                  (select position from ops.campaign_cursors where name = 'raw.esp_email_events'), '-infinity')
          and event_type in ('bounce', 'complaint', 'unsubscribe')
    ) as new_provider_events
"""


def relevant_events() -> list[str]:
    """Event names that create, move or cancel timers, or become suppressions."""
    from campaigns.schema import EventTrigger, load_campaigns
    from campaigns.timers import SUPPRESSION_EVENTS

    names = set(SUPPRESSION_EVENTS)
    for c in load_campaigns().values():
        if isinstance(c.trigger, EventTrigger):
            names |= set(c.trigger.events) | set(c.trigger.cancel_on) | set(c.trigger.update_on)
    return sorted(names)


def wake_reason(row: tuple, now: datetime, lead_s: float = 0.0) -> str | None:
    next_due, new_events, new_provider_events = row
    if next_due is not None and next_due <= now:
        return "due"
    if next_due is not None and (next_due - now).total_seconds() <= lead_s:
        return "due_soon"
    if new_events:
        return "events"
    if new_provider_events:
        return "provider_events"
    return None


class CampaignWakeTrigger(BaseTrigger):
    def __init__(
        self,
        events: list[str],
        poll_interval: float = 300.0,
        channel: str = RAW_EVENTS_CHANNEL,
        lead_s: float = 0.0,
    ):
        super().__init__()
        self.events = list(events)
        self.poll_interval = float(poll_interval)
        self.channel = channel
        # wake this long before the due time: resuming the sensor and starting the
        # next task take a few seconds, and the task waits out the rest (linger)
        self.lead_s = float(lead_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "orchestration.campaign_tasks.CampaignWakeTrigger",
            {
                "events": self.events,
                "poll_interval": self.poll_interval,
                "channel": self.channel,
                "lead_s": self.lead_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import psycopg
        from psycopg import sql

        from warehouse import settings

        started = time.monotonic()
        notifies = 0
        async with await psycopg.AsyncConnection.connect(settings.warehouse_url(), autocommit=True) as conn:
            await conn.execute(sql.SQL("listen {}").format(sql.Identifier(self.channel)))
            while True:
                now = datetime.now(UTC)
                cur = await conn.execute(CHECK_SQL, {"events": self.events})
                row = await cur.fetchone()
                reason = wake_reason(row, now, self.lead_s)
                waited = time.monotonic() - started
                if reason is None and waited >= self.poll_interval:
                    reason = "poll"
                if reason is not None:
                    # ends the sensor here, in the triggerer: resuming it on a worker only
                    # to return this would start one more task process (1-3 s) per wake-up
                    yield TaskSuccessEvent(
                        xcoms={
                            "return_value": {
                                "reason": reason,
                                "next_due": row[0].isoformat() if row[0] else None,
                                "waited_s": round(waited, 3),
                                "notifies": notifies,
                            }
                        }
                    )
                    return
                timeout = self.poll_interval - waited
                if row[0] is not None:
                    timeout = min(timeout, max((row[0] - now).total_seconds() - self.lead_s, 0.0) + 0.005)
                async for _ in conn.notifies(timeout=timeout, stop_after=1):
                    notifies += 1
                # a burst of NOTIFYs: let it settle a moment, then query once
                await asyncio.sleep(0)


class DueTriggersSensor(BaseSensorOperator):
    """Waits (deferred, in the triggerer) until campaign work is there; returns why it woke."""

    template_fields = ("poll_interval", "lead_s")

    def __init__(self, *, poll_interval: float = 300.0, lead_s: float = 0.0, **kwargs):
        kwargs.setdefault("deferrable", True)
        self.deferrable = kwargs.pop("deferrable")
        super().__init__(**kwargs)
        self.poll_interval = poll_interval
        self.lead_s = lead_s

    def execute(self, context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        self.defer(
            trigger=CampaignWakeTrigger(
                events=relevant_events(), poll_interval=float(self.poll_interval), lead_s=float(self.lead_s)
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        return event or {}

    def poke(self, context) -> bool:
        import psycopg

        from warehouse import settings

        with psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
            row = conn.execute(CHECK_SQL, {"events": relevant_events()}).fetchone()
        return wake_reason(row, datetime.now(UTC), float(self.lead_s)) is not None


def process_until_idle(
    *,
    max_seconds: float = 120.0,
    linger_s: float = 20.0,
    batch_size: int = 500,
    senders: int = 8,
    workers: int = 2,
    parallel_threshold: int = 1000,
) -> dict[str, Any]:
    """The process_due_triggers task: rounds until nothing is due within `linger_s`; the run's totals."""
    import psycopg
    from psycopg import sql

    from campaigns.engine import next_due
    from campaigns.runner import Runner
    from warehouse import settings

    started = time.monotonic()
    deadline = started + max_seconds
    runner = Runner(
        batch_size=batch_size, senders=senders, workers=workers, parallel_threshold=parallel_threshold
    )
    with runner, psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("listen {}").format(sql.Identifier(RAW_EVENTS_CHANNEL)))
        runner.totals["setup_s"] = round(time.monotonic() - started, 3)
        while True:
            runner.round(conn, deadline)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            nd = next_due(conn)
            wait = (nd - datetime.now(UTC)).total_seconds() if nd else float("inf")
            if wait > min(linger_s, remaining):
                break
            for _ in conn.notifies(timeout=max(wait, 0.0) + 0.005, stop_after=1):
                pass
    totals = runner.totals
    totals["seconds"] = round(time.monotonic() - started, 3)
    log.info("trigger_campaigns run: %s", totals)
    return totals
