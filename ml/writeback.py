"""Writing scores back: ml.customer_segments, its history, the CRM view, the scoring run, the CSV export.

A batch of scores travels as COPY BINARY (labels as codes into tiny
vocabularies) into a temp staging table and is merged by one statement
(MERGE_SQL); ml.scoring_runs gets one row per run; `export_csv` writes the
CRM's file. ml.score decides what to write, this module how.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

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


def merge(conn, payload: bytes, labels: dict[str, list[str]], params: dict) -> tuple[int, int, dict]:
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


def record_run(conn, scored: pd.DataFrame, params: dict, extra_run: dict | None, seconds: float) -> dict:
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
