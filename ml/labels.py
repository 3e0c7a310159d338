"""Point-in-time labels: outcomes in the window right after the cutoff, never before it.

churn: among customers who ordered before the cutoff, no order in the next
`churn_days` (90) days. vip: among customers known at the cutoff, in the top
`vip_top_fraction` (10%) of spend in the next `vip_days` (180) days (and
spending something).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.config import LabelWindows
from ml.data import ShopData


class NotEnoughHistory(ValueError):
    """The outcome window runs past the end of the data."""


def future_spend(data: ShopData, cutoff, days: int) -> tuple[pd.Series, pd.Series]:
    """(orders, spend) per customer in [cutoff, cutoff + days)."""
    cutoff = pd.Timestamp(cutoff)
    end = cutoff + pd.Timedelta(days=days)
    if end > data.data_end:
        raise NotEnoughHistory(
            f"window {cutoff:%Y-%m-%d} + {days}d ends after the data ({data.data_end:%Y-%m-%d})"
        )
    tx = data.transactions
    window = tx[(tx["ordered_at"] >= cutoff) & (tx["ordered_at"] < end)]
    g = window.groupby("customer_id")
    return g.size(), g["amount"].sum()


def churn(data: ShopData, features: pd.DataFrame, cutoff, days: int) -> pd.Series:
    """1 = churned (no order in the window) for prior buyers; other customers are left out."""
    orders, _ = future_spend(data, cutoff, days)
    buyers = features.index[features["order_count"] > 0]
    future = orders.reindex(buyers, fill_value=0)
    return (future == 0).astype("int8").rename("churn")


def vip(data: ShopData, features: pd.DataFrame, cutoff, days: int, top_fraction: float) -> pd.Series:
    """1 = in the top `top_fraction` of spend in the window among every customer known at the cutoff."""
    _, spend = future_spend(data, cutoff, days)
    spend = spend.reindex(features.index, fill_value=0.0)
    k = max(1, int(np.floor(top_fraction * len(spend))))
    # rank by spend, ties at the boundary broken by customer id: exactly k VIPs
    order = spend.sort_values(ascending=False, kind="stable")
    top = order.index[:k][order.iloc[:k].to_numpy() > 0]
    return pd.Series(spend.index.isin(top).astype("int8"), index=spend.index, name="vip")


def build(data: ShopData, features: pd.DataFrame, cutoff, target: str, windows: LabelWindows) -> pd.Series:
    if target == "churn":
        return churn(data, features, cutoff, windows.churn_days)
    if target == "vip":
        return vip(data, features, cutoff, windows.vip_days, windows.vip_top_fraction)
    raise ValueError(f"unknown target {target!r}")
