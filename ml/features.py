"""Point-in-time customer features: everything known strictly before a cutoff.

The same function builds the training rows (features at a past cutoff, labels
after it) and the scoring rows (features at the run's logical date), so there
is one definition of each feature. Inputs are the dbt order facts
(ml.data.from_warehouse); when the dbt mart `customer_features` is present,
its numeric columns computed for the same cutoff are joined on (see
`mart_features`).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ml.data import ShopData

log = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)
# Model inputs computed from orders; every one is a float (NaN when undefined).
ORDER_FEATURES = [
    "recency_days",
    "tenure_days",
    "days_since_signup",
    "order_count",
    "total_spend",
    "avg_order_value",
    "max_order_value",
    "orders_30d",
    "orders_90d",
    "orders_180d",
    "orders_365d",
    "spend_90d",
    "spend_365d",
    "mean_days_between_orders",
    "days_overdue",
]
# Inputs of BG/NBD and Gamma-Gamma (lifetimes' x, t_x, T and repeat order value), in days.
CLV_INPUTS = ["bg_frequency", "bg_recency_days", "bg_T_days", "bg_monetary"]
SEGMENT_COLUMNS = ["r_score", "f_score", "m_score", "rfm_segment", "tenure_band"]
TENURE_BANDS = [(-np.inf, 90, "0-3m"), (90, 365, "3-12m"), (365, 730, "1-2y"), (730, np.inf, "2y+")]


def build(data: ShopData, cutoff, *, population: str = "customers") -> pd.DataFrame:
    """One row per customer known at `cutoff`, indexed by customer_id.

    population: "customers" (signed up before the cutoff) or "buyers" (ordered
    before it). Without a customers table both mean buyers.
    """
    cutoff = pd.Timestamp(cutoff)
    tx = data.transactions
    tx = tx[tx["ordered_at"] < cutoff]
    g = tx.groupby("customer_id", sort=True)
    first = g["ordered_at"].min()
    last = g["ordered_at"].max()
    f = pd.DataFrame(index=first.index)
    f["order_count"] = g.size().astype("float64")
    f["total_spend"] = g["amount"].sum()
    f["avg_order_value"] = f["total_spend"] / f["order_count"]
    f["max_order_value"] = g["amount"].max()
    f["recency_days"] = (cutoff - last) / DAY
    f["tenure_days"] = (cutoff - first) / DAY
    for days in (30, 90, 180, 365):
        recent = tx[tx["ordered_at"] >= cutoff - pd.Timedelta(days=days)]
        rg = recent.groupby("customer_id")
        f[f"orders_{days}d"] = rg.size().reindex(f.index, fill_value=0).astype("float64")
        if days in (90, 365):
            f[f"spend_{days}d"] = rg["amount"].sum().reindex(f.index, fill_value=0.0)
    span = (last - first) / DAY
    f["mean_days_between_orders"] = (span / (f["order_count"] - 1)).where(f["order_count"] > 1)
    f["days_overdue"] = f["recency_days"] - f["mean_days_between_orders"]

    # BG/NBD counts repeat purchase *days*: several orders on one day are one.
    days = tx.assign(day=tx["ordered_at"].dt.floor("D"))
    per_day = days.groupby(["customer_id", "day"], sort=True)["amount"].sum().reset_index()
    dg = per_day.groupby("customer_id")
    first_day = dg["day"].min()
    f["bg_frequency"] = (dg.size() - 1).astype("float64")
    f["bg_recency_days"] = (dg["day"].max() - first_day) / DAY
    # T runs from the first purchase day to the last day observed (the day
    # before a midnight cutoff), as in Fader, Hardie & Lee's CDNOW summary.
    last_day = (cutoff - pd.Timedelta(microseconds=1)).floor("D")
    f["bg_T_days"] = (last_day - first_day) / DAY
    # Not Series.map(first_day): with no orders before the cutoff (a customer who
    # never ordered, a cutoff before the first order) the mapper is an empty
    # Series, which pandas casts to float64 and a datetime64 one cannot be.
    repeat = per_day[per_day["day"] > dg["day"].transform("min")]
    f["bg_monetary"] = repeat.groupby("customer_id")["amount"].mean().reindex(f.index).fillna(0.0)

    if data.customers is not None and population == "customers":
        c = data.customers[data.customers["signed_up_at"] < cutoff].set_index("customer_id")
        f = f.reindex(f.index.union(c.index))
        f["days_since_signup"] = (cutoff - c["signed_up_at"]).reindex(f.index) / DAY
        for col in (
            "order_count",
            "total_spend",
            "orders_30d",
            "orders_90d",
            "orders_180d",
            "orders_365d",
            "spend_90d",
            "spend_365d",
            "bg_frequency",
            "bg_recency_days",
            "bg_monetary",
        ):
            f[col] = f[col].fillna(0.0)
        f["tenure_days"] = f["tenure_days"].fillna(f["days_since_signup"])
    else:
        f["days_since_signup"] = f["tenure_days"]
    f.index.name = "customer_id"
    f = f[ORDER_FEATURES + CLV_INPUTS].astype("float64")
    return add_segments(f)


def _quintile(values: pd.Series, ascending: bool = True) -> pd.Series:
    pct = values.rank(method="average", pct=True, ascending=ascending)
    return np.ceil(pct * 5).clip(1, 5)


def add_segments(f: pd.DataFrame) -> pd.DataFrame:
    """RFM quintile scores among buyers, a named RFM segment, and a tenure band (the slices)."""
    f = f.copy()
    buyers = f["order_count"] > 0
    f["r_score"] = 0.0
    f["f_score"] = 0.0
    f["m_score"] = 0.0
    if buyers.any():
        b = f.loc[buyers]
        f.loc[buyers, "r_score"] = _quintile(-b["recency_days"])
        f.loc[buyers, "f_score"] = _quintile(b["order_count"])
        f.loc[buyers, "m_score"] = _quintile(b["total_spend"])
    f["rfm_segment"] = rfm_segment(f["r_score"], f["f_score"])
    f["tenure_band"] = tenure_band(f["tenure_days"])
    return f


def rfm_segment(r: pd.Series, fq: pd.Series) -> pd.Series:
    """A small named grid on recency and frequency scores (0 = never bought)."""
    conditions = [
        fq == 0,
        (r >= 4) & (fq >= 4),
        (r >= 3) & (fq >= 3),
        (r >= 4) & (fq <= 2),
        r >= 3,
        fq >= 3,
    ]
    choices = ["prospect", "champions", "loyal", "new", "potential", "at_risk"]
    return pd.Series(np.select(conditions, choices, default="hibernating"), index=r.index, dtype="str")


def tenure_band(tenure_days: pd.Series) -> pd.Series:
    out = pd.Series("unknown", index=tenure_days.index, dtype="str")
    for lo, hi, label in TENURE_BANDS:
        out[(tenure_days >= lo) & (tenure_days < hi)] = label
    return out


def model_columns(frame: pd.DataFrame) -> list[str]:
    """The model inputs: every numeric column but the CLV inputs and the slice columns."""
    skip = set(CLV_INPUTS) | set(SEGMENT_COLUMNS)
    return [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])]


def model_matrix(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Float64 inputs in a fixed column order (missing columns become NaN)."""
    return frame.reindex(columns=columns).astype("float64")


def join_mart(f: pd.DataFrame, mart: pd.DataFrame | None) -> pd.DataFrame:
    """Add the mart's extra columns; its rfm_segment (dbt's definition) replaces ours where present."""
    if mart is None or mart.empty:
        return f
    extra = mart.drop(columns=[c for c in mart.columns if c in f.columns and c != "rfm_segment"])
    if "rfm_segment" in extra:
        seg = extra.pop("rfm_segment").reindex(f.index)
        f = f.assign(rfm_segment=seg.where(seg.notna(), f["rfm_segment"]).astype("str"))
    return f.join(extra, how="left")


def mart_features(cutoff, url: str | None = None) -> pd.DataFrame | None:
    """The dbt mart `customer_features` computed for `cutoff`, or None when the model does not exist.

    dbt compiles the model with the `cutoff` var and the query runs read-only
    against the warehouse, so a training cutoff in the past never rewrites the
    mart the campaigns read.
    """
    from ml import dbt_features

    return dbt_features.read(cutoff, url)
