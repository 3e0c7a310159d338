"""Rows the trigger ingest set aside, and how one bad row is kept from stopping the rest.

Input from outside is hostile: a client's event, a row of an export or of a
batch audience can hold what the ingest cannot use (a timestamp out of range,
a quantity that is not a number, an id too large for a bigint). Such a row is
written to ops.dead_letters (its stage, its key there, the error; never the
row itself, which may be personal data) in the ingest's transaction, so the
cursor moves past it and every other row is applied. It is logged (the
Airflow task log shows it) and `python -m campaigns dead-letters` lists it.

`apply_rows` is the safety net for what no check foresaw: it applies a page of
rows in a savepoint and, if a row makes that fail, halves the page until the
rows that fail on their own are found (about 2 x log2(n) extra applies for one
bad row among n).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ERROR_CHARS = 500
LOGGED_PER_CALL = 20  # a flood of bad rows is counted, not logged line by line

# Errors a row's content can cause. Anything else (the connection lost, a
# deadlock, a statement timeout) is not the row's fault: it propagates and the
# whole ingest is retried, nothing is set aside.
ROW_FAULTS = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    ArithmeticError,
    RecursionError,
)


def record(conn: psycopg.Connection, stage: str, letters: Iterable[tuple[str, str]]) -> int:
    """Set aside rows of `stage` as (key, error) pairs; returns how many were new (a row
    read again, in the ingest's overlap, is recorded and logged once)."""
    # PostgreSQL text holds no NUL, and an exception's message may quote the row
    pairs = [(str(key), error[:MAX_ERROR_CHARS].replace("\x00", "\\x00")) for key, error in letters]
    if not pairs:
        return 0
    new = set(
        conn.execute(
            """insert into ops.dead_letters (stage, source_key, error)
               select %s, k, e from unnest(%s::text[], %s::text[]) as l (k, e)
               on conflict (stage, source_key) do nothing
               returning source_key""",
            (stage, [k for k, _ in pairs], [e for _, e in pairs]),
        ).fetchall()
    )
    letters = [(key, error) for key, error in pairs if (key,) in new]
    for key, error in letters[:LOGGED_PER_CALL]:
        log.warning("set aside a row of %s (%s): %s", stage, key, error)
    if len(letters) > LOGGED_PER_CALL:
        log.warning("set aside %d more rows of %s", len(letters) - LOGGED_PER_CALL, stage)
    return len(letters)


def is_row_fault(conn: psycopg.Connection, exc: BaseException) -> bool:
    return isinstance(exc, ROW_FAULTS) and not conn.broken


def apply_rows(
    conn: psycopg.Connection,
    stage: str,
    rows: list[dict],
    apply: Callable[[list[dict]], T],
    key: str,
) -> tuple[list[T], int]:
    """`apply(rows)` in a savepoint; if a row makes it fail, the rows are halved until
    the rows that fail alone are found and set aside (`row[key]` names them).
    Returns the results of the applies that succeeded and how many rows were set aside."""
    if not rows:
        return [], 0
    try:
        with conn.transaction():
            return [apply(rows)], 0
    except Exception as exc:
        if not is_row_fault(conn, exc):
            raise
        if len(rows) == 1:
            return [], record(conn, stage, [(rows[0][key], f"{type(exc).__name__}: {exc}")])
    half = len(rows) // 2
    first, first_bad = apply_rows(conn, stage, rows[:half], apply, key)
    second, second_bad = apply_rows(conn, stage, rows[half:], apply, key)
    return first + second, first_bad + second_bad


def listing(conn: psycopg.Connection, stage: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The latest dead letters, newest first (of one stage when given)."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(
        """select created_at, stage, source_key, error from ops.dead_letters
           where %(stage)s::text is null or stage = %(stage)s
           order by created_at desc, dead_letter_id desc limit %(limit)s""",
        {"stage": stage, "limit": limit},
    ).fetchall()
