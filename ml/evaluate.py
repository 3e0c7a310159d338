"""Metrics, per-slice metrics and plots of a scored holdout.

ROC AUC, PR AUC (average precision), lift in the top decile and the Brier
score, overall and per slice (dbt's RFM segment, tenure band since the first
order). Plots are written with matplotlib's Agg backend and logged as run
artifacts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

SLICE_COLUMNS = ("rfm_segment", "tenure_band")
MIN_SLICE_ROWS = 30
TENURE_BANDS = [(-np.inf, 90, "0-3m"), (90, 365, "3-12m"), (365, 730, "1-2y"), (730, np.inf, "2y+")]


def slices(frame: pd.DataFrame) -> pd.DataFrame:
    """The slice columns of a features frame: dbt's RFM segment and the tenure band ("no orders" for neither)."""
    tenure = frame["days_since_first_order"].to_numpy(dtype=np.float64)
    bands = np.select(
        [(tenure >= lo) & (tenure < hi) for lo, hi, _ in TENURE_BANDS],
        [b for *_, b in TENURE_BANDS],
        "no orders",
    )
    rfm = frame["rfm_segment"].where(frame["rfm_segment"].notna(), "no orders").astype(str)
    return pd.DataFrame({"rfm_segment": rfm, "tenure_band": bands}, index=frame.index)


def top_decile_lift(y: np.ndarray, score: np.ndarray, fraction: float = 0.10) -> float:
    y = np.asarray(y, dtype=float)
    base = y.mean()
    if len(y) == 0 or base == 0:
        return float("nan")
    k = max(1, int(math.ceil(fraction * len(y))))
    top = np.argsort(-np.asarray(score, dtype=float), kind="stable")[:k]
    return float(y[top].mean() / base)


def metrics(y, score) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y, dtype=int)
    score = np.clip(np.asarray(score, dtype=float), 0.0, 1.0)
    out = {"rows": float(len(y)), "positive_rate": float(y.mean()) if len(y) else float("nan")}
    if len(np.unique(y)) < 2:
        out.update(roc_auc=float("nan"), pr_auc=float("nan"), lift_top_decile=float("nan"))
    else:
        out.update(
            roc_auc=float(roc_auc_score(y, score)),
            pr_auc=float(average_precision_score(y, score)),
            lift_top_decile=top_decile_lift(y, score),
        )
    out["brier"] = float(brier_score_loss(y, score)) if len(y) else float("nan")
    return out


def slice_metrics(y, score, slices: pd.DataFrame) -> pd.DataFrame:
    """One row per (slice column, value) with at least MIN_SLICE_ROWS rows."""
    y = pd.Series(np.asarray(y), index=slices.index)
    score = pd.Series(np.asarray(score), index=slices.index)
    rows = []
    for column in SLICE_COLUMNS:
        if column not in slices:
            continue
        for value, idx in slices.groupby(column, sort=True).groups.items():
            if len(idx) < MIN_SLICE_ROWS:
                continue
            rows.append({"slice": column, "value": str(value), **metrics(y[idx], score[idx])})
    return pd.DataFrame(rows)


def mlflow_metrics(prefix: str, values: dict[str, float]) -> dict[str, float]:
    """Finite values only (MLflow UIs chart NaN badly), names prefixed and made valid.

    MLflow names allow alphanumerics and _-. :/ only: a slice value such as
    the tenure band "2y+" becomes "2y_plus".
    """
    return {_metric_name(f"{prefix}{k}"): v for k, v in values.items() if v is not None and math.isfinite(v)}


def _metric_name(name: str) -> str:
    import re

    return re.sub(r"[^\w\-. :/]", "_", name.replace("+", "_plus"))


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MAX_CURVE_POINTS = 2000


def _thin(*curves: np.ndarray) -> tuple[np.ndarray, ...]:
    """At most MAX_CURVE_POINTS evenly spaced points of each curve (ends kept).

    A 100k-row holdout draws 100k-vertex lines otherwise; at 5 inches the
    thinned curve looks the same and renders in a fraction of the time.
    """
    n = len(curves[0])
    if n <= MAX_CURVE_POINTS:
        return curves
    idx = np.unique(np.linspace(0, n - 1, MAX_CURVE_POINTS).round().astype(np.int64))
    return tuple(np.asarray(c)[idx] for c in curves)


