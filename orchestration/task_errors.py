"""Fail a task at once on errors that would fail the same way on every retry.

A ValueError, a KeyError or SQL that cannot run fail identically on each try:
waiting `retry_delay` for them only delays the alert (and `airflow dags test`
sits the delay out too). Connection and other transient errors still retry.
"""

from __future__ import annotations

import functools

DETERMINISTIC = (ValueError, TypeError, KeyError, LookupError, ArithmeticError, AssertionError)


def fail_fast_on_bugs(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import psycopg
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return fn(*args, **kwargs)
        # ProgrammingError/DataError: SQL that cannot run (a column the models do not have yet)
        except (*DETERMINISTIC, psycopg.errors.ProgrammingError, psycopg.errors.DataError) as e:
            raise AirflowFailException(f"{type(e).__name__}: {e}") from e

    return wrapper
