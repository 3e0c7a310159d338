"""Apply the application's migrations: `python -m warehouse.migrate` (idempotent)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


def upgrade(revision: str = "head") -> None:
    command.upgrade(Config(str(ALEMBIC_INI)), revision)


if __name__ == "__main__":
    upgrade()
    print("warehouse migrations applied")
