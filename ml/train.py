"""Train the VIP and churn models: time-based holdout, stratified k-fold CV, MLflow runs, registry.

For a target with an outcome window of W days and data up to `data_end`:

    train cutoff  = data_end - 2W   features before it, labels in [train cutoff, holdout cutoff)
    holdout cutoff = data_end - W   features before it, labels in [holdout cutoff, data_end)

so the holdout is strictly later than anything the models learn from.
Stratified k-fold CV runs on the training window only. One parent run per
target holds the comparison (params, plots, the promotion decision); one
nested run per candidate holds its metrics and logged model. The best
candidate on the holdout is registered and becomes `champion` only when it
beats the current champion (ml.register).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml import config, evaluate, features, labels, models, register, tracking
from ml.config import LabelWindows
from ml.data import ShopData

log = logging.getLogger(__name__)

CV_MAX_ROWS = 40_000


@dataclass
class Dataset:
    X: pd.DataFrame
    y: pd.Series
    slices: pd.DataFrame
    cutoff: pd.Timestamp


@dataclass
class TrainResult:
    target: str
    run_id: str
    train_cutoff: pd.Timestamp
    holdout_cutoff: pd.Timestamp
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate -> holdout metrics
    cv: dict[str, dict[str, float]] = field(default_factory=dict)
    challenger: str | None = None
    version: str | None = None
    decision: register.Decision | None = None
    seconds: float = 0.0


def cutoffs(
    data: ShopData, target: str, windows: LabelWindows, data_end=None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    end = pd.Timestamp(data_end).floor("D") if data_end is not None else data.data_end
    w = pd.Timedelta(days=windows.days(target))
    return end - 2 * w, end - w


MIN_WINDOW_DAYS = 7


def fit_windows(
    data: ShopData, target: str, windows: LabelWindows, data_end=None
) -> tuple[LabelWindows, int | None]:
    """The label windows to use, and the requested window when it had to shrink.

    The training cutoff (data end - 2W) needs order history before it: at
    least one window's worth, so 3W days in all. A shorter history (a demo
    shop of a few months) would put the training cutoff before the first
    order: no buyers, no churn rows, VIP labels learned from nothing. Then W
    shrinks to a third of the history (logged and recorded on the run).
    """
    import dataclasses

    end = pd.Timestamp(data_end).floor("D") if data_end is not None else data.data_end
    history = int((end - data.data_start) / pd.Timedelta(days=1))
    want = windows.days(target)
    if 3 * want <= history:
        return windows, None
    w = history // 3
    if w < MIN_WINDOW_DAYS:
        raise labels.NotEnoughHistory(
            f"{target}: {history} days of orders; training needs at least {3 * MIN_WINDOW_DAYS}"
        )
    log.warning(
        "%s: %d days of order history is less than 3 x the %d-day window; using %d days",
        target,
        history,
        want,
        w,
    )
    return dataclasses.replace(windows, **{f"{target}_days": w}), want


def dataset(data: ShopData, cutoff, target: str, windows: LabelWindows, url: str | None = None) -> Dataset:
    """Features at `cutoff` (the mart, ml.features), the target's labels after it, the slice columns."""
    f = features.at(cutoff, url)
    y = labels.build(data, f, cutoff, target, windows)
    f = f.loc[y.index]
    cols = features.model_columns(f)
    return Dataset(features.model_matrix(f, cols), y, evaluate.slices(f), pd.Timestamp(cutoff))


def cross_validate(
    name: str, target: str, X: pd.DataFrame, y: pd.Series, folds: int, seed: int
) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    n_splits = int(min(folds, y.value_counts().min())) if y.nunique() > 1 else 0
    if n_splits < 2:
        return {}
    if len(y) > CV_MAX_ROWS:  # a stratified sample bounds CV time; the final fit uses every row
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(y.index, train_size=CV_MAX_ROWS, stratify=y, random_state=seed)
        X, y = X.loc[keep], y.loc[keep]
    aucs, aps = [], []
    for train_idx, test_idx in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(X, y):
        m = models.make(name, target, seed=seed).fit(X.iloc[train_idx], y.iloc[train_idx])
        s = m.predict_proba(X.iloc[test_idx])[:, 1]
        aucs.append(roc_auc_score(y.iloc[test_idx], s))
        aps.append(average_precision_score(y.iloc[test_idx], s))
    return {
        "cv_roc_auc_mean": float(np.mean(aucs)),
        "cv_roc_auc_std": float(np.std(aucs)),
        "cv_pr_auc_mean": float(np.mean(aps)),
        "cv_folds": float(n_splits),
    }