def plots(y, scores: dict[str, np.ndarray], out_dir: Path, title: str) -> list[Path]:
    """ROC, PR, cumulative lift and calibration curves for one or more models' scores."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _figure()
    out_dir.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y, dtype=int)
    paths = []
    if len(np.unique(y)) < 2:
        return paths

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(*_thin(fpr, tpr), label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir / "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(*_thin(r, p), label=name)
    ax.axhline(y.mean(), color="k", ls="--", lw=0.8)
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall: {title}")
    ax.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out_dir / "pr.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        order = np.argsort(-np.asarray(s), kind="stable")
        hits = np.cumsum(y[order])
        share = np.arange(1, len(y) + 1) / len(y)
        lift = (hits / np.arange(1, len(y) + 1)) / y.mean()
        ax.plot(*_thin(share, lift), label=name)
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.axvline(0.1, color="grey", ls=":", lw=0.8)
    ax.set(xlabel="share of customers targeted (by score)", ylabel="cumulative lift", title=f"Lift: {title}")
    ax.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out_dir / "lift.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        frac, mean_pred = calibration_curve(y, np.clip(s, 0, 1), n_bins=10, strategy="quantile")
        ax.plot(mean_pred, frac, marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=f"Calibration: {title}")
    ax.legend(loc="upper left", fontsize=8)
    paths.append(_save(fig, out_dir / "calibration.png"))
    return paths


def importance_plot(importance: pd.Series, out_dir: Path, title: str) -> Path:
    plt = _figure()
    importance = importance.sort_values()
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(importance))))
    ax.barh(importance.index, importance.to_numpy())
    ax.set(xlabel="importance (drop in ROC AUC when permuted)", title=f"Feature importance: {title}")
    return _save(fig, out_dir / "feature_importance.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def against_truth(scored: pd.DataFrame, truth: pd.DataFrame, cutoff) -> dict:
    """VIP and churn scores against the simulator's latent behaviour types.

    VIP truth: behaviour_type loyal_high_spender. Churn truth (customers with
    a churn score, i.e. buyers): a churning type whose churned_at is before
    the features' cutoff, or a one-time buyer; everyone else is still buying.
    """
    cutoff = pd.Timestamp(cutoff)
    cutoff = cutoff.tz_convert("UTC").tz_localize(None) if cutoff.tzinfo else cutoff
    t = truth.set_index("customer_id")
    s = scored.set_index("customer_id").join(t, how="inner")
    churned_at = pd.to_datetime(s["churned_at"])
    if getattr(churned_at.dt, "tz", None) is not None:
        churned_at = churned_at.dt.tz_convert("UTC").dt.tz_localize(None)
    vip_truth = (s["behaviour_type"] == "loyal_high_spender").astype(int)
    gone = ((s["behaviour_type"] == "churning") & (churned_at < cutoff)) | (s["behaviour_type"] == "one_time")
    buyers = s["churn_score"].notna()
    out = {
        "customers": int(len(s)),
        "vip": metrics(vip_truth, s["vip_score"].fillna(0)),
        "churn": metrics(gone[buyers].astype(int), s.loc[buyers, "churn_score"]),
    }
    if "p_alive" in s:
        alive = s["p_alive"].notna() & buyers
        out["churn_p_alive_baseline"] = metrics(gone[alive].astype(int), 1 - s.loc[alive, "p_alive"])
    return out


def truth_report(url: str | None = None, shop_url: str | None = None, log_mlflow: bool = True) -> dict:
    """Read ml.customer_segments (warehouse) and simulator.customer_truth (shop DB) and compare."""
    import psycopg

    from ml.data import read_sql
    from warehouse import settings

    with psycopg.connect(url or settings.warehouse_url()) as conn:
        scored = read_sql(
            conn,
            "select customer_id, vip_score, churn_score, p_alive, features_cutoff_at "
            "from ml.customer_segments",
        )
    with psycopg.connect(shop_url or settings.shop_url()) as conn:
        truth = read_sql(conn, "select customer_id, behaviour_type, churned_at from simulator.customer_truth")
    if scored.empty or truth.empty:
        raise LookupError("need scored customers and simulator ground truth")
    report = against_truth(scored, truth, scored["features_cutoff_at"].max())
    if log_mlflow:
        import mlflow

        from ml import tracking

        tracking.experiment("truth")
        with mlflow.start_run(run_name="scores vs simulator ground truth"):
            for key in ("vip", "churn", "churn_p_alive_baseline"):
                if key in report:
                    mlflow.log_metrics(mlflow_metrics(f"{key}_", report[key]))
            mlflow.log_dict(report, "truth_report.json")
    return report
