"""
### extract_load

Hourly, incremental extraction of the shop's database (customers, products,
orders, order items, carts, cart items), the email provider's event export and
web/app tracking into `raw.*`, one task per source table.

Each task loads the batch of its table that ends at the run's data interval
end (see `extract/load.py`): the first run loads the full history, later runs
pick up where the last batch ended, reruns and backfills reproduce the same
rows. Every task emits its `warehouse://raw/<table>` Asset, which `dbt_build`
is scheduled on.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from orchestration.assets import RAW, RAW_TABLES


@dag(
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["extract", "raw"],
    doc_md=__doc__,
    default_args={"retries": 3, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True},
)
def extract_load():
    for raw_table in RAW_TABLES:

        @task(task_id=f"extract_{raw_table}", outlets=[RAW[raw_table]])
        def extract(raw_table: str = raw_table, data_interval_end=None, logical_date=None) -> dict:
            from extract.load import extract_table

            window_end = data_interval_end or logical_date
            result = extract_table(raw_table, window_end)
            return {"batch_id": result.batch_id, "rows": result.row_count}

        extract()


extract_load()
