"""The ML stages on CDNOW, end to end: the real purchase history loaded, extracted, dbt's marts built,
then the ML DAGs (train_models, score_customers) run with dag.test() as the demo runs them.

CDNOW (Fader & Hardie) is orders only: no web or email events, so the mart's
browsing and email columns are zero or empty for everyone. Training leaves
those features out (and says which) instead of failing in cross-validation,
as `make demo DATASET=cdnow` did. The sample (2,357 customers) is the one
with published BG/NBD estimates, so the mart's BG/NBD inputs are checked
against lifetimes' own summary of the raw file and the fit against the paper.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import psycopg
import pytest

from tests.integration import ml_support

cdnow_warehouse = ml_support.cdnow_warehouse  # the module's own built warehouse (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EMPTY_ON_CDNOW = {"views_30d", "cart_adds_7d", "searches_90d", "email_open_rate", "days_since_last_click"}


def test_the_marts_bgnbd_inputs_equal_lifetimes_summary_of_the_raw_file(cdnow_warehouse):
    from ml import clv

    mart = clv.buyers_at(clv.CDNOW_CALIBRATION_END)[clv.INPUTS].sort_index()
    reference = clv.cdnow_reference_summary().sort_index()
    assert len(mart) == len(reference) == 2357
    assert mart.index.equals(reference.index)
    pd.testing.assert_frame_equal(mart, reference.astype("float64"), check_names=False, atol=1e-9)
    # Fader & Hardie's first customer: x=2, t_x=30.43, T=38.86 weeks; 946 repeat buyers
    first = mart.iloc[0]
    assert first["repeat_purchase_days"] == 2
    assert first["purchase_span_days"] / 7 == pytest.approx(30.43, abs=0.01)
    assert first["observed_days"] / 7 == pytest.approx(38.86, abs=0.01)
    assert (mart["repeat_purchase_days"] > 0).sum() == 946


def test_the_cdnow_report_on_the_marts(cdnow_warehouse, mlflow_store):
    from ml import clv

    report = clv.cdnow_report(log_to_mlflow=False)
    for name, published in clv.PUBLISHED_BGNBD.items():
        assert report["bgnbd"][name] == pytest.approx(published, rel=0.01), name
    holdout = report["churn_holdout"]
    assert holdout["holdout_weeks"] == 39 and holdout["holdout_rows"] == 2357
    assert not EMPTY_ON_CDNOW & set(holdout["features"])
    auc = {name: m["roc_auc"] for name, m in holdout["metrics"].items()}
    # the learned models rank churners far better than 1 - P(alive), which calls
    # every one-time buyer alive, and about as well as BG/NBD's own P(no purchase)
    assert auc["gradient_boosting"] > auc["p_alive_baseline"] + 0.2
    assert auc["logistic_regression"] > 0.72
    assert auc["bgnbd_no_purchase"] > 0.7


def test_the_ml_dags_run_on_cdnow(cdnow_warehouse, mlflow_store):
    from mlflow import MlflowClient

    from ml import config, register

    logical = datetime(2026, 1, 5, 3, tzinfo=UTC)  # a run of the DAGs' time (after their start_date)
    run = ml_support.dag("train_models").test(logical_date=logical, run_conf={"folds": 2})
    assert run.state == "success"
    run = ml_support.dag("score_customers").test(logical_date=logical, run_conf={"export_csv": False})
    assert run.state == "success"

    client = MlflowClient()
    for target in config.TARGETS:
        version = register.champion_version(config.model_name(target))
        params = client.get_run(
            client.get_model_version(config.model_name(target), version).tags["training_run"]
        ).data.params
        left_out = set(params["features_left_out"].split(","))
        assert EMPTY_ON_CDNOW <= left_out, left_out
        assert not left_out & set(params["features"].split(","))
        assert {"recency_days", "order_count", "orders_90d"} <= set(params["features"].split(","))
    assert register.champion_version(config.model_name("clv")) is not None
    with psycopg.connect(cdnow_warehouse["url"]) as conn:
        count, scored, segments = conn.execute(
            "select count(*), count(vip_score), count(distinct segment) from ml.customer_segments"
        ).fetchone()
        assert count == scored == 2357
        assert segments >= 3
        assert conn.execute("select count(*) from ml.recommendations").fetchone()[0] == 0  # no products
