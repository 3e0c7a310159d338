"""Scoring at send time, and the features that must be as of the scoring moment.

The campaign engine's one call into ML:

    from ml import realtime
    found = realtime.scores(conn, customer_ids, now)   # {customer_id: score}, {} until ready

`scores` reads the batch's rows of the mart `customer_features` (one query,
on the caller's connection), adds the ages below as of `now`, and predicts
with the `champion` VIP and churn models, one call per model for the batch.
It never raises and never waits: until the ML pipeline has scored with
champions (`ml.scoring_runs` names them, asked at most every
ML_CHAMPION_CHECK_S), while the models load in a background thread (MLflow's
import and load take ~2-4 s in a fresh process), on any error (logged once),
it returns {} and the engine records the batch scores of
ml.customer_segments instead. The registry is asked at most every
ML_CHAMPION_CHECK_S whether an alias moved; the models reload only then.
Importing this module loads neither pandas nor MLflow, so a shop without
models pays nothing in its send path.

Real-time features: the ages, days from a moment the mart gives (the last
and first order, sign-up, the last open and click) to the scoring moment.
The mart is as old as the last dbt run; an age measured at send time is
exact to the second. Training (at past cutoffs) and batch scoring (at the
mart's cutoff) measure them with the same `add_ages`, so each is defined
here once and nowhere else. Every other feature is the mart's, as of its
cutoff (ml/DECISIONS.md, "Features").
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ml import config

log = logging.getLogger(__name__)

# age feature: the mart's moment it counts from (days, fractional)
AGES = {
    "recency_days": "last_order_at",
    "days_since_first_order": "first_order_at",
    "days_since_signup": "signed_up_at",
    "days_since_last_open": "last_opened_at",
    "days_since_last_click": "last_clicked_at",
}


def add_ages(frame, at):
    """`frame` (mart rows, moments tz-naive UTC) with the ages as of `at`, plus two that build on them:

    days_overdue: recency_days past the customer's mean gap between orders;
    observed_days: BG/NBD's T, whole days from the first purchase day to the
    last day observed (the day before a midnight moment).
    """
    import pandas as pd

    at = pd.Timestamp(at)
    at = at.tz_convert("UTC").tz_localize(None) if at.tzinfo is not None else at
    day = pd.Timedelta(days=1)
    ages = {name: (at - frame[moment]) / day for name, moment in AGES.items()}
    ages["days_overdue"] = ages["recency_days"] - frame["avg_days_between_orders"]
    last_day = (at - pd.Timedelta(microseconds=1)).floor("D")
    ages["observed_days"] = (last_day - frame["first_order_at"].dt.floor("D")) / day
    return frame.assign(**ages)


def scores(conn, customer_ids, at: datetime) -> dict[int, dict]:
    """The customers' VIP and churn scores as of `at`, by the champion models; {} when there are none yet.

    Each result: vip_score, churn_score, segment, segments, the model
    versions, scored_at. Never raises and never blocks on the model registry
    (see the module docstring): the send path goes on with the batch scores.
    """
    try:
        with conn.transaction():  # a failed query rolls back to here, not the caller's transaction
            if not _scoring_live(conn):
                return {}
            champions = _champions(wait=False)
            if champions is None:
                return {}
            return _score(conn, customer_ids, at, champions.without_clv())
    except Exception as exc:  # never fail a send for a score
        _log_once(f"{type(exc).__name__}: {exc}")
        return {}


def score_one(customer_id: int, *, at=None, url: str | None = None) -> dict:
    """One customer scored now (or `at`) with the champions, CLV included (`python -m ml score-one`).

    Waits for the models. Raises LookupError without champion models,
    KeyError for a customer the mart does not know.
    """
    import psycopg

    from warehouse import settings

    champions = _champions(wait=True, max_age_s=0)
    if champions is None:
        raise LookupError(f"no champion models to score with: {_state.logged}")
    with psycopg.connect(url or settings.warehouse_url()) as conn:
        found = _score(conn, [customer_id], at or datetime.now(UTC), champions)
    if int(customer_id) not in found:
        raise KeyError(f"unknown customer {customer_id}")
    return found[int(customer_id)]


@dataclass
class _State:
    """This process's send-time champions, and when the registry and the scoring runs were last asked."""

    uri: str | None = None
    champions: object | None = None  # ml.champions.Champions
    versions: dict[str, str | None] | None = None
    checked_at: float = float("-inf")  # when the last completed registry check started
    checker: threading.Thread | None = None
    # threadpoolctl's controller, built once the models' libraries are loaded:
    # threadpool_limits() rescans every loaded library (~6 ms) on each call
    controller: object | None = None
    live_checked_at: float = float("-inf")
    is_live: bool = False
    logged: str | None = None  # the last problem logged (each distinct one once)


_state = _State()
_state_lock = threading.Lock()  # guards _state's fields, held briefly
_check_lock = threading.Lock()  # one registry check (and model load) at a time


def _log_once(problem: str | None) -> None:
    with _state_lock:
        if problem is not None and problem != _state.logged:
            log.warning("send-time scoring unavailable, batch scores are used: %s", problem)
        _state.logged = problem


