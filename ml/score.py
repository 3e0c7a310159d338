"""Score every customer with the champion models and write the segments back.

Batch (`run`, the score_customers DAG): features at the marts' cutoff ->
vip_score, churn_score (champions of emailp-vip / emailp-churn), p_alive and
predicted_clv (champion of emailp-clv) -> segment labels -> in one
transaction: ml.customer_segments upserted by customer_id, a history row for
every customer whose labels changed, the CRM write-back (the view
ml.crm_segment_sync over customer_segments' labels_changed_at and
crm_synced_at), a scoring_runs row; then a CSV export. `scored_at` is the run's logical date, so a rerun
writes the same rows; an older run never overwrites a newer one.

Send time (`score_now`, for the campaign engine's claimed batch; `score_one`
is it for one customer): the same models, loaded once per process and
reloaded only when a champion alias moves (checked at most once a minute),
features as of the send time, one predict call per model for the batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ml import clv, config, features
from ml import data as mldata
from ml.config import SegmentThresholds

log = logging.getLogger(__name__)

VALUE_TIERS = (("high", 0.8), ("medium", 0.5))  # CLV rank percentile cut points among buyers
WRITE_COLUMNS = [
    "customer_id",
    "vip_score",
    "churn_score",
    "predicted_clv",
    "p_alive",
    "expected_purchases",
    "segment",
    "vip_segment",
    "churn_segment",
    "value_segment",
    "rfm_segment",
]


@dataclass
class Champion:
    name: str
    version: str
    model: object
    columns: list[str] | None


@dataclass
class Champions:
    vip: Champion
    churn: Champion
    clv: Champion | None

    @property
    def versions(self) -> dict[str, str | None]:
        return {
            "vip_model_version": self.vip.version,
            "churn_model_version": self.churn.version,
            "clv_model_version": self.clv.version if self.clv else None,
        }


_lock = threading.Lock()
_cache: dict[str, Champions] = {}


def _champion_versions() -> dict[str, str | None]:
    """The registered `champion` version of the VIP, churn and CLV models (None where there is none)."""
    from ml import register

    return {
        target: register.champion_version(config.model_name(target)) for target in (*config.TARGETS, "clv")
    }


def _load_versions(versions: dict[str, str | None]) -> Champions:
    """Load these versions (by number, so a promotion between lookup and load cannot mix them)."""
    import mlflow.pyfunc
    import mlflow.sklearn

    from ml import register

    loaded = {}
    for target in config.TARGETS:
        name, version = config.model_name(target), versions[target]
        if version is None:
            raise LookupError(f"{name} has no champion: run `python -m ml train` first")
        model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
        loaded[target] = Champion(name, version, model, register.input_columns(name, version))
    clv_champ = None
    name, version = config.model_name("clv"), versions.get("clv")
    if version is not None:
        wrapped = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        clv_champ = Champion(name, version, wrapped.unwrap_python_model().model, clv.INPUTS)
    return Champions(loaded["vip"], loaded["churn"], clv_champ)


def load_champions(refresh: bool = False) -> Champions:
    """The `champion` of each model, loaded once per process (per tracking URI)."""
    from ml import tracking

    uri = tracking.setup()
    with _lock:
        if not refresh and uri in _cache:
            return _cache[uri]
        _cache[uri] = _load_versions(_champion_versions())
        return _cache[uri]


@dataclass
class _Realtime:
    """The champions the send-time scorer uses in this process, and when the registry was last asked."""

    uri: str | None = None
    champions: Champions | None = None
    versions: dict[str, str | None] | None = None
    checked_at: float = float("-inf")  # when the last completed check started
    logged: str | None = None  # the last problem logged (each distinct one once)
    # threadpoolctl's controller, built once the models' libraries are loaded:
    # threadpool_limits() rescans every loaded library (~6 ms) on each call
    controller: object | None = None
    checker: threading.Thread | None = None


_realtime = _Realtime()
_realtime_lock = threading.Lock()  # guards _realtime's fields, held briefly
_check_lock = threading.Lock()  # one registry check (and model load) at a time


def realtime_champions(*, max_age_s: float | None = None, wait: bool = True) -> Champions | None:
    """The champions for send-time scoring, or None when there are none or they cannot load.

    Loaded once per process; the registry is asked at most every
    ML_CHAMPION_CHECK_S seconds (60) whether a champion alias moved, and the
    models are reloaded only then. A failure (no champion, a model that does
    not load) is logged once and retried at the next check; callers fall back
    to the batch scores meanwhile. `wait=False` (the campaign engine) never
    blocks on the registry: a due check runs in a background thread and the
    models in hand (None in a fresh process, for the ~2-4 s MLflow takes to
    import and load them) are returned meanwhile.
    """
    max_age_s = config.CHAMPION_CHECK_S if max_age_s is None else max_age_s
    requested = time.monotonic()
    with _realtime_lock:
        state = _realtime
        if requested - state.checked_at < max_age_s:
            return state.champions
        if not wait:
            if state.checker is None or not state.checker.is_alive():
                state.checker = threading.Thread(
                    target=_check_registry, args=(requested,), name="champion-check", daemon=True
                )
                state.checker.start()
            return state.champions
    _check_registry(requested)
    return _realtime.champions


def _check_registry(requested: float) -> None:
    """Ask the registry for the champion versions; (re)load the models when they moved."""
    with _check_lock:
        state = _realtime
        if state.checked_at >= requested:  # a check that started after the request has completed
            return
        started = time.monotonic()
        champions, versions, uri = state.champions, state.versions, state.uri
        problem = None
        try:
            from ml import tracking
            from warehouse.migrate import ALEMBIC_LOCK

            with ALEMBIC_LOCK:  # opening a new MLflow store runs its Alembic migrations
                uri = tracking.setup()
                versions = _champion_versions()
            if uri != state.uri or versions != state.versions or champions is None:
                champions = None
                missing = [config.model_name(t) for t in config.TARGETS if versions[t] is None]
                if missing:
                    raise LookupError(f"no champion for {', '.join(missing)}")
                t0 = time.perf_counter()
                champions = _load_versions(versions)
                if state.controller is None:
                    from threadpoolctl import ThreadpoolController

                    state.controller = ThreadpoolController()
                log.info(
                    "send-time scoring with %s (loaded in %.1f s)",
                    champions.versions,
                    time.perf_counter() - t0,
                )
        except Exception as exc:  # the engine falls back to the batch scores: never fail a send for this
            champions, problem = None, f"{type(exc).__name__}: {exc}"
        with _realtime_lock:
            state.champions, state.versions, state.uri, state.checked_at = champions, versions, uri, started
            if problem is not None and problem != state.logged:
                log.warning("send-time scoring unavailable, batch scores are used: %s", problem)
            state.logged = problem


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
    """Scores and labels for a features frame (ml.features.build, optionally joined with the mart).

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
    # "new": first order within the last few weeks (tenure counts from the first order)
    new = buyers & (frame["tenure_days"].to_numpy() < t.new_customer_days)
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


