"""The dbt mart `customer_features`, computed for any cutoff without rewriting the mart.

Training needs the features as they were at past cutoffs. dbt compiles the
model once with a placeholder `cutoff` var; the compiled SELECT then runs
read-only against the warehouse with the real cutoff substituted. One
definition of every feature (the dbt model), no parallel pipeline, and the
materialised mart the campaigns read is left alone.
"""

from __future__ import annotations

import io
import logging
import tempfile
from functools import cache
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

MODEL = "customer_features"
RELATION = "marts.customer_features"
PLACEHOLDER = "2999-12-31 23:59:59.123456+00"
# Columns the order-based features of ml.features already provide; the mart's
# own versions are dropped (rfm_segment is kept: the slices use dbt's segments).
DUPLICATES = {
    "cutoff_at",
    "tenure_days",
    "order_count",
    "total_revenue",
    "average_order_value",
    "avg_days_between_orders",
    "days_since_last_purchase",
    "r_score",
    "f_score",
    "m_score",
}


@cache
def compiled_sql(url: str) -> str | None:
    """The model's SELECT with the placeholder cutoff (None when the model is missing)."""
    from warehouse import dbt

    if not (dbt.PROJECT_DIR / "models" / "marts" / f"{MODEL}.sql").exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        result = dbt.run_dbt(
            ["compile", "--select", MODEL], vars={"cutoff": PLACEHOLDER}, target_path=Path(tmp), quiet=True
        )
        nodes = [r.node for r in result.result.results if getattr(r.node, "name", None) == MODEL]
    if not nodes:
        return None
    sql = nodes[0].compiled_code
    if PLACEHOLDER not in sql:
        raise RuntimeError("customer_features no longer reads the cutoff var")
    return sql


def copy_frame(conn, sql: str, params=None) -> pd.DataFrame:
    """A SELECT's rows as a DataFrame through COPY (several times faster than fetchall)."""
    buf = io.BytesIO()
    query = conn.cursor().mogrify(sql, params) if params else sql
    with conn.cursor().copy(f"copy ({query}) to stdout with (format csv, header)") as copy:
        for chunk in copy:
            buf.write(chunk)
    buf.seek(0)
    return pd.read_csv(buf)


def read(cutoff, url: str | None = None) -> pd.DataFrame | None:
    """customer_features as of `cutoff`, indexed by customer_id, or None without the mart."""
    import psycopg

    from warehouse import settings

    url = url or settings.warehouse_url()
    cutoff = pd.Timestamp(cutoff)
    if cutoff.tzinfo is None:
        cutoff = cutoff.tz_localize("UTC")
    with psycopg.connect(url) as conn:
        current = None
        if conn.execute("select to_regclass(%s)", (RELATION,)).fetchone()[0] is not None:
            current = conn.execute(f"select max(cutoff_at) from {RELATION}").fetchone()[0]
        if current is not None and pd.Timestamp(current) == cutoff:
            frame = copy_frame(conn, f"select * from {RELATION}")
        else:
            try:
                sql = compiled_sql(url)
            except Exception as exc:  # dbt missing or broken: the order features still work
                log.warning("customer_features could not be compiled: %s", exc)
                return None
            if sql is None:
                return None
            frame = copy_frame(conn, sql.replace(PLACEHOLDER, cutoff.isoformat()))
    return prepare(frame)


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.set_index("customer_id")
    frame.index = frame.index.astype("int64")
    keep = [c for c in frame.columns if c not in DUPLICATES]
    out = frame[keep]
    for col in out.columns:
        if col != "rfm_segment" and not pd.api.types.is_numeric_dtype(out[col]):
            out = out.drop(columns=col)
    return out
