"""The models' inputs: the dbt mart `customer_features` as of a cutoff, plus the ages ml.realtime measures.

The mart is the one definition of every batch feature (order counts and
amounts, windows, BG/NBD's inputs, browsing, email, categories, discounts,
dbt's RFM segment), so analysts can read and test each one. ML adds no
feature of its own here: only the ages measured to the scoring moment
(ml.realtime.add_ages) and transforms inside the model pipelines (ml.models).

Training needs the features as they were at past cutoffs. dbt compiles the
model once with a placeholder `cutoff` var; the compiled SELECT then runs
read-only with the real cutoff substituted, so the mart the campaigns read is
never rewritten. Scoring reads the mart as built (`current`).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from functools import cache
from pathlib import Path

import pandas as pd

from ml import realtime

MODEL = "customer_features"
MART = "marts.customer_features"
PLACEHOLDER = "2999-12-31 23:59:59.123456+00"
# The mart's moments (ages are measured from them) and its one label column.
MOMENTS = (
    "cutoff_at",
    "signed_up_at",
    "first_order_at",
    "last_order_at",
    "last_opened_at",
    "last_clicked_at",
)
LABELS = ("rfm_segment",)
# Numeric mart columns that are not model inputs: dbt's RFM scores (parts of
# the segment, which is a slice) and BG/NBD's inputs (the CLV model's own).
NOT_INPUTS = frozenset(
    {"r_score", "f_score", "m_score", "repeat_purchase_days", "purchase_span_days", "repeat_purchase_value",
     "observed_days"}
)  # fmt: skip
# A feature needs values for at least this many training rows; with fewer
# (a data set without web or email events has none) it is left out, and the
# run says which: HistGradientBoosting cannot bin an empty column, and a
# column nearly empty can be empty in a CV fold or the early-stopping split.
MIN_FEATURE_ROWS = 10


@cache
def compiled_sql(url: str) -> str:
    """The model's SELECT with the placeholder cutoff (compiled once per process and warehouse)."""
    from warehouse import dbt, env

    # dbt names relations with the database of its profile, which is `url`'s; and it prints a
    # compiled node's SQL even when quiet, which the task log needs none of
    with (
        env.overridden({"WAREHOUSE_URL": url}),
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        result = dbt.run_dbt(
            ["compile", "--select", MODEL], vars={"cutoff": PLACEHOLDER}, target_path=Path(tmp), quiet=True
        )
        nodes = [r.node for r in result.result.results if getattr(r.node, "name", None) == MODEL]
    if not nodes or PLACEHOLDER not in nodes[0].compiled_code:
        raise RuntimeError(f"dbt did not compile {MODEL} with its `cutoff` var")
    return nodes[0].compiled_code


def copy_frame(conn, sql: str, params=None) -> pd.DataFrame:
    """A SELECT's rows as a DataFrame through COPY (several times faster than fetchall)."""
    buf = io.BytesIO()
    query = conn.cursor().mogrify(sql, params) if params else sql
    with conn.cursor().copy(f"copy ({query}) to stdout with (format csv, header)") as copy:
        for chunk in copy:
            buf.write(chunk)
    buf.seek(0)
    return pd.read_csv(buf, low_memory=False)  # sparse timestamp columns: one type per column


def _utc(ts) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def at(cutoff, url: str | None = None) -> pd.DataFrame:
    """Every customer's features as of `cutoff` (the customers who had signed up by then), by customer_id."""
    import psycopg

    from ml.data import require
    from warehouse import settings

    url = url or settings.warehouse_url()
    cutoff = _utc(cutoff)
    with psycopg.connect(url) as conn:
        require(conn, MART)
        built = conn.execute(f"select max(cutoff_at) from {MART}").fetchone()[0]
        if built is not None and pd.Timestamp(built) == cutoff:
            frame = _copy_mart(conn, MART)
        else:
            frame = _copy_mart(
                conn, f"({compiled_sql(url).replace(PLACEHOLDER, cutoff.isoformat())}) as mart"
            )
    return realtime.add_ages(prepare(frame), cutoff)


def current(url: str | None = None) -> tuple[pd.DataFrame, pd.Timestamp]:
    """The mart as dbt built it, with ages at its cutoff, and that cutoff (UTC): what batch scoring reads."""
    import psycopg

    from ml.data import require
    from warehouse import settings

    with psycopg.connect(url or settings.warehouse_url()) as conn:
        require(conn, MART)
        frame = prepare(_copy_mart(conn, MART))
    if frame.empty:
        raise LookupError(f"{MART} is empty: no customer to score")
    cutoff = frame["cutoff_at"].max().tz_localize("UTC")
    return realtime.add_ages(frame, cutoff), cutoff


def _copy_mart(conn, relation: str) -> pd.DataFrame:
    """Every column of the mart (or its SELECT at a cutoff), moments as epoch microseconds: PostgreSQL
    writes and pandas parses those several times faster than timestamps as text (1M rows: ~2 s less)."""
    columns = [d.name for d in conn.execute(f"select * from {relation} limit 0").description]
    select = ", ".join(
        f"(extract(epoch from {c}) * 1000000)::bigint as {c}" if c in MOMENTS else c for c in columns
    )
    return copy_frame(conn, f"select {select} from {relation}")


def rows(conn, customer_ids) -> pd.DataFrame:
    """These customers' rows of the mart as built (send time), by customer_id."""
    from ml.data import read_sql

    return prepare(read_sql(conn, f"select * from {MART} where customer_id = any(%s)", (list(customer_ids),)))


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Typed as ML uses it: moments tz-naive UTC, the label text, every other column float64."""
    from ml.data import naive_utc

    frame = frame.set_index("customer_id")
    frame.index = frame.index.astype("int64")
    out = {}
    for col in frame.columns:
        if col in MOMENTS:  # epoch microseconds (_copy_mart) or timestamps (rows)
            values = frame[col]
            is_epoch = pd.api.types.is_numeric_dtype(values)
            out[col] = (
                pd.to_datetime(values, unit="us").astype("datetime64[us]") if is_epoch else naive_utc(values)
            )
        elif col in LABELS:
            out[col] = frame[col].astype(object).where(frame[col].notna(), None)
        else:
            out[col] = pd.to_numeric(frame[col]).astype("float64")
    return pd.DataFrame(out, index=frame.index)


def model_columns(frame: pd.DataFrame) -> list[str]:
    """The model inputs: every numeric feature but dbt's RFM scores and BG/NBD's inputs."""
    return [c for c in frame.columns if c not in NOT_INPUTS and pd.api.types.is_numeric_dtype(frame[c])]


def model_matrix(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Float64 inputs in a fixed column order (missing columns become NaN)."""
    return frame.reindex(columns=columns).astype("float64")


def learnable(X: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(columns to learn from, columns left out): a column needs MIN_FEATURE_ROWS values and two distinct ones.

    A data set lacks some features: CDNOW has orders only, so its browsing and
    email columns are zero or empty for everyone.
    """
    values = X.notna().sum()
    distinct = X.nunique()
    dropped = [c for c in X.columns if values[c] < MIN_FEATURE_ROWS or distinct[c] < 2]
    return [c for c in X.columns if c not in dropped], dropped