FLOAT_COLUMNS = WRITE_COLUMNS[1:6]
TEXT_COLUMNS = WRITE_COLUMNS[6:]
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8


def binary_copy_payload(scored: pd.DataFrame) -> tuple[bytes, dict[str, list[str]]]:
    """The WRITE_COLUMNS of `scored` as a COPY BINARY stream, built column-wise with numpy.

    Text labels go as 1-based codes (0 = NULL) into per-column vocabularies,
    so every row has the same layout; a text CSV of a million rows costs
    ~10x more to format in Python than this.
    """
    n = len(scored)
    fields = [("ncols", ">i2")]
    for c in WRITE_COLUMNS:
        kind = ">i8" if c == "customer_id" else (">f8" if c in FLOAT_COLUMNS else ">i4")
        fields += [(f"{c}_len", ">i4"), (c, kind)]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["ncols"] = len(WRITE_COLUMNS)
    labels: dict[str, list[str]] = {}
    for c in WRITE_COLUMNS:
        rows[f"{c}_len"] = rows.dtype[c].itemsize
        if c == "customer_id":
            rows[c] = scored.index.to_numpy(dtype=np.int64)
        elif c in FLOAT_COLUMNS:
            rows[c] = scored[c].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            codes, vocab = pd.factorize(scored[c].astype(object), use_na_sentinel=True)
            rows[c] = codes + 1
            labels[c] = [str(v) for v in vocab]
    return _BINARY_HEADER + rows.tobytes() + b"\xff\xff", labels


