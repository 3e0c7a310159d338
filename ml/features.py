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
    f = _order_aggregates(data.transactions, cutoff)
    if data.customers is not None and population == "customers":
        c = data.customers[data.customers["signed_up_at"] < cutoff].set_index("customer_id")
        f = f.reindex(f.index.union(c.index))
        f["days_since_signup"] = (cutoff - c["signed_up_at"]).reindex(f.index) / DAY
        zero_filled = [
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
        ]
        f[zero_filled] = f[zero_filled].fillna(0.0)
        f["tenure_days"] = f["tenure_days"].fillna(f["days_since_signup"])
    else:
        f["days_since_signup"] = f["tenure_days"]
    f.index.name = "customer_id"
    f = f[ORDER_FEATURES + CLV_INPUTS].astype("float64")
    return add_segments(f)


def _order_aggregates(transactions: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Per-customer order features from the orders strictly before `cutoff`, indexed by customer_id.

    Plain numpy over the orders sorted by (customer, time), one segment per
    customer (reduceat): the same values as pandas groupbys, without their
    fixed cost, which dominated scoring a few hundred customers at send time.
    """
    tx = transactions[transactions["ordered_at"] < cutoff]
    cid = tx["customer_id"].to_numpy(dtype=np.int64)
    at = tx["ordered_at"].to_numpy(dtype="datetime64[us]")
    amount = tx["amount"].to_numpy(dtype=np.float64)
    order = np.lexsort((at, cid))
    cid, at, amount = cid[order], at[order], amount[order]
    ids, start, counts = np.unique(cid, return_index=True, return_counts=True)
    f = pd.DataFrame(index=pd.Index(ids, name="customer_id"))
    columns = ORDER_FEATURES[:]
    columns.remove("days_since_signup")
    if len(ids) == 0:
        for col in (*columns, *CLV_INPUTS):
            f[col] = np.empty(0, dtype=np.float64)
        return f
    cut = np.datetime64(cutoff.to_datetime64(), "us")
    day_us = np.timedelta64(1, "D").astype("timedelta64[us]")

    def days(delta) -> np.ndarray:
        return delta / day_us

    first, last = at[start], at[start + counts - 1]
    order_count = counts.astype(np.float64)
    f["order_count"] = order_count
    f["total_spend"] = np.add.reduceat(amount, start)
    f["avg_order_value"] = f["total_spend"].to_numpy() / order_count
    f["max_order_value"] = np.maximum.reduceat(amount, start)
    recency = days(cut - last)
    f["recency_days"] = recency
    f["tenure_days"] = days(cut - first)
    for window in (30, 90, 180, 365):
        recent = at >= cut - np.timedelta64(window, "D")
        f[f"orders_{window}d"] = np.add.reduceat(recent.astype(np.float64), start)
        if window in (90, 365):
            f[f"spend_{window}d"] = np.add.reduceat(np.where(recent, amount, 0.0), start)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(counts > 1, days(last - first) / (order_count - 1), np.nan)
    f["mean_days_between_orders"] = between
    f["days_overdue"] = recency - between

    # BG/NBD counts repeat purchase *days*: several orders on one day are one.
    day = at.astype("datetime64[D]")
    new_day = np.ones(len(day), dtype=bool)
    new_day[1:] = (cid[1:] != cid[:-1]) | (day[1:] != day[:-1])
    day_starts = np.flatnonzero(new_day)
    day_amount = np.add.reduceat(amount, day_starts)
    n_days = np.add.reduceat(new_day.astype(np.int64), start)
    first_day = day[start]
    f["bg_frequency"] = (n_days - 1).astype(np.float64)
    f["bg_recency_days"] = days((day[start + counts - 1] - first_day).astype("timedelta64[us]"))
    # T runs from the first purchase day to the last day observed (the day
    # before a midnight cutoff), as in Fader, Hardie & Lee's CDNOW summary.
    last_day = (cut - np.timedelta64(1, "us")).astype("datetime64[D]")
    f["bg_T_days"] = days((last_day - first_day).astype("timedelta64[us]"))
    is_first_day = np.zeros(len(day_starts), dtype=bool)
    is_first_day[np.searchsorted(day_starts, start)] = True
    day_customer_starts = np.flatnonzero(is_first_day)
    repeat_spend = np.add.reduceat(np.where(is_first_day, 0.0, day_amount), day_customer_starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        f["bg_monetary"] = np.where(n_days > 1, repeat_spend / (n_days - 1), 0.0)
    return f


def _quintile(values: np.ndarray) -> np.ndarray:
    """1-5 by percentile rank (ties share their average rank; NaN stays NaN), as pandas' rank(pct=True)."""
    from scipy.stats import rankdata

    out = np.full(len(values), np.nan)
    valid = ~np.isnan(values)
    if valid.any():
        pct = rankdata(values[valid], method="average") / valid.sum()
        out[valid] = np.clip(np.ceil(pct * 5), 1, 5)
    return out


def add_segments(f: pd.DataFrame) -> pd.DataFrame:
    """RFM quintile scores among buyers, a named RFM segment, and a tenure band (the slices)."""
    buyers = f["order_count"].to_numpy() > 0
    scores = {}
    inputs = (
        ("r_score", "recency_days", -1.0),
        ("f_score", "order_count", 1.0),
        ("m_score", "total_spend", 1.0),
    )
    for name, column, sign in inputs:
        score = np.zeros(len(f))
        if buyers.any():
            score[buyers] = _quintile(sign * f[column].to_numpy(dtype=np.float64)[buyers])
        scores[name] = score
    f = f.assign(**scores)
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
    t = tenure_days.to_numpy(dtype=np.float64)
    bands = np.select(
        [(t >= lo) & (t < hi) for lo, hi, _ in TENURE_BANDS],
        [label for _, _, label in TENURE_BANDS],
        "unknown",
    )
    return pd.Series(bands, index=tenure_days.index, dtype="str")


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
