"""BG/NBD and Gamma-Gamma on the real CDNOW sample match the published estimates.

The inputs are lifetimes' own summary of the raw file (ml.clv.cdnow_reference_summary);
tests/integration/test_ml_cdnow.py checks the mart computes the same inputs.
"""

from __future__ import annotations

import pytest

from ml import clv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary():
    return clv.cdnow_reference_summary()


@pytest.fixture(scope="module")
def model(summary):
    return clv.fit(summary)


def test_cdnow_summary_matches_the_published_calibration_data(summary):
    assert len(summary) == 2357
    # Fader & Hardie's first customer: x=2, t_x=30.43, T=38.86 weeks
    first = summary.iloc[0]
    assert first["repeat_purchase_days"] == 2
    assert first["purchase_span_days"] / 7 == pytest.approx(30.43, abs=0.01)
    assert first["observed_days"] / 7 == pytest.approx(38.86, abs=0.01)
    assert (summary["repeat_purchase_days"] > 0).sum() == 946  # repeat buyers for Gamma-Gamma


def test_bgnbd_parameters_within_one_percent_of_published(model):
    for name, published in clv.PUBLISHED_BGNBD.items():
        assert model.bgnbd[name] == pytest.approx(published, rel=0.01), name
    assert clv.published_check(model)["bgnbd_max_rel_error"] < 0.01


def test_gamma_gamma_parameters_close_to_published(model):
    for name, published in clv.PUBLISHED_GAMMA_GAMMA.items():
        assert model.gamma_gamma[name] == pytest.approx(published, rel=0.01), name


def test_clv_predictions_are_sane(summary, model):
    pred = clv.predict(model, summary)
    assert pred["p_alive"].between(0, 1).all()
    assert (pred["predicted_clv"] >= 0).all()
    # more repeat purchases, recently: higher predicted value
    assert pred["predicted_clv"].corr(summary["repeat_purchase_days"], method="spearman") > 0.5
