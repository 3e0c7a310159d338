"""Batch scoring: every customer scored with the champion models, and the segments written back.

`run` (the score_customers DAG, `python -m ml score`): the features of the
mart `customer_features` as dbt built it (ml.features.current) -> vip_score,
churn_score (champions of emailp-vip / emailp-churn), p_alive and
predicted_clv (champion of emailp-clv) -> segment labels -> in one
transaction: ml.customer_segments upserted by customer_id, a history row for
every customer whose labels changed, the CRM write-back (the view
ml.crm_segment_sync), a scoring_runs row (ml.writeback); then a CSV export.
`scored_at` is the run's logical date, so a rerun writes the same rows; an
older run never overwrites a newer one. `score_frame` is shared with
send-time scoring (ml.realtime).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from ml import clv, config, features, writeback
from ml.champions import Champion, Champions
from ml.config import SegmentThresholds

log = logging.getLogger(__name__)

VALUE_TIERS = (("high", 0.8), ("medium", 0.5))  # CLV rank percentile cut points among buyers


def _predict(champion: Champion, frame: pd.DataFrame) -> np.ndarray:
    X = features.model_matrix(frame, champion.columns or features.model_columns(frame))
    return champion.model.predict_proba(X)[:, 1]


def _predict_all(champions: Champions, frame: pd.DataFrame, with_clv: bool = True):
    """VIP and churn probabilities and the CLV frame, the three models side by side.

    Python threads, not OpenMP: the tree predictors and scipy's special
    functions release the GIL, and each thread keeps one OpenMP thread
    (ML_THREADS), so a busy machine does not stall on spinning barriers.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    def limited(fn, *args):
        with threadpool_limits(limits=config.THREADS):  # OpenMP limits are per thread
            return fn(*args)

    with_clv = with_clv and champions.clv is not None
    if len(frame) < 50_000 or config.SCORE_WORKERS < 2:
        return (
            _predict(champions.vip, frame),
            _predict(champions.churn, frame),
            clv.predict(champions.clv.model, frame) if with_clv else None,
        )
    with ThreadPoolExecutor(config.SCORE_WORKERS) as pool:
        vip = pool.submit(limited, _predict, champions.vip, frame)
        churn = pool.submit(limited, _predict, champions.churn, frame)
        c = pool.submit(limited, clv.predict, champions.clv.model, frame) if with_clv else None
        return vip.result(), churn.result(), c.result() if c is not None else None


def value_cuts(predicted_clv: pd.Series, buyers: pd.Series) -> dict[str, float]:
    values = predicted_clv[buyers]
    if values.empty:
        return {tier: float("inf") for tier, _ in VALUE_TIERS}
    return {tier: float(values.quantile(q)) for tier, q in VALUE_TIERS}


