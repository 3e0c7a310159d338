"""Features see only what happened before the cutoff; labels only the window after it."""

from __future__ import annotations

import pandas as pd
import pytest

from ml import features, labels, models
from ml.config import LabelWindows
from ml.data import ShopData, normalise


def shop(orders: list[tuple[int, str, float]], customers: dict[int, str]) -> ShopData:
    tx = pd.DataFrame(orders, columns=["customer_id", "ordered_at", "amount"])
    tx["order_id"] = range(1, len(tx) + 1)
    cust = pd.DataFrame({"customer_id": list(customers), "signed_up_at": list(customers.values())})
    return normalise(ShopData(tx, cust, name="test"))


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
        ],
        {1: "2025-01-01", 2: "2025-01-15", 3: "2025-02-01", 4: "2025-01-01", 5: "2025-07-01"},
    )


def test_features_ignore_everything_after_the_cutoff(data):
    f = features.build(data, "2025-04-01")
    assert list(f.index) == [1, 2, 3, 4]  # 5 signed up later
    assert f.loc[1, "order_count"] == 2 and f.loc[1, "total_spend"] == 150.0
    assert f.loc[1, "recency_days"] == (pd.Timestamp("2025-04-01") - pd.Timestamp("2025-03-01")).days
    assert f.loc[3, "order_count"] == 0 and pd.isna(f.loc[3, "recency_days"])
    assert f.loc[3, "rfm_segment"] == "prospect"
    assert f.loc[1, "bg_frequency"] == 1 and f.loc[1, "bg_monetary"] == 50.0
    # moving the cutoff changes the features, never the other way around
    later = features.build(data, "2025-07-01")
    assert later.loc[1, "order_count"] == 3


def test_churn_labels_only_prior_buyers_by_the_window(data):
    f = features.build(data, "2025-04-01")
    y = labels.churn(data, f, "2025-04-01", days=90)
    assert set(y.index) == {1, 2}  # 3 and 4 had not bought before the cutoff
    assert y[1] == 0  # ordered on 2025-06-15, inside 90 days
    assert y[2] == 1


def test_vip_labels_are_the_top_share_of_future_spend():
    orders = [(c, "2025-01-05", 10.0) for c in range(1, 21)]
    orders += [(c, "2025-03-01", float(c * 10)) for c in range(1, 21)]
    orders += [(1, "2025-12-31", 1.0)]
    data = shop(orders, {c: "2025-01-01" for c in range(1, 21)})
    f = features.build(data, "2025-02-01")
    y = labels.vip(data, f, "2025-02-01", days=180, top_fraction=0.1)
    assert y.sum() == 2 and set(y[y == 1].index) == {19, 20}


def test_windows_past_the_data_are_refused(data):
    f = features.build(data, "2025-12-01")
    with pytest.raises(labels.NotEnoughHistory):
        labels.build(data, f, "2025-12-01", "churn", LabelWindows(churn_days=90))


def test_rfm_rule_baseline_ranks_by_rfm():
    X = pd.DataFrame(
        {
            "recency_days": [5, 300, 20, 400.0],
            "order_count": [10, 1, 5, 1.0],
            "total_spend": [900, 10, 300, 5.0],
        }
    )
    y = [0, 1, 0, 1]
    rule = models.RFMRule(direction="low").fit(X, y)
    p = rule.predict_proba(X)[:, 1]
    assert p[1] > p[0] and p[3] > p[2]


def test_a_customer_who_never_ordered_gets_prospect_features():
    """No order before the cutoff (score_one for a prospect): pandas 3 used to raise
    `Cannot cast DatetimeArray to dtype float64` on the empty per-customer first day."""
    empty = pd.DataFrame({"customer_id": [], "order_id": [], "ordered_at": [], "amount": []})
    cust = pd.DataFrame({"customer_id": [7], "signed_up_at": ["2025-01-01T10:00:00+00:00"]})
    data = normalise(ShopData(empty, cust, name="test"))
    f = features.build(data, "2025-03-01")
    assert list(f.index) == [7]
    row = f.loc[7]
    assert row["order_count"] == 0 and row["total_spend"] == 0 and row["bg_frequency"] == 0
    assert pd.isna(row["recency_days"]) and row["days_since_signup"] > 58
    assert row["rfm_segment"] == "prospect"
    assert features.model_matrix(f, features.model_columns(f)).dtypes.eq("float64").all()


def test_a_cutoff_before_the_first_order_short_history(data):
    """Training cutoffs of a long window on a short history fall before every order."""
    f = features.build(data, "2025-01-05")
    assert list(f.index) == [1, 4]  # signed up, nothing bought yet
    assert (f["order_count"] == 0).all() and (f["rfm_segment"] == "prospect").all()
    y = labels.build(data, f, "2025-01-05", "vip", LabelWindows(vip_days=60, vip_top_fraction=0.5))
    assert y.loc[1] == 1 and y.loc[4] == 0
