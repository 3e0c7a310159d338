"""One DAG run's work: ingest raw events, process what is due, and stay briefly for what is imminent.

Long waits belong to the deferred sensor in the triggerer. But a defer/resume
cycle costs a few seconds of scheduling, so when the next trigger is due within
`linger_s` the task waits for it itself (LISTENing, so new events still wake it)
instead of ending the run. `max_seconds` bounds a run.

A large backlog (at least `parallel_threshold` due triggers) is split by customer
into `workers` shards processed side by side by engines in threads of this
process (a customer is always in one shard, so frequency caps still hold): each
engine claims its next batch while its lanes send (campaigns.engine), and the
shards together keep more messages in flight at the relay.
Threads, not processes: the engine spends most of its time waiting on the relay
and the database, its CPU share (about 0.5 ms an email) fits one core, and a
helper process would first spend seconds importing what this one has loaded. A
final unsharded pass picks up whatever a shard left. (`python -m campaigns
run-once --shard i --shards n` runs a shard in a process of its own.)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg

from campaigns import deliver, timers
from campaigns.engine import Engine, RunStats, next_due
from campaigns.schema import load_campaigns
from warehouse import settings

log = logging.getLogger(__name__)


def process_until_idle(
    *,
    max_seconds: float = 120.0,
    linger_s: float = 20.0,
    batch_size: int = 500,
    senders: int = 8,
    workers: int = 2,
    parallel_threshold: int = 1000,
) -> dict[str, Any]:
    started = time.monotonic()
    campaigns = load_campaigns()
    # the relay's Airflow connection, looked up once for every lane (a metastore lookup each)
    relay = functools.partial(deliver.SmtpAdapter, deliver.smtp_settings())
    common = {"campaigns": campaigns, "batch_size": batch_size, "senders": senders, "adapter_factory": relay}
    engine = Engine(**common)
    shards = [Engine(**common, shard=i, shards=workers) for i in range(workers if workers > 1 else 0)]
    totals: dict[str, Any] = {
        "rounds": 0,
        "events": 0,
        "claimed": 0,
        "sent": 0,
        "outcomes": {},
        "setup_s": 0.0,  # from the call to the first ingest (imports done, engines built)
        "ingest_s": 0.0,
    }
    # connections (warehouse, SMTP) stay open across rounds: a lingering round is cheap
    with contextlib.ExitStack() as held:
        held.enter_context(engine)
        for shard in shards:  # opened on first use
            held.callback(shard.close)
        conn = held.enter_context(psycopg.connect(settings.warehouse_url(), autocommit=True))
        conn.execute("listen raw_events")
        totals["setup_s"] = round(time.monotonic() - started, 3)
        while True:
            ingest_started = time.monotonic()
            ingest = timers.ingest(conn, campaigns)
            took = time.monotonic() - ingest_started
            totals.setdefault("first_ingest_s", round(took, 3))
            totals["ingest_s"] = round(totals["ingest_s"] + took, 3)
            remaining = max_seconds - (time.monotonic() - started)
            if workers > 1 and _due_count(conn) >= parallel_threshold:
                _run_sharded(shards, max(remaining, 1.0), totals)
                remaining = max_seconds - (time.monotonic() - started)
            stats = engine.run(max_seconds=max(remaining, 1.0))
            totals["rounds"] += 1
            totals["events"] += ingest.events
            _add(totals, stats)
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


def _due_count(conn: psycopg.Connection) -> int:
    return conn.execute(
        "select count(*) from ops.campaign_triggers where status = 'pending' and due_at <= now()"
    ).fetchone()[0]


def _add(totals: dict, stats: RunStats) -> None:
    totals["claimed"] += stats.claimed
    totals["sent"] += stats.sent
    for k, v in stats.outcomes.items():
        totals["outcomes"][k] = totals["outcomes"].get(k, 0) + v


def _run_sharded(shards: list[Engine], max_seconds: float, totals: dict) -> None:
    """Every shard engine in its own thread until its shard is done (or time is up)."""
    with ThreadPoolExecutor(len(shards), thread_name_prefix="shard") as pool:
        futures = [pool.submit(e.open().run, max_seconds=max_seconds) for e in shards]
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except Exception as exc:  # noqa: BLE001 - the final unsharded pass retries its triggers
                log.warning("shard engine failed: %s", exc)
    totals["sharded_workers"] = len(shards)
    for r in results:
        _add(totals, r)
