"""The environment every service and command runs with, in one place.

`python -m warehouse.env` prints it as shell `export` lines (the Makefile sources
them); values already set in the environment win, so a deployment can point any
part elsewhere. Tests apply the same defaults.

The printed environment is the local set-up: it also sets EMAILP_ENV=development
and the secrets every process must share (LOCAL_SECRETS: the unsubscribe token
key, Airflow's JWT secret and Fernet key), each generated once into
`.local/secrets/` and read from there by `.local/env.sh`, so no secret is a
constant in the repo and every local process agrees on them. `apply_defaults`
(called by the CLI entry points) adds those secrets only in development mode: a
deployment sets them itself (docker/compose.yaml requires each one).
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

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


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()  # what Fernet.generate_key() returns


def _token() -> str:
    return secrets.token_urlsafe(32)


# Variable -> (file under .local/secrets, generator).
LOCAL_SECRETS = {
    "UNSUBSCRIBE_SECRET": ("unsubscribe_secret", _token),
    "AIRFLOW__API_AUTH__JWT_SECRET": ("airflow_jwt_secret", _token),
    "AIRFLOW__CORE__FERNET_KEY": ("airflow_fernet_key", _fernet_key),
}


def local_secret_files() -> dict[str, Path]:
    """The local set-up's secret files, each generated once (mode 0600) when missing."""
    directory = settings.LOCAL_DIR / "secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = {}
    for variable, (name, generate) in LOCAL_SECRETS.items():
        path = directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(generate())
        files[variable] = path
    return files


def apply_defaults() -> None:
    """Set every default not already in os.environ (tests and CLI entry points); in development
    mode also the local secrets."""
    for key, value in defaults().items():
        os.environ.setdefault(key, value)
    if settings.development_mode():
        for key, path in local_secret_files().items():
            os.environ.setdefault(key, path.read_text().strip())


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
    """The local set-up as `export` lines; secrets are read from their files, never printed."""
    lines = []
    for key, value in {**defaults(), "EMAILP_ENV": settings.DEVELOPMENT}.items():
        lines.append(
            f'export {key}="${{{key}:-{value}}}"'
            if "$" not in value
            else f"export {key}={shlex.quote(value)}"
        )
    for key, path in local_secret_files().items():
        lines.append(f'export {key}="${{{key}:-$(cat {shlex.quote(str(path))})}}"')
    return "\n".join(lines)


if __name__ == "__main__":
    print(shell_exports())