@config.limited_threads
def score_frame(
    frame: pd.DataFrame,
    champions: Champions,
    thresholds: SegmentThresholds | None = None,
    cuts: dict[str, float] | None = None,
    clv_frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Scores and labels for a features frame (ml.features: the mart's rows with their ages).

    `clv_frame`: CLV predictions already made for these rows (a chunk of a
    batch whose CLV tiers were cut over every customer).
    """
    t = thresholds or SegmentThresholds()
    out = pd.DataFrame(index=frame.index)
    buyers = frame["order_count"].to_numpy() > 0
    vip, churn, c = _predict_all(champions, frame, with_clv=clv_frame is None)
    c = clv_frame if clv_frame is not None else c
    out["vip_score"] = vip
    out["churn_score"] = np.where(buyers, churn, np.nan)
    if c is not None:
        out["predicted_clv"] = c["predicted_clv"].to_numpy()
        out["p_alive"] = c["p_alive"].to_numpy()
        out["expected_purchases"] = c["expected_purchases"].to_numpy()
    else:
        out["predicted_clv"] = out["p_alive"] = out["expected_purchases"] = np.nan
    out["rfm_segment"] = frame["rfm_segment"] if "rfm_segment" in frame else None
    cuts = cuts or value_cuts(out["predicted_clv"], pd.Series(buyers, index=frame.index))
    label_segments(out, frame, buyers, t, cuts)
    return out, cuts


def label_segments(
    out: pd.DataFrame, frame: pd.DataFrame, buyers: np.ndarray, t: SegmentThresholds, cuts: dict[str, float]
) -> None:
    vip = out["vip_score"].to_numpy() >= t.vip
    churn = np.nan_to_num(out["churn_score"].to_numpy(), nan=0.0)
    churned = buyers & (churn >= t.churned)
    at_risk = buyers & ~churned & (churn >= t.at_risk)
    # "new": first order within the last few weeks
    new = buyers & (frame["days_since_first_order"].to_numpy() < t.new_customer_days)
    out["vip_segment"] = np.where(vip, "vip", None)
    out["churn_segment"] = np.where(churned, "churned", np.where(at_risk, "at_risk", None))
    clv_values = np.nan_to_num(out["predicted_clv"].to_numpy(), nan=0.0)
    out["value_segment"] = np.where(
        ~buyers,
        "low",
        np.where(clv_values >= cuts["high"], "high", np.where(clv_values >= cuts["medium"], "medium", "low")),
    )
    out["segment"] = np.select(
        [~buyers, churned, vip, at_risk, new],
        ["prospect", "churned", "vip", "at_risk", "new"],
        default="active",
    )


@config.limited_threads
def score_and_write(
    conn,
    frame: pd.DataFrame,
    champions: Champions,
    scored_at: datetime,
    cutoff: datetime,
    *,
    thresholds: SegmentThresholds | None = None,
    extra_run: dict | None = None,
    chunk_rows: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Score a whole batch and write it back (segments, history, scoring run), in chunks:
    PostgreSQL merges one chunk while the next is scored.

    The CLV tiers are cut over every customer first (CLV is predicted once
    for the whole frame), so chunking does not change a single label. One
    writer thread owns `conn` until every chunk is merged; the caller's
    transaction holds all of it. Returns (scored frame, summary).
    """
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    chunk_rows = chunk_rows or config.SCORE_CHUNK_ROWS
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index()  # id-ordered chunks: index inserts and lookups stay local
    params = {"scored_at": scored_at, "cutoff": cutoff, **champions.versions}
    buyers = pd.Series(frame["order_count"].to_numpy() > 0, index=frame.index)
    clv_frame = clv.predict(champions.clv.model, frame) if champions.clv is not None else None
    cuts = value_cuts(
        clv_frame["predicted_clv"] if clv_frame is not None else pd.Series(np.nan, index=frame.index), buyers
    )
    parts, futures = [], []
    timings = {"clv": time.perf_counter() - started, "predict": 0.0, "encode": 0.0}
    with ThreadPoolExecutor(1, thread_name_prefix="score-writer") as writer:
        for start in range(0, len(frame), chunk_rows):
            t0 = time.perf_counter()
            rows = slice(start, start + chunk_rows)
            scored, _ = score_frame(
                frame.iloc[rows],
                champions,
                thresholds,
                cuts,
                clv_frame=clv_frame.iloc[rows] if clv_frame is not None else None,
            )
            t1 = time.perf_counter()
            payload, labels = writeback.binary_copy_payload(scored)
            timings["predict"] += t1 - t0
            timings["encode"] += time.perf_counter() - t1
            parts.append(scored)
            if len(futures) >= 2:
                futures[-2].result()  # at most one chunk waits behind the one being merged
            futures.append(writer.submit(writeback.merge, conn, payload, labels, params))
        merged = [f.result() for f in futures]  # re-raises a failed merge
    timings["wait"] = time.perf_counter() - started - sum(timings.values())
    scored = pd.concat(parts) if parts else score_frame(frame, champions, thresholds, cuts, clv_frame)[0]
    upserted, history = sum(m[0] for m in merged), sum(m[1] for m in merged)
    for key in ("copy", "merge"):
        timings[key] = sum(m[2][key] for m in merged)  # in the writer thread, overlapping the above
    run = {"clv_cuts": cuts, **(extra_run or {})}
    segments = writeback.record_run(conn, scored, params, run, time.perf_counter() - started)
    return scored, {
        "customers": len(scored),
        "upserted": upserted,
        "history_rows": history,
        "crm_changed": history,  # the CRM view's changed_at moves exactly when a history row is written
        "segments": segments,
        "chunks": len(merged),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def _utc(ts) -> datetime:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


@config.limited_threads
def run(
    scored_at=None,
    *,
    url: str | None = None,
    export: bool = True,
    thresholds: SegmentThresholds | None = None,
) -> dict:
    """The batch: see the module docstring. Returns a summary (counts, versions, timings)."""
    import psycopg

    from ml import champions as champion_models
    from warehouse import settings

    url = url or settings.warehouse_url()
    scored_at = _utc(scored_at if scored_at is not None else datetime.now(UTC).replace(microsecond=0))
    t0 = time.perf_counter()
    champions = champion_models.current()
    frame, cutoff = features.current(url)
    cutoff = cutoff.to_pydatetime()
    t1 = time.perf_counter()
    with psycopg.connect(url) as conn:
        scored, summary = score_and_write(conn, frame, champions, scored_at, cutoff, thresholds=thresholds)
        conn.commit()
        t2 = time.perf_counter()
        if export:
            name = f"customer_segments_{scored_at:%Y%m%dT%H%M%S}.csv"
            summary["export"] = str(writeback.export_csv(conn, config.export_dir() / name))
    summary.update(
        scored_at=scored_at.isoformat(),
        features_cutoff_at=cutoff.isoformat(),
        **champions.versions,
        seconds={
            "features": t1 - t0,
            "score_and_write": t2 - t1,
            "export": time.perf_counter() - t2,
            "total": time.perf_counter() - t0,
        },
    )
    log.info("scored %d customers at %s: %s", len(scored), scored_at, summary["segments"])
    return summary
