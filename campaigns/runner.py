"""One DAG run's work: ingest raw events, process what is due, and stay briefly for what is imminent.

Long waits belong to the deferred sensor in the triggerer. But a defer/resume
cycle costs a few seconds of scheduling, so when the next trigger is due within
`linger_s` the task waits for it itself (LISTENing, so new events still wake it)
instead of ending the run. `max_seconds` bounds a run.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import psycopg

from campaigns import timers
from campaigns.engine import Engine, next_due
from campaigns.schema import load_campaigns
from warehouse import settings

log = logging.getLogger(__name__)


def process_until_idle(
    *,
    max_seconds: float = 120.0,
    linger_s: float = 20.0,
    batch_size: int = 500,
    senders: int = 3,
) -> dict[str, Any]:
    started = time.monotonic()
    campaigns = load_campaigns()
    engine = Engine(campaigns=campaigns, batch_size=batch_size, senders=senders)
    totals: dict[str, Any] = {"rounds": 0, "events": 0, "claimed": 0, "sent": 0, "outcomes": {}}
    with psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
        conn.execute("listen raw_events")
        while True:
            ingest = timers.ingest(conn, campaigns)
            remaining = max_seconds - (time.monotonic() - started)
            stats = engine.run(max_seconds=max(remaining, 1.0))
            totals["rounds"] += 1
            totals["events"] += ingest.events
            totals["claimed"] += stats.claimed
            totals["sent"] += stats.sent
            for k, v in stats.outcomes.items():
                totals["outcomes"][k] = totals["outcomes"].get(k, 0) + v
            remaining = max_seconds - (time.monotonic() - started)
            if remaining <= 0:
                break
            nd = next_due(conn)
            wait = (nd - datetime.now(UTC)).total_seconds() if nd else float("inf")
            if wait > min(linger_s, remaining):
                break
            for _ in conn.notifies(timeout=max(wait, 0.0) + 0.005, stop_after=1):
                pass
    totals["seconds"] = round(time.monotonic() - started, 3)
    log.info("trigger_campaigns run: %s", totals)
    return totals
