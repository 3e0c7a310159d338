"""Where every part finds its databases and local state.

Each URL comes from the environment when set, so a team can point the product at
its own PostgreSQL; otherwise it is the embedded server under `.local/pg`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_DIR = Path(os.environ.get("EMAILP_LOCAL_DIR", PROJECT_ROOT / ".local"))
PG_DATA_DIR = LOCAL_DIR / "pg"

# Databases on one server: the warehouse, the source systems the simulator
# stands in for, and the metadata stores of Airflow and MLflow.
DATABASES = ("warehouse", "shop", "airflow", "mlflow")

# The channel the collector NOTIFYs after each commit to raw.events; the campaign
# wake-up trigger and the trigger_campaigns task LISTEN on it.
RAW_EVENTS_CHANNEL = "raw_events"


def embedded_url(database: str) -> str:
    """A libpq URL for a database on the embedded server (unix socket, no password)."""
    return f"postgresql://postgres@/{database}?host={PG_DATA_DIR}"


def with_database(url: str, database: str) -> str:
    """The same server's libpq URL with another database (tests' and benchmarks' own)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def warehouse_url() -> str:
    return os.environ.get("WAREHOUSE_URL") or embedded_url("warehouse")


def shop_url() -> str:
    """The shop's own database (source of extract_load)."""
    return os.environ.get("SHOP_DATABASE_URL") or embedded_url("shop")


def mlflow_tracking_uri() -> str:
    url = os.environ.get("MLFLOW_TRACKING_URI")
    if url:
        return url
    return embedded_url("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1)


def uses_embedded_server() -> bool:
    return not (os.environ.get("WAREHOUSE_URL") or os.environ.get("SHOP_DATABASE_URL"))


# EMAILP_ENV=development: the local set-up (`python -m warehouse.env`, which the Makefile and
# the tests use) allows the development write keys and secrets. Anything else, unset included,
# is a deployment: services refuse to start with a known or missing secret.
DEVELOPMENT = "development"


def development_mode() -> bool:
    return os.environ.get("EMAILP_ENV", "").strip().lower() == DEVELOPMENT