def _scoring_live(conn) -> bool:
    """Whether the ML pipeline has scored with champion models (ml.scoring_runs names their versions).

    Until it has, there is no model to score with, and the send path does not
    import MLflow to find that out (2-3 CPU-seconds in every new task process).
    """
    now = time.monotonic()
    if now - _state.live_checked_at >= config.CHAMPION_CHECK_S:
        _state.is_live = conn.execute(
            """select exists (select 1 from ml.scoring_runs
                              where coalesce(vip_model_version, churn_model_version) is not null)"""
        ).fetchone()[0]
        _state.live_checked_at = now
    return _state.is_live


def _champions(*, wait: bool, max_age_s: float | None = None):
    """The champions in hand (None when there are none or they cannot load).

    A due registry check runs in a background thread when not `wait`, and the
    models in hand (None in a fresh process) are returned meanwhile.
    """
    max_age_s = config.CHAMPION_CHECK_S if max_age_s is None else max_age_s
    requested = time.monotonic()
    with _state_lock:
        if requested - _state.checked_at < max_age_s:
            return _state.champions
        if not wait:
            if _state.checker is None or not _state.checker.is_alive():
                _state.checker = threading.Thread(
                    target=_check_registry, args=(requested,), name="champion-check", daemon=True
                )
                _state.checker.start()
            return _state.champions
    _check_registry(requested)
    return _state.champions


def _check_registry(requested: float) -> None:
    """Ask the registry for the champion versions; (re)load the models when they moved."""
    with _check_lock:
        if _state.checked_at >= requested:  # a check that started after the request has completed
            return
        started = time.monotonic()
        champions, versions, uri = _state.champions, _state.versions, _state.uri
        problem = None
        try:
            from ml import champions as champion_models
            from ml import features, score, tracking  # noqa: F401 - imported here, off the send path
            from warehouse.migrate import ALEMBIC_LOCK

            with ALEMBIC_LOCK:  # opening a new MLflow store runs its Alembic migrations
                uri = tracking.setup()
                versions = champion_models.versions()
            if uri != _state.uri or versions != _state.versions or champions is None:
                champions = None
                t0 = time.perf_counter()
                champions = champion_models.load(versions)
                if _state.controller is None:
                    from threadpoolctl import ThreadpoolController

                    _state.controller = ThreadpoolController()
                log.info(
                    "send-time scoring with %s (loaded in %.1f s)",
                    champions.versions,
                    time.perf_counter() - t0,
                )
        except Exception as exc:  # retried at the next check; the batch scores stand in meanwhile
            champions, problem = None, f"{type(exc).__name__}: {exc}"
        with _state_lock:
            _state.champions, _state.versions, _state.uri, _state.checked_at = (
                champions,
                versions,
                uri,
                started,
            )
        _log_once(problem)


def _score(conn, customer_ids, at, champions) -> dict[int, dict]:
    """Score these customers as of `at` with `champions` (CLV and its tier label when it has a CLV model)."""
    import pandas as pd

    from ml import features, score

    ids = sorted({int(i) for i in customer_ids})
    if not ids:
        return {}
    at = pd.Timestamp(at)
    at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
    frame = features.rows(conn, ids)
    if frame.empty:
        return {}
    frame = add_ages(frame, at)
    cuts = None
    if champions.clv is not None:
        row = conn.execute(
            "select segment_counts -> 'clv_cuts' from ml.scoring_runs order by scored_at desc limit 1"
        ).fetchone()
        cuts = row[0] if row else None
    cuts = cuts or {"high": float("inf"), "medium": float("inf")}
    if _state.controller is None:
        scored, _ = score.score_frame(frame, champions, cuts=cuts)
    else:
        with _state.controller.limit(limits=config.THREADS):
            scored, _ = score.score_frame.__wrapped__(frame, champions, cuts=cuts)
    return _results(scored, champions, at.to_pydatetime())


def _results(scored, champions, at: datetime) -> dict[int, dict]:
    import numpy as np

    with_clv = champions.clv is not None
    versions = champions.versions
    floats = {
        k: scored[k].to_numpy(dtype=np.float64, na_value=np.nan)
        for k in ("vip_score", "churn_score", "predicted_clv", "p_alive")
    }
    labels = {
        k: scored[k].tolist()
        for k in ("segment", "vip_segment", "churn_segment", "value_segment", "rfm_segment")
    }
    out = {}
    for i, cid in enumerate(scored.index.tolist()):
        value = labels["value_segment"][i] if with_clv else None
        rfm = labels["rfm_segment"][i]
        out[int(cid)] = {
            "customer_id": int(cid),
            **{k: (None if np.isnan(v[i]) else float(v[i])) for k, v in floats.items()},
            "segment": labels["segment"][i],
            "segments": [
                s
                for s in (
                    labels["segment"][i],
                    labels["vip_segment"][i],
                    labels["churn_segment"][i],
                    f"clv_{value}" if isinstance(value, str) else None,
                    f"rfm_{rfm}" if isinstance(rfm, str) else None,
                )
                if isinstance(s, str)
            ],
            "scored_at": at.isoformat(),
            **versions,
        }
    return out
