"""Labels see only the window after the cutoff; ages are measured to the scoring moment; empty features
are left out. (The mart's features at a cutoff are dbt's: tests/integration/test_dbt_build.py and
test_ml_cdnow.py.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml import evaluate, features, labels, models, realtime
from ml.config import LabelWindows
from ml.data import ShopData, normalise


def shop(orders: list[tuple[int, str, float]]) -> ShopData:
    tx = pd.DataFrame(orders, columns=["customer_id", "ordered_at", "amount"])
    tx["order_id"] = range(1, len(tx) + 1)
    return normalise(ShopData(tx))


def known(counts: dict[int, int]) -> pd.DataFrame:
    """A features frame as far as labels look at it: the customers known at the cutoff, their order counts."""
    return pd.DataFrame(
        {"order_count": list(counts.values())}, index=pd.Index(list(counts), name="customer_id")
    )


@pytest.fixture
def data():
    return shop(
        [
            (1, "2025-01-10", 100.0),
            (1, "2025-03-01", 50.0),
            (1, "2025-06-15", 70.0),  # after the cutoff
            (2, "2025-02-01", 20.0),
            (3, "2025-05-20", 500.0),  # after the cutoff: a new buyer
            (4, "2025-12-30", 5.0),
        ]
    )


def test_churn_labels_only_prior_buyers_by_the_window(data):
    y = labels.churn(data, known({1: 2, 2: 1, 3: 0, 4: 0}), "2025-04-01", days=90)
    assert set(y.index) == {1, 2}  # 3 and 4 had not bought before the cutoff
    assert y[1] == 0  # ordered on 2025-06-15, inside 90 days
    assert y[2] == 1


def test_vip_labels_are_the_top_share_of_future_spend():
    orders = [(c, "2025-01-05", 10.0) for c in range(1, 21)]
    orders += [(c, "2025-03-01", float(c * 10)) for c in range(1, 21)]
    orders += [(1, "2025-12-31", 1.0)]
    y = labels.vip(
        shop(orders), known(dict.fromkeys(range(1, 21), 1)), "2025-02-01", days=180, top_fraction=0.1
    )
    assert y.sum() == 2 and set(y[y == 1].index) == {19, 20}


def test_windows_past_the_data_are_refused(data):
    with pytest.raises(labels.NotEnoughHistory):
        labels.build(data, known({1: 3}), "2025-12-01", "churn", LabelWindows(churn_days=90))


def test_ages_are_measured_to_the_scoring_moment():
    """The same mart row scored at two moments: every age moves with the clock, nothing else."""
    row = pd.DataFrame(
        {
            "signed_up_at": pd.to_datetime(["2025-01-01 10:00", "2025-02-01 00:00"]),
            "first_order_at": pd.to_datetime(["2025-01-10 12:00", None]),
            "last_order_at": pd.to_datetime(["2025-03-01 00:00", None]),
            "last_opened_at": pd.to_datetime(["2025-03-31 12:00", None]),
            "last_clicked_at": pd.to_datetime([None, None]),
            "avg_days_between_orders": [50.0, np.nan],
            "order_count": [2.0, 0.0],
        },
        index=pd.Index([1, 2], name="customer_id"),
    )
    cutoff = realtime.add_ages(row, "2025-04-01")  # a midnight cutoff
    assert cutoff.loc[1, "recency_days"] == 31
    assert cutoff.loc[1, "days_since_first_order"] == pytest.approx(80.5)
    assert cutoff.loc[1, "days_since_signup"] == pytest.approx(89 + 14 / 24)
    assert cutoff.loc[1, "days_since_last_open"] == 0.5
    assert cutoff.loc[1, "days_overdue"] == 31 - 50
    # BG/NBD's T: the first purchase day (Jan 10) to the last day observed (Mar 31)
    assert cutoff.loc[1, "observed_days"] == 80
    assert cutoff.loc[2, ["recency_days", "days_since_first_order", "observed_days"]].isna().all()
    assert cutoff.loc[2, "days_since_signup"] == 59
    later = realtime.add_ages(row, pd.Timestamp("2025-04-03 06:00", tz="UTC"))  # at send time
    assert later.loc[1, "recency_days"] == 33.25 and later.loc[1, "observed_days"] == 83  # through Apr 3
    assert later["order_count"].equals(cutoff["order_count"])
    assert set(realtime.AGES) < set(later.columns)


def test_features_a_data_set_lacks_are_left_out_and_training_works():
    """CDNOW has no web or email events: HistGradientBoosting cannot bin an all-empty column."""
    rng = np.random.default_rng(0)
    n = 400
    X = pd.DataFrame(
        {
            "recency_days": rng.uniform(0, 300, n),
            "order_count": rng.integers(1, 9, n).astype(float),
            "total_revenue": rng.uniform(5, 500, n),
            "email_open_rate": np.nan,  # no email events
            "views_30d": 0.0,  # no web events
            "days_since_last_click": np.where(np.arange(n) < 5, 3.0, np.nan),  # nearly none
        }
    )
    y = pd.Series((X["recency_days"] > 150).astype(int))
    with pytest.raises(ValueError, match="window shape"):
        models.make("gradient_boosting", "churn").fit(X, y)
    kept, dropped = features.learnable(X)
    assert kept == ["recency_days", "order_count", "total_revenue"]
    assert dropped == ["email_open_rate", "views_30d", "days_since_last_click"]
    for name in models.CANDIDATES:
        assert models.make(name, "churn").fit(X[kept], y).predict_proba(X[kept]).shape == (n, 2)


def test_model_columns_are_the_numeric_features_only():
    frame = features.prepare(
        pd.DataFrame(
            {
                "customer_id": [1, 2],
                "cutoff_at": ["2025-04-01 00:00:00+00", "2025-04-01 00:00:00+00"],
                "last_order_at": ["2025-03-01 12:00:00+00", None],
                "order_count": [2, 0],
                "r_score": [5, None],
                "repeat_purchase_days": [1, 0],
                "rfm_segment": ["Champions", None],
                "views_30d": [3, 0],
            }
        )
    )
    assert str(frame["last_order_at"].dtype) == "datetime64[us]" and frame["rfm_segment"].tolist() == [
        "Champions",
        None,
    ]
    assert features.model_columns(frame) == ["order_count", "views_30d"]


def test_slices_name_customers_without_orders():
    frame = pd.DataFrame(
        {"days_since_first_order": [10.0, 400.0, np.nan], "rfm_segment": ["New", "Lost", None]}
    )
    s = evaluate.slices(frame)
    assert s["tenure_band"].tolist() == ["0-3m", "1-2y", "no orders"]
    assert s["rfm_segment"].tolist() == ["New", "Lost", "no orders"]


def test_rfm_rule_baseline_ranks_by_rfm():
    X = pd.DataFrame(
        {
            "recency_days": [5, 300, 20, 400.0],
            "order_count": [10, 1, 5, 1.0],
            "total_revenue": [900, 10, 300, 5.0],
        }
    )
    y = [0, 1, 0, 1]
    rule = models.RFMRule(direction="low").fit(X, y)
    p = rule.predict_proba(X)[:, 1]
    assert p[1] > p[0] and p[3] > p[2]
