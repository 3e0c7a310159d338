"""One DAG run's work: ingest raw events, process what is due, and stay briefly for what is imminent.

Long waits belong to the deferred sensor in the triggerer. But a defer/resume
cycle costs a few seconds of scheduling, so when the next trigger is due within
`linger_s` the task waits for it itself (LISTENing, so new events still wake it)
instead of ending the run. `max_seconds` bounds a run.

A large backlog (at least `parallel_threshold` due triggers) is split by customer
into `workers` shards: this process takes shard 0 and starts `python -m campaigns
run-once --shard i` for the others, so rendering uses every core (a customer is
always in one shard, so frequency caps still hold). A final unsharded pass picks
up whatever a shard left.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
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
    workers: int = 2,
    parallel_threshold: int = 1000,
) -> dict[str, Any]:
    started = time.monotonic()
    campaigns = load_campaigns()
    engine = Engine(campaigns=campaigns, batch_size=batch_size, senders=senders)
    totals: dict[str, Any] = {"rounds": 0, "events": 0, "claimed": 0, "sent": 0, "outcomes": {}}
    # connections (warehouse, SMTP) stay open across rounds: a lingering round is cheap
    with engine, psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
        conn.execute("listen raw_events")
        while True:
            ingest = timers.ingest(conn, campaigns)
            remaining = max_seconds - (time.monotonic() - started)
            if workers > 1 and _due_count(conn) >= parallel_threshold:
                _run_sharded(campaigns, workers, batch_size, senders, max(remaining, 1.0), totals)
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


def _due_count(conn: psycopg.Connection) -> int:
    return conn.execute(
        "select count(*) from ops.campaign_triggers where status = 'pending' and due_at <= now()"
    ).fetchone()[0]


def _run_sharded(
    campaigns, workers: int, batch_size: int, senders: int, max_seconds: float, totals: dict
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "campaigns",
        "run-once",
        "--no-ingest",
        "--batch-size",
        str(batch_size),
        "--senders",
        str(senders),
        "--shards",
        str(workers),
        "--max-seconds",
        str(max_seconds),
    ]
    procs = [
        subprocess.Popen([*cmd, "--shard", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(1, workers)
    ]
    try:
        own = Engine(campaigns=campaigns, batch_size=batch_size, senders=senders, shard=0, shards=workers)
        stats = own.run(max_seconds=max_seconds).as_dict()
        results = [stats]
        for p in procs:
            out, err = p.communicate(timeout=max_seconds + 60)
            if p.returncode != 0:
                log.warning("shard worker exited %s: %s", p.returncode, err[-2000:])
                continue
            for line in out.splitlines():
                if line.startswith('{"process"'):
                    results.append(json.loads(line)["process"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    totals["sharded_workers"] = workers
    for r in results:
        totals["claimed"] += r["claimed"]
        totals["sent"] += r["sent"]
        for k, v in r["outcomes"].items():
            totals["outcomes"][k] = totals["outcomes"].get(k, 0) + v