def importance(model, name: str, X: pd.DataFrame, y: pd.Series, seed: int) -> pd.Series:
    """Permutation importance on (a sample of) the holdout, in ROC AUC points."""
    from sklearn.inspection import permutation_importance

    if y.nunique() < 2:
        return pd.Series(dtype=float)
    if len(X) > 5000:
        sample = X.sample(5000, random_state=seed).index
        X, y = X.loc[sample], y.loc[sample]
    r = permutation_importance(model, X, y, scoring="roc_auc", n_repeats=3, random_state=seed, n_jobs=1)
    return pd.Series(r.importances_mean, index=X.columns).sort_values(ascending=False)


def log_model(model, X: pd.DataFrame):
    import mlflow.sklearn
    from mlflow.models import infer_signature

    example = X.head(5).reset_index(drop=True)  # feature values only, no customer ids
    signature = infer_signature(example, model.predict_proba(example))
    return mlflow.sklearn.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=tracking.PIP_REQUIREMENTS,
        pyfunc_predict_fn="predict_proba",
        skops_trusted_types=models.TRUSTED_TYPES,
    )


@config.limited_threads
def run(
    target: str,
    data: ShopData,
    *,
    windows: LabelWindows | None = None,
    data_end=None,
    folds: int = 5,
    candidates: tuple[str, ...] = models.CANDIDATES,
    register_best: bool = True,
    promote: bool = True,
    margin: float = config.PROMOTION_MARGIN,
    seed: int = 0,
    run_name: str | None = None,
    url: str | None = None,
) -> TrainResult:
    """Train, compare and (maybe) promote the models of one target. See the module docstring."""
    import mlflow

    started = time.perf_counter()
    windows, requested_days = fit_windows(data, target, windows or LabelWindows(), data_end)
    train_cutoff, holdout_cutoff = cutoffs(data, target, windows, data_end)
    train = dataset(data, train_cutoff, target, windows, url)
    holdout = dataset(data, holdout_cutoff, target, windows, url)
    columns, dropped = features.learnable(train.X)
    if dropped:
        log.warning("%s: no values to learn from in %s; left out of the models", target, ", ".join(dropped))
    train.X = train.X[columns]
    holdout_X = features.model_matrix(holdout.X, columns)
    log.info(
        "%s: %d training rows (%.1f%% positive), %d holdout rows",
        target,
        len(train.y),
        100 * train.y.mean(),
        len(holdout.y),
    )
    if train.y.nunique() < 2 or holdout.y.nunique() < 2:
        raise ValueError(
            f"{target}: need both classes in training ({len(train.y)} rows, {int(train.y.sum())} positive) "
            f"and holdout ({len(holdout.y)} rows, {int(holdout.y.sum())} positive); "
            f"cutoffs {train_cutoff:%Y-%m-%d} / {holdout_cutoff:%Y-%m-%d}"
        )

    tracking.experiment("train")
    name = config.model_name(target)
    with (
        mlflow.start_run(run_name=run_name or f"{target} {holdout_cutoff:%Y-%m-%d}") as parent,
        tempfile.TemporaryDirectory() as tmp,
    ):
        result = TrainResult(target, parent.info.run_id, train_cutoff, holdout_cutoff)
        mlflow.set_tags(
            {
                "target": target,
                "data": data.name,
                "git_commit": tracking.git_commit() or "",
                "registered_model": name,
            }
        )
        mlflow.log_params(
            {
                "target": target,
                "label_window_days": windows.days(target),
                "label_window_requested_days": requested_days or windows.days(target),
                "vip_top_fraction": windows.vip_top_fraction,
                "train_cutoff": f"{train_cutoff:%Y-%m-%d}",
                "holdout_cutoff": f"{holdout_cutoff:%Y-%m-%d}",
                "train_rows": len(train.y),
                "holdout_rows": len(holdout.y),
                "train_positive_rate": round(float(train.y.mean()), 4),
                "holdout_positive_rate": round(float(holdout.y.mean()), 4),
                "cv_folds": folds,
                "features": ",".join(columns),
                "features_left_out": ",".join(dropped),
                "promotion_metric": config.PROMOTION_METRIC,
                "promotion_margin": margin,
            }
        )
        scores, fitted, model_uris = {}, {}, {}
        all_slices = []
        for cand in candidates:
            with mlflow.start_run(run_name=cand, nested=True):
                mlflow.set_tags(
                    {"target": target, "candidate": cand, "baseline": str(cand != "gradient_boosting")}
                )
                cv = cross_validate(cand, target, train.X, train.y, folds, seed)
                model = models.make(cand, target, seed=seed).fit(train.X, train.y)
                s = model.predict_proba(holdout_X)[:, 1]
                m = evaluate.metrics(holdout.y, s)
                sl = evaluate.slice_metrics(holdout.y, s, holdout.slices).assign(candidate=cand)
                all_slices.append(sl)
                mlflow.log_metrics({**evaluate.mlflow_metrics("holdout_", m), **cv})
                for row in sl.itertuples():
                    mlflow.log_metrics(
                        evaluate.mlflow_metrics(
                            f"slice_{row.slice}_{row.value}_",
                            {
                                "roc_auc": row.roc_auc,
                                "pr_auc": row.pr_auc,
                                "lift_top_decile": row.lift_top_decile,
                            },
                        )
                    )
                path = Path(tmp) / cand
                path.mkdir()
                sl.to_csv(path / "slice_metrics.csv", index=False)
                mlflow.log_artifact(str(path / "slice_metrics.csv"))
                evaluate_paths = evaluate.plots(holdout.y, {cand: s}, path, f"{target} / {cand}")
                for p in evaluate_paths:
                    mlflow.log_artifact(str(p), artifact_path="plots")
                info = log_model(model, train.X)
                model_uris[cand] = info.model_uri
                scores[cand], fitted[cand] = s, model
                result.metrics[cand], result.cv[cand] = m, cv

        # the comparison at the parent: every candidate on one chart, metrics by candidate
        for p in evaluate.plots(holdout.y, scores, Path(tmp) / "all", f"{target} holdout"):
            mlflow.log_artifact(str(p), artifact_path="plots")
        pd.concat(all_slices).to_csv(Path(tmp) / "slice_metrics.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "slice_metrics.csv"))
        for cand, m in result.metrics.items():
            mlflow.log_metrics(evaluate.mlflow_metrics(f"{cand}_holdout_", m))
        best = max(result.metrics, key=lambda c: np.nan_to_num(result.metrics[c]["roc_auc"], nan=-1.0))
        result.challenger = best
        mlflow.set_tag("challenger", best)
        imp = importance(fitted[best], best, holdout_X, holdout.y, seed)
        if len(imp):
            mlflow.log_artifact(
                str(evaluate.importance_plot(imp, Path(tmp), f"{target} / {best}")), artifact_path="plots"
            )
            mlflow.log_dict({k: float(v) for k, v in imp.items()}, "feature_importance.json")

        if register_best:
            result.version = register.register(
                model_uris[best],
                name,
                tags={
                    "target": target,
                    "candidate": best,
                    "training_run": parent.info.run_id,
                    "holdout_cutoff": f"{holdout_cutoff:%Y-%m-%d}",
                    "holdout_roc_auc": f"{result.metrics[best]['roc_auc']:.4f}",
                },
            )
            mlflow.set_tag("registered_version", result.version)
            if promote:
                result.decision = register.promote_if_better(
                    name, result.version, holdout_X, holdout.y, margin=margin
                )
                mlflow.set_tags(result.decision.as_tags())
                mlflow.log_param("promotion_decision", "promoted" if result.decision.promoted else "kept")
        result.seconds = time.perf_counter() - started
        mlflow.log_metric("train_seconds", result.seconds)
        mlflow.log_text(
            json.dumps({"metrics": result.metrics, "cv": result.cv}, indent=2, default=str), "summary.json"
        )
    return result