# segments[] is built in SQL from the label columns: every label a campaign audience can name
def segments_sql(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return (
        f"array_remove(array[{p}segment, {p}vip_segment, {p}churn_segment, "
        f"'clv_' || {p}value_segment, 'rfm_' || {p}rfm_segment], null)"
    )


SEGMENTS_SQL = segments_sql()
LABELS = "segment, vip_segment, churn_segment, value_segment, rfm_segment"

# One statement over the staged scores (labels travel as codes into their tiny
# vocabularies, NaN floats become NULL): the customers' current labels are
# read once, before the upsert changes them (every part of a statement sees
# the same snapshot); the upsert moves labels_changed_at and clears
# crm_synced_at (the CRM view, ml.crm_segment_sync) only when a label changes;
# history gets a row for exactly those customers. An older run changes nothing.
_DECODED = (
    "select customer_id, "
    + ", ".join(f"nullif({c}, 'NaN'::float8) as {c}" for c in FLOAT_COLUMNS)
    + ", "
    + ", ".join(f"(%({c})s::text[])[{c}] as {c}" for c in TEXT_COLUMNS)
    + " from _scores_raw"
)
MERGE_SQL = f"""
    with staged as not materialized ({_DECODED}),
    current_labels as (
        select s.*, c.segment as previous_segment
        from staged s
        left join ml.customer_segments c using (customer_id)
        where c.customer_id is null
           or (c.scored_at <= %(scored_at)s
               and (c.{LABELS.replace(", ", ", c.")}) is distinct from (s.{LABELS.replace(", ", ", s.")}))
    ),
    upserted as (
        insert into ml.customer_segments as c (
            customer_id, vip_score, churn_score, predicted_clv, p_alive, expected_purchases,
            segment, segments, vip_segment, churn_segment, value_segment, rfm_segment,
            vip_model_version, churn_model_version, clv_model_version, features_cutoff_at, scored_at,
            labels_changed_at, crm_synced_at)
        select customer_id, vip_score, churn_score, predicted_clv, p_alive, expected_purchases,
               segment, {SEGMENTS_SQL}, vip_segment, churn_segment, value_segment, rfm_segment,
               %(vip_model_version)s, %(churn_model_version)s, %(clv_model_version)s, %(cutoff)s, %(scored_at)s,
               %(scored_at)s, null
        from staged
        on conflict (customer_id) do update set
            vip_score = excluded.vip_score, churn_score = excluded.churn_score,
            predicted_clv = excluded.predicted_clv, p_alive = excluded.p_alive,
            expected_purchases = excluded.expected_purchases, segment = excluded.segment,
            segments = excluded.segments, vip_segment = excluded.vip_segment,
            churn_segment = excluded.churn_segment, value_segment = excluded.value_segment,
            rfm_segment = excluded.rfm_segment, vip_model_version = excluded.vip_model_version,
            churn_model_version = excluded.churn_model_version, clv_model_version = excluded.clv_model_version,
            features_cutoff_at = excluded.features_cutoff_at, scored_at = excluded.scored_at,
            labels_changed_at = case
                when (c.{LABELS.replace(", ", ", c.")}) is distinct from
                     (excluded.{LABELS.replace(", ", ", excluded.")})
                then excluded.scored_at else c.labels_changed_at end,
            crm_synced_at = case
                when (c.{LABELS.replace(", ", ", c.")}) is distinct from
                     (excluded.{LABELS.replace(", ", ", excluded.")})
                then null else c.crm_synced_at end
        where c.scored_at <= excluded.scored_at
        returning 1
    ),
    history as (
        insert into ml.customer_segment_history as h (
            customer_id, valid_from, segment, segments, vip_segment, churn_segment, value_segment, rfm_segment,
            previous_segment, vip_score, churn_score, predicted_clv,
            vip_model_version, churn_model_version, clv_model_version)
        select customer_id, %(scored_at)s, segment, {SEGMENTS_SQL}, vip_segment, churn_segment,
               value_segment, rfm_segment, previous_segment, vip_score, churn_score, predicted_clv,
               %(vip_model_version)s, %(churn_model_version)s, %(clv_model_version)s
        from current_labels
        on conflict (customer_id, valid_from) do update set
            segment = excluded.segment, segments = excluded.segments, vip_segment = excluded.vip_segment,
            churn_segment = excluded.churn_segment, value_segment = excluded.value_segment,
            rfm_segment = excluded.rfm_segment, vip_score = excluded.vip_score,
            churn_score = excluded.churn_score, predicted_clv = excluded.predicted_clv,
            vip_model_version = excluded.vip_model_version, churn_model_version = excluded.churn_model_version,
            clv_model_version = excluded.clv_model_version
        returning 1
    )
    select (select count(*) from upserted), (select count(*) from history)
"""


_STAGE_SQL = """create temp table _scores_raw (
    customer_id bigint, vip_score float8, churn_score float8, predicted_clv float8, p_alive float8,
    expected_purchases float8, segment int4, vip_segment int4, churn_segment int4, value_segment int4,
    rfm_segment int4) on commit drop"""


def _merge(conn, payload: bytes, labels: dict[str, list[str]], params: dict) -> tuple[int, int, dict]:
    """COPY one encoded batch into the staging table and merge it: (upserted, history rows, timings)."""
    t0 = time.perf_counter()
    if conn.execute("select to_regclass('pg_temp._scores_raw')").fetchone()[0] is None:
        conn.execute(_STAGE_SQL)
    else:
        conn.execute("truncate _scores_raw")
    with conn.cursor().copy(
        f"copy _scores_raw ({', '.join(WRITE_COLUMNS)}) from stdin with (format binary)"
    ) as copy:
        copy.write(payload)
    conn.execute("analyze _scores_raw")
    t1 = time.perf_counter()
    upserted, history = conn.execute(MERGE_SQL, {**params, **labels}).fetchone()
    return upserted, history, {"copy": t1 - t0, "merge": time.perf_counter() - t1}


def _record_run(conn, scored: pd.DataFrame, params: dict, extra_run: dict | None, seconds: float) -> dict:
    counts = scored["segment"].value_counts().to_dict()
    run = {"segments": {str(k): int(v) for k, v in counts.items()}, **(extra_run or {})}
    conn.execute(
        """
        insert into ml.scoring_runs (scored_at, features_cutoff_at, customers, vip_model_version,
            churn_model_version, clv_model_version, mlflow_run_id, seconds, segment_counts)
        values (%(scored_at)s, %(cutoff)s, %(customers)s, %(vip_model_version)s, %(churn_model_version)s,
                %(clv_model_version)s, %(mlflow_run_id)s, %(seconds)s, %(segment_counts)s)
        on conflict (scored_at) do update set features_cutoff_at = excluded.features_cutoff_at,
            customers = excluded.customers, vip_model_version = excluded.vip_model_version,
            churn_model_version = excluded.churn_model_version, clv_model_version = excluded.clv_model_version,
            mlflow_run_id = excluded.mlflow_run_id, seconds = excluded.seconds,
            segment_counts = excluded.segment_counts
        """,
        {
            **params,
            "customers": len(scored),
            "mlflow_run_id": (extra_run or {}).get("mlflow_run_id"),
            "seconds": seconds,
            "segment_counts": json.dumps(run),
        },
    )
    return run["segments"]


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
            payload, labels = binary_copy_payload(scored)
            timings["predict"] += t1 - t0
            timings["encode"] += time.perf_counter() - t1
            parts.append(scored)
            if len(futures) >= 2:
                futures[-2].result()  # at most one chunk waits behind the one being merged
            futures.append(writer.submit(_merge, conn, payload, labels, params))
        merged = [f.result() for f in futures]  # re-raises a failed merge
    timings["wait"] = time.perf_counter() - started - sum(timings.values())
    scored = pd.concat(parts) if parts else score_frame(frame, champions, thresholds, cuts, clv_frame)[0]
    upserted, history = sum(m[0] for m in merged), sum(m[1] for m in merged)
    for key in ("copy", "merge"):
        timings[key] = sum(m[2][key] for m in merged)  # in the writer thread, overlapping the above
    run = {"clv_cuts": cuts, **(extra_run or {})}
    segments = _record_run(conn, scored, params, run, time.perf_counter() - started)
    return scored, {
        "customers": len(scored),
        "upserted": upserted,
        "history_rows": history,
        "crm_changed": history,  # the CRM view's changed_at moves exactly when a history row is written
        "segments": segments,
        "chunks": len(merged),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def export_csv(conn, path: Path) -> Path:
    """ml.customer_segments as CSV for the CRM's file import."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with (
        open(tmp, "wb") as f,
        conn.cursor().copy(
            """copy (select customer_id, segment, array_to_string(segments, '|') as segments, vip_score,
                 churn_score, predicted_clv, p_alive, value_segment, vip_model_version, churn_model_version,
                 clv_model_version, scored_at from ml.customer_segments order by customer_id)
           to stdout with (format csv, header)"""
        ) as copy,
    ):
        for chunk in copy:
            f.write(chunk)
    tmp.replace(path)  # readers never see a half-written file
    return path


def _utc(ts) -> datetime:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def build_features(data, cutoff, url: str | None = None, use_mart: bool = True) -> pd.DataFrame:
    f = features.build(data, cutoff)
    if use_mart:
        f = features.join_mart(f, features.mart_features(cutoff, url))
    return f


@config.limited_threads
def run(
    scored_at=None,
    *,
    url: str | None = None,
    data=None,
    use_mart: bool = True,
    export: bool = True,
    thresholds: SegmentThresholds | None = None,
) -> dict:
    """The daily batch: see the module docstring. Returns a summary (counts, versions, timings)."""
    import psycopg

    from ml import data as mldata
    from warehouse import settings

    url = url or settings.warehouse_url()
    scored_at = _utc(scored_at if scored_at is not None else datetime.now(UTC).replace(microsecond=0))
    t0 = time.perf_counter()
    champions = load_champions()
    data = data if data is not None else mldata.from_warehouse(url)
    cutoff = None
    if use_mart:
        with psycopg.connect(url) as conn:
            if conn.execute("select to_regclass('marts.customer_features')").fetchone()[0] is not None:
                cutoff = conn.execute("select max(cutoff_at) from marts.customer_features").fetchone()[0]
    if cutoff is None:
        cutoff = min(pd.Timestamp(scored_at).tz_convert("UTC").tz_localize(None), data.data_end)
    cutoff = _utc(cutoff)
    frame = build_features(data, pd.Timestamp(cutoff).tz_convert("UTC").tz_localize(None), url, use_mart)
    t1 = time.perf_counter()
    with psycopg.connect(url) as conn:
        scored, summary = score_and_write(conn, frame, champions, scored_at, cutoff, thresholds=thresholds)
        conn.commit()
        t2 = time.perf_counter()
        if export:
            path = export_csv(conn, config.export_dir() / f"customer_segments_{scored_at:%Y%m%dT%H%M%S}.csv")
            summary["export"] = str(path)
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


# One round trip: which dbt relations the send-time scorer can read.
_RELATIONS_SQL = "select " + ", ".join(
    f"to_regclass('{r}')::text"
    for r in (
        *mldata.ORDER_RELATIONS,
        *mldata.CUSTOMER_RELATIONS,
        "marts.customer_features",
        "ml.scoring_runs",
    )
)


def _first(found: list[str | None], candidates: tuple[str, ...]) -> str | None:
    return next((name for name, ok in zip(candidates, found, strict=True) if ok), None)


def score_now(
    conn,
    customer_ids,
    at=None,
    *,
    champions: Champions | None = None,
    with_clv: bool = True,
    wait: bool = True,
) -> dict[int, dict]:
    """Score a batch of customers now (or `at`) with the champions, for the campaign engine at send time.

    One query each for the batch's orders, customers and mart rows; features
    as `features.build` makes them (orders strictly before `at`) plus the
    customers' rows of the dbt mart; one predict call per model for the whole
    batch. Returns {customer_id: result} for the customers the warehouse
    knows; {} when no champion is registered or the models cannot load (see
    `realtime_champions`; the caller falls back to the batch scores) or the
    dbt order and customer models do not exist yet. `with_clv=False` skips the
    CLV model (and the CLV tier label); `wait=False` never blocks on a
    registry check or a model load (see `realtime_champions`).
    """
    from ml import dbt_features

    ids = sorted({int(i) for i in customer_ids})
    champions = champions if champions is not None else realtime_champions(wait=wait)
    if champions is None or not ids:
        return {}
    at_utc = _utc(at if at is not None else datetime.now(UTC))
    cutoff = pd.Timestamp(at_utc).tz_localize(None)
    rel = _RELATION_CANDIDATES
    found = list(conn.execute(_RELATIONS_SQL).fetchone())
    orders = _first(found[: len(rel[0])], rel[0])
    customers = _first(found[len(rel[0]) : len(rel[0]) + len(rel[1])], rel[1])
    has_mart, has_runs = found[-2] is not None, found[-1] is not None
    if orders is None or customers is None:
        return {}
    tx = mldata.read_sql(
        conn,
        f"select customer_id, order_id, placed_at as ordered_at, total::float8 as amount from {orders} "
        "where is_valid and customer_id = any(%s) and placed_at < %s",
        (ids, at_utc),
    )
    cust = mldata.read_sql(
        conn, f"select customer_id, signed_up_at from {customers} where customer_id = any(%s)", (ids,)
    )
    known = set(cust["customer_id"].astype("int64")) | set(tx["customer_id"].astype("int64"))
    if not known:
        return {}
    mart = None
    if has_mart:
        rows = mldata.read_sql(
            conn, "select * from marts.customer_features where customer_id = any(%s)", (sorted(known),)
        )
        mart = dbt_features.prepare(rows) if len(rows) else None
    with_clv = with_clv and champions.clv is not None
    cuts = None
    if with_clv and has_runs:
        row = conn.execute(
            "select segment_counts -> 'clv_cuts' from ml.scoring_runs order by scored_at desc limit 1"
        ).fetchone()
        cuts = row[0] if row else None
    # a customer known only from orders (not yet in the customers model) signed up with the first order
    first_orders = tx.groupby("customer_id")["ordered_at"].min()
    extra = sorted(known - set(cust["customer_id"].astype("int64")))
    if extra:
        cust = pd.concat(
            [
                cust,
                pd.DataFrame({"customer_id": extra, "signed_up_at": first_orders.reindex(extra).to_numpy()}),
            ],
            ignore_index=True,
        )
    data = mldata.normalise(mldata.ShopData(tx, cust, name="send_time"))
    frame = features.join_mart(features.build(data, cutoff), mart)
    if frame.empty:
        return {}
    if not with_clv:
        champions = Champions(champions.vip, champions.churn, None)
    cuts = cuts or {"high": float("inf"), "medium": float("inf")}
    controller = _realtime.controller
    if controller is None:
        scored, _ = score_frame(frame, champions, cuts=cuts)
    else:
        with controller.limit(limits=config.THREADS):
            scored, _ = score_frame.__wrapped__(frame, champions, cuts=cuts)
    return _results(scored, champions, at_utc, with_clv)


_RELATION_CANDIDATES = (mldata.ORDER_RELATIONS, mldata.CUSTOMER_RELATIONS)


def _results(scored: pd.DataFrame, champions: Champions, at: datetime, with_clv: bool) -> dict[int, dict]:
    scored_at = at.isoformat()
    versions = champions.versions
    out = {}
    floats = {
        k: scored[k].to_numpy(dtype=np.float64, na_value=np.nan)
        for k in ("vip_score", "churn_score", "predicted_clv", "p_alive")
    }
    labels = {
        k: scored[k].tolist()
        for k in ("segment", "vip_segment", "churn_segment", "value_segment", "rfm_segment")
    }
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
            "scored_at": scored_at,
            **versions,
        }
    return out


def score_one(customer_id: int, *, at=None, url: str | None = None) -> dict:
    """Score one customer now (or `at`) with the champions: `score_now` for a batch of one.

    Raises LookupError without champion models, KeyError for a customer the
    warehouse does not know.
    """
    import psycopg

    from warehouse import settings

    champions = realtime_champions(max_age_s=0)
    if champions is None:
        raise LookupError("no champion models to score with: run `python -m ml train` first")
    with psycopg.connect(url or settings.warehouse_url()) as conn:
        found = score_now(conn, [customer_id], at, champions=champions)
    if int(customer_id) not in found:
        raise KeyError(f"unknown customer {customer_id}")
    return found[int(customer_id)]


# Last line: a caller that finds this module in sys.modules while another
# thread is still importing it (the campaign engine imports it in the
# background) sees a complete module only once this is set.
IMPORTED = True
