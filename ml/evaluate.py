"""Metrics, per-slice metrics and plots of a scored holdout.

ROC AUC, PR AUC (average precision), lift in the top decile and the Brier
score, overall and per slice (RFM segment, tenure band). Plots are written
with matplotlib's Agg backend and logged as run artifacts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

SLICE_COLUMNS = ("rfm_segment", "tenure_band")
MIN_SLICE_ROWS = 30


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
    """Finite values only (MLflow UIs chart NaN badly), names prefixed."""
    return {f"{prefix}{k}": v for k, v in values.items() if v is not None and math.isfinite(v)}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir / "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(r, p, label=name)
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
        ax.plot(share, lift, label=name)
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
