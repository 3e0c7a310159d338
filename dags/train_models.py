"""
### train_models

Weekly (Mondays 03:00 UTC): trains the churn and VIP models and the CLV model
(BG/NBD + Gamma-Gamma) on the freshest marts, logs every run in MLflow
(experiment `emailp/train`, `emailp/clv`), registers the best candidate and
moves the alias `champion` only when it beats the current champion on the
holdout by the promotion margin (the decision is a tag on the run and on the
model version).

**Why a cron and not the marts' Assets:** dbt_build refreshes the marts after
every hourly extract; retraining on each refresh would burn the machine for
models whose labels need 90-180 days of outcomes anyway. Scoring
(`score_customers`) is the part that follows the marts' Assets.

Reads the dbt marts (`customer_features` at past cutoffs, `fct_orders` for
labels): which data set they hold (the simulated shop or CDNOW) is chosen
when the shop database is filled. Features a data set lacks (CDNOW has no
web or email events) are left out of the models and named in the task log
and the run's `features_left_out` param.
Params: label windows, CV folds, promotion margin.
Stages: `ml.train`, `ml.clv`, `ml.register` (also `python -m ml train`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from orchestration.task_errors import fail_fast_on_bugs

PARAMS = {
    "churn_days": Param(90, type="integer", minimum=7, description="churn: no order in this many days"),
    "vip_days": Param(180, type="integer", minimum=7, description="VIP: top spend in this many days"),
    "vip_top_fraction": Param(0.10, type="number", exclusiveMinimum=0, maximum=0.5),
    "folds": Param(5, type="integer", minimum=2, maximum=10, description="stratified k-fold CV folds"),
    "margin": Param(0.005, type="number", minimum=0, description="ROC AUC margin to replace the champion"),
}


@dag(
    schedule=CronTriggerTimetable("0 3 * * 1", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["ml", "mlflow", "training"],
    doc_md=__doc__,
    params=PARAMS,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
)
def train_models():
    for target in ("churn", "vip"):

        @task(task_id=f"train_{target}")
        @fail_fast_on_bugs
        def train_target(target: str = target, params=None) -> dict:
            from ml import data, train
            from ml.config import LabelWindows

            windows = LabelWindows(
                churn_days=int(params["churn_days"]),
                vip_days=int(params["vip_days"]),
                vip_top_fraction=float(params["vip_top_fraction"]),
            )
            result = train.run(
                target,
                data.from_warehouse(),
                windows=windows,
                folds=int(params["folds"]),
                margin=float(params["margin"]),
            )
            return {
                "run_id": result.run_id,
                "challenger": result.challenger,
                "version": result.version,
                "holdout_roc_auc": result.metrics[result.challenger]["roc_auc"],
                "promoted": bool(result.decision and result.decision.promoted),
                "reason": result.decision.reason if result.decision else None,
            }

        train_target()

    @task
    @fail_fast_on_bugs
    def train_clv(params=None) -> dict:
        from ml import clv, data

        result = clv.train(data.from_warehouse())
        return {
            "run_id": result["run_id"],
            "version": result.get("version"),
            "promoted": result.get("promoted"),
        }

    train_clv()


train_models()
