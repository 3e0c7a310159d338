"""
### trigger_campaigns: triggered emails seconds after they are due

Runs continuously, one active run at a time. Each run:

1. **wait_for_due_triggers**: a deferrable sensor. Its trigger, in the
   triggerer, wakes on the collector's NOTIFY (psycopg async LISTEN) when
   relevant events arrived, `wake_lead_s` before the next pending trigger's
   due time (scheduling the next task takes seconds), or after the polling
   fallback; it first queries, so nothing that arrived between runs is
   missed.
2. **process_due_triggers**: ingests raw events into timers and suppressions
   (`campaigns.timers`), claims due triggers (`FOR UPDATE SKIP LOCKED`),
   decides eligibility with a decision-log row per candidate, assigns variants,
   renders and delivers exactly once (`campaigns.engine`); it stays for triggers
   due within `linger_s`.

Campaigns are YAML files in `campaigns/definitions/`; the SMTP relay is the
Airflow connection `smtp_campaigns`. Logic lives in `campaigns/`, the sensor
and the task's loop in `orchestration/campaign_tasks.py`; this file only wires
them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from orchestration.campaign_tasks import DueTriggersSensor


@dag(
    dag_id="trigger_campaigns",
    schedule="@continuous",
    max_active_runs=1,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["campaigns", "real-time", "email"],
    doc_md=__doc__,
    default_args={
        "owner": "campaigns",
        "retries": 3,
        "retry_delay": timedelta(seconds=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=5),
    },
    params={
        "max_seconds": Param(
            120, type="integer", minimum=1, maximum=3600, description="upper bound of one run's work"
        ),
        "linger_s": Param(
            20, type="number", minimum=0, maximum=300, description="wait in-task for triggers due this soon"
        ),
        "batch_size": Param(500, type="integer", minimum=1, maximum=5000),
        # each engine holds senders + 3 warehouse connections, and a run has workers + 1
        # engines: the maxima keep a run within 75 of PostgreSQL's default 100
        "senders": Param(
            8, type="integer", minimum=1, maximum=12, description="parallel SMTP connections per worker"
        ),
        "workers": Param(
            2,
            type="integer",
            minimum=1,
            maximum=4,
            description="engines (threads, by customer shard) for a large backlog",
        ),
        "poll_interval": Param(
            300, type="number", minimum=1, description="sensor's polling fallback, seconds"
        ),
        "wake_lead_s": Param(
            10,
            type="number",
            minimum=0,
            maximum=60,
            description="wake this long before a due time to absorb scheduling overhead (<= linger_s)",
        ),
    },
)
def trigger_campaigns():
    wait = DueTriggersSensor(
        task_id="wait_for_due_triggers",
        poll_interval="{{ params.poll_interval }}",
        lead_s="{{ params.wake_lead_s }}",
        timeout=timedelta(hours=1),
        # A lost database connection in the trigger is retried; a timeout is not
        # (the continuous schedule starts the next run instead).
        retries=2,
    )

    @task(execution_timeout=timedelta(minutes=30))
    def process_due_triggers(params: dict | None = None) -> dict:
        from orchestration.campaign_tasks import process_until_idle

        p = params or {}
        return process_until_idle(
            max_seconds=float(p.get("max_seconds", 120)),
            linger_s=float(p.get("linger_s", 20)),
            batch_size=int(p.get("batch_size", 500)),
            senders=int(p.get("senders", 8)),
            workers=int(p.get("workers", 2)),
        )

    wait >> process_due_triggers()


trigger_campaigns()
