"""Process what is due now: ingest raw events, then every due trigger, with
several engines for a large backlog.

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

The trigger_campaigns DAG's task runs rounds of this until nothing is due soon
(orchestration.campaign_tasks.process_until_idle).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from campaigns import deliver, timers
from campaigns.engine import Engine, RunStats
from campaigns.schema import load_campaigns

log = logging.getLogger(__name__)


class Runner:
    """One unsharded engine and `workers` shard engines, their connections (warehouse,
    SMTP) kept open across rounds, so a lingering round is cheap; `totals` adds up
    what the rounds did."""

    def __init__(
        self, *, batch_size: int = 500, senders: int = 8, workers: int = 2, parallel_threshold: int = 1000
    ):
        self.campaigns = load_campaigns()
        # the relay's Airflow connection, looked up once for every lane (a metastore lookup each)
        relay = functools.partial(deliver.SmtpAdapter, deliver.smtp_settings())
        common = {
            "campaigns": self.campaigns,
            "batch_size": batch_size,
            "senders": senders,
            "adapter_factory": relay,
        }
        self.engine = Engine(**common)
        self.shards = [
            Engine(**common, shard=i, shards=workers) for i in range(workers if workers > 1 else 0)
        ]
        self.parallel_threshold = parallel_threshold
        self.totals: dict[str, Any] = {
            "rounds": 0,
            "events": 0,
            "claimed": 0,
            "sent": 0,
            "dead_letters": 0,  # input rows and triggers set aside (python -m campaigns dead-letters)
            "outcomes": {},
            "setup_s": 0.0,  # from the call to the first ingest (imports done, engines built)
            "ingest_s": 0.0,
        }
        self._held = contextlib.ExitStack()

    def __enter__(self) -> Runner:
        self._held.enter_context(self.engine)
        for shard in self.shards:  # opened on first use
            self._held.callback(shard.close)
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()

    def round(self, conn: psycopg.Connection, deadline: float) -> None:
        """Ingest what arrived, then process every due trigger until `deadline` (monotonic)."""
        ingest_started = time.monotonic()
        ingest = timers.ingest(conn, self.campaigns)
        took = time.monotonic() - ingest_started
        self.totals.setdefault("first_ingest_s", round(took, 3))
        self.totals["ingest_s"] = round(self.totals["ingest_s"] + took, 3)
        if self.shards and _due_count(conn) >= self.parallel_threshold:
            self._run_sharded(max(deadline - time.monotonic(), 1.0))
        stats = self.engine.run(max_seconds=max(deadline - time.monotonic(), 1.0))
        self.totals["rounds"] += 1
        self.totals["events"] += ingest.events
        self.totals["dead_letters"] += ingest.dead_letters
        self._add(stats)

    def _run_sharded(self, max_seconds: float) -> None:
        """Every shard engine in its own thread until its shard is done (or time is up)."""
        with ThreadPoolExecutor(len(self.shards), thread_name_prefix="shard") as pool:
            futures = [pool.submit(e.open().run, max_seconds=max_seconds) for e in self.shards]
            results = []
            for f in futures:
                try:
                    results.append(f.result())
                except Exception as exc:  # noqa: BLE001 - the final unsharded pass retries its triggers
                    log.warning("shard engine failed: %s", exc)
        self.totals["sharded_workers"] = len(self.shards)
        for r in results:
            self._add(r)

    def _add(self, stats: RunStats) -> None:
        self.totals["claimed"] += stats.claimed
        self.totals["sent"] += stats.sent
        self.totals["dead_letters"] += stats.dead_letters
        for k, v in stats.outcomes.items():
            self.totals["outcomes"][k] = self.totals["outcomes"].get(k, 0) + v


def _due_count(conn: psycopg.Connection) -> int:
    return conn.execute(
        "select count(*) from ops.campaign_triggers where status = 'pending' and due_at <= now()"
    ).fetchone()[0]
