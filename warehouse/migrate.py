"""Apply the application's migrations: `python -m warehouse.migrate` (idempotent)."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

from warehouse import env

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


# Alembic's `context` and `op` are process-wide proxies: two migrations in one
# process must not interleave. MLflow migrates its own store with Alembic the
# first time a process opens it (ml.score does so in a background thread), so
# both hold this lock.
ALEMBIC_LOCK = threading.Lock()


def upgrade(revision: str = "head", url: str | None = None) -> None:
    """Migrate the warehouse, or the database at `url` (benchmarks' and tests' own)."""
    with ALEMBIC_LOCK:
        if url is None:
            command.upgrade(Config(str(ALEMBIC_INI)), revision)
            return
        # the Alembic env reads the URL through warehouse.settings
        with env.overridden({"WAREHOUSE_URL": url}):
            command.upgrade(Config(str(ALEMBIC_INI)), revision)


if __name__ == "__main__":
    upgrade()
    print("warehouse migrations applied")
