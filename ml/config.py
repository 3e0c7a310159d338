"""Knobs of the ML stages, in one place, each overridable from the environment.

The label windows and the promotion margin are modelling decisions (see
ml/DECISIONS.md); the CLI and the DAG Params pass explicit values when a run
needs others.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from warehouse import settings


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class LabelWindows:
    """Outcome windows after the cutoff (days) and the VIP share."""

    churn_days: int = field(default_factory=lambda: _env_int("ML_CHURN_WINDOW_DAYS", 90))
    vip_days: int = field(default_factory=lambda: _env_int("ML_VIP_WINDOW_DAYS", 180))
    vip_top_fraction: float = field(default_factory=lambda: _env_float("ML_VIP_TOP_FRACTION", 0.10))

    def days(self, target: str) -> int:
        return {"churn": self.churn_days, "vip": self.vip_days}[target]


@dataclass(frozen=True)
class SegmentThresholds:
    """Score thresholds that turn scores into the labels campaigns select on."""

    vip: float = field(default_factory=lambda: _env_float("ML_VIP_THRESHOLD", 0.5))
    at_risk: float = field(default_factory=lambda: _env_float("ML_AT_RISK_THRESHOLD", 0.5))
    churned: float = field(default_factory=lambda: _env_float("ML_CHURNED_THRESHOLD", 0.8))
    new_customer_days: int = field(default_factory=lambda: _env_int("ML_NEW_CUSTOMER_DAYS", 60))


TARGETS = ("churn", "vip")

# Registered model names: one per target, plus the CLV model and recommender.
MODEL_PREFIX = os.environ.get("ML_MODEL_PREFIX", "emailp")


def model_name(target: str) -> str:
    return f"{MODEL_PREFIX}-{target}"


def experiment_name(stage: str) -> str:
    return f"{MODEL_PREFIX}/{stage}"


CHAMPION_ALIAS = "champion"
# A challenger replaces the champion only when its holdout ROC AUC is higher by
# at least this much: noise between weekly runs must not flip the champion.
PROMOTION_MARGIN = _env_float("ML_PROMOTION_MARGIN", 0.005)
PROMOTION_METRIC = os.environ.get("ML_PROMOTION_METRIC", "roc_auc")

# Predicted customer lifetime value horizon.
CLV_MONTHS = _env_int("ML_CLV_MONTHS", 12)
# Monthly discount rate for CLV (lifetimes' customer_lifetime_value convention).
CLV_DISCOUNT_RATE = _env_float("ML_CLV_MONTHLY_DISCOUNT", 0.01)

RECOMMENDATIONS_PER_CUSTOMER = _env_int("ML_RECOMMENDATIONS_N", 10)


def artifact_root() -> Path:
    """Where MLflow artifacts live (experiments get artifact_location under it)."""
    return Path(os.environ.get("ML_ARTIFACT_ROOT") or settings.LOCAL_DIR / "mlflow-artifacts")


def export_dir() -> Path:
    """CSV exports of segments for the CRM."""
    return Path(os.environ.get("ML_EXPORT_DIR") or settings.LOCAL_DIR / "exports")


# Threads for the numeric libraries (OpenMP in HistGradientBoosting, OpenBLAS).
# 1 by default: on a small shared machine OpenMP's spinning barriers collapse
# under oversubscription (a 1 s HistGradientBoosting fit took 30 s at load 8
# on 2 cores; single-threaded it stays at ~1 s). Raise it on a dedicated box.
THREADS = _env_int("ML_THREADS", 1)
# Python threads that run the VIP, churn and CLV predictions of a large batch side by side.
SCORE_WORKERS = _env_int("ML_SCORE_WORKERS", 2)
# Customers per chunk of a batch scoring run: PostgreSQL merges one chunk
# while Python scores the next.
SCORE_CHUNK_ROWS = _env_int("ML_SCORE_CHUNK_ROWS", 200_000)
# Send-time scoring (ml.realtime): how often, in seconds, a process asks
# the registry whether a champion alias moved (and reloads the models if so).
CHAMPION_CHECK_S = _env_float("ML_CHAMPION_CHECK_S", 60.0)


def limited_threads(fn):
    """Run `fn` with the numeric libraries' thread pools capped at ML_THREADS."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=THREADS):
            return fn(*args, **kwargs)

    return wrapper
