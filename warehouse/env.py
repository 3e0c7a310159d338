"""The environment every service and command runs with, in one place.

`python -m warehouse.env` prints it as shell `export` lines (the Makefile sources
them); values already set in the environment win, so a deployment can point any
part elsewhere. Tests apply the same defaults.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from warehouse import settings


def defaults() -> dict[str, str]:
    local = settings.LOCAL_DIR
    airflow_db = settings.embedded_url("airflow").replace("postgresql://", "postgresql+psycopg2://", 1)
    return {
        "AIRFLOW_HOME": str(local / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # LocalExecutor pre-spawns one ~150 MB worker per slot: 2 cores need few.
        "AIRFLOW__CORE__PARALLELISM": "6",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "AIRFLOW__COSMOS__CACHE_DIR": str(local / "cosmos"),
        "DO_NOT_TRACK": "1",
        "SCARF_ANALYTICS": "false",
        "WAREHOUSE_URL": settings.warehouse_url(),
        "SHOP_DATABASE_URL": settings.shop_url(),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri(),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }


def apply_defaults() -> None:
    """Set every default not already in os.environ (tests and CLI entry points)."""
    for key, value in defaults().items():
        os.environ.setdefault(key, value)


@contextmanager
def overridden(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shell_exports() -> str:
    lines = []
    for key, value in defaults().items():
        lines.append(
            f'export {key}="${{{key}:-{value}}}"'
            if "$" not in value
            else f"export {key}={shlex.quote(value)}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(shell_exports())
