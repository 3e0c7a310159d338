"""Apply the application's migrations: `python -m warehouse.migrate` (idempotent)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


def upgrade(revision: str = "head", url: str | None = None) -> None:
    """Migrate the warehouse, or the database at `url` (benchmarks' and tests' own)."""
    if url is None:
        command.upgrade(Config(str(ALEMBIC_INI)), revision)
        return
    saved = os.environ.get("WAREHOUSE_URL")
    os.environ["WAREHOUSE_URL"] = url  # the Alembic env reads it through warehouse.settings
    try:
        command.upgrade(Config(str(ALEMBIC_INI)), revision)
    finally:
        if saved is None:
            os.environ.pop("WAREHOUSE_URL", None)
        else:
            os.environ["WAREHOUSE_URL"] = saved


if __name__ == "__main__":
    upgrade()
    print("warehouse migrations applied")
