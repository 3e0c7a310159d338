"""BG/NBD and Gamma-Gamma on the real CDNOW sample match the published estimates."""

from __future__ import annotations

import pytest

from ml import clv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report():
    return clv.cdnow_report(log_to_mlflow=False)


def test_cdnow_summary_matches_the_published_calibration_data():
    summary, _ = clv.cdnow_summary()
    assert len(summary) == 2357
    # Fader & Hardie's first customer: x=2, t_x=30.43, T=38.86 weeks
    first = summary.loc[1]
    assert first["bg_frequency"] == 2
    assert first["bg_recency_days"] / 7 == pytest.approx(30.43, abs=0.01)
    assert first["bg_T_days"] / 7 == pytest.approx(38.86, abs=0.01)
    assert (summary["bg_frequency"] > 0).sum() == 946  # repeat buyers for Gamma-Gamma


def test_bgnbd_parameters_within_one_percent_of_published(report):
    for name, published in clv.PUBLISHED_BGNBD.items():
        assert report["bgnbd"][name] == pytest.approx(published, rel=0.01), name


def test_gamma_gamma_parameters_close_to_published(report):
    for name, published in clv.PUBLISHED_GAMMA_GAMMA.items():
        assert report["gamma_gamma"][name] == pytest.approx(published, rel=0.01), name


def test_churn_auc_on_the_39_week_holdout_is_reported_next_to_p_alive(report):
    holdout = report["churn_holdout"]
    assert holdout["holdout_weeks"] == 39
    auc = {name: m["roc_auc"] for name, m in holdout["metrics"].items()}
    assert set(auc) >= {"p_alive_baseline", "bgnbd_no_purchase", "gradient_boosting", "logistic_regression"}
    # the learned models rank churners far better than 1 - P(alive), which calls
    # every one-time buyer alive, and about as well as BG/NBD's own P(no purchase)
    assert auc["gradient_boosting"] > auc["p_alive_baseline"] + 0.2
    assert auc["logistic_regression"] > 0.72
    assert auc["bgnbd_no_purchase"] > 0.7


def test_clv_predictions_are_sane():
    summary, _ = clv.cdnow_summary()
    model = clv.fit(summary)
    pred = clv.predict(model, summary)
    assert pred["p_alive"].between(0, 1).all()
    assert (pred["predicted_clv"] >= 0).all()
    # more repeat purchases, recently: higher predicted value
    assert pred["predicted_clv"].corr(summary["bg_frequency"], method="spearman") > 0.5
