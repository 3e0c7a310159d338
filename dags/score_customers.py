"""
### score_customers

Runs whenever dbt_build has refreshed the `customer_features` mart (its
Asset): scores every customer with the `champion` of each model (churn, VIP,
CLV) and writes `ml.customer_segments` (upsert by customer_id), the segment
history, the CRM write-back view `ml.crm_segment_sync` and a CSV export.
A second task refreshes `ml.recommendations` (item-to-item CF from the
`product_affinity` mart, popularity fallback).

Scheduled on the Asset rather than a daily clock, so segments never lag or
run ahead of the marts; dbt_build runs at least daily, so every customer is
scored at least daily. `scored_at` is the run's logical date (or, for
Asset-triggered runs, its `run_after`), never the wall clock inside the task:
rerunning a run rewrites the same rows, and an older run never overwrites a
newer one. Stages: `ml.score`, `ml.recommend` (also `python -m ml score`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from orchestration.assets import MARTS
from orchestration.task_errors import fail_fast_on_bugs

PARAMS = {
    "export_csv": Param(True, type="boolean", description="write the CRM CSV export"),
    "recommendations": Param(10, type="integer", minimum=1, maximum=50, description="products per customer"),
}


def _moment(logical_date, dag_run):
    return logical_date or getattr(dag_run, "run_after", None)


@dag(
    schedule=[MARTS["customer_features"]],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "segments", "scoring"],
    doc_md=__doc__,
    params=PARAMS,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
)
def score_customers():
    @task
    @fail_fast_on_bugs
    def score(params=None, logical_date=None, dag_run=None) -> dict:
        from ml import score as ml_score

        summary = ml_score.run(_moment(logical_date, dag_run), export=bool(params["export_csv"]))
        return {
            k: summary[k]
            for k in (
                "customers",
                "segments",
                "scored_at",
                "vip_model_version",
                "churn_model_version",
                "clv_model_version",
            )
        }

    @task
    @fail_fast_on_bugs
    def recommend(params=None, logical_date=None, dag_run=None) -> dict:
        from ml import recommend as ml_recommend

        summary = ml_recommend.run(_moment(logical_date, dag_run), n=int(params["recommendations"]))
        return {k: summary[k] for k in ("customers", "rows", "item_cf_share", "mlflow_run_id")}

    score() >> recommend()


score_customers()
