"""Test fixtures on real services.

Each test module gets its own fresh `warehouse` and `shop` databases on the
embedded PostgreSQL (or on the server WAREHOUSE_URL points at), migrated from
scratch and dropped afterwards, so no test module sees another's data (a
concurrent session's neither).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from warehouse import env, settings

env.apply_defaults()


@pytest.fixture(scope="module")
def test_databases() -> Iterator[dict[str, str]]:
    """Fresh migrated warehouse and shop databases; sets WAREHOUSE_URL/SHOP_DATABASE_URL."""
    from warehouse import embedded, migrate

    base = os.environ["WAREHOUSE_URL"]
    if settings.PG_DATA_DIR.as_posix() in base:
        embedded.start()
    admin = settings.with_database(base, "postgres")
    suffix = uuid.uuid4().hex[:8]
    urls = {
        "warehouse": settings.with_database(base, f"test_warehouse_{suffix}"),
        "shop": settings.with_database(base, f"test_shop_{suffix}"),
    }
    for url in urls.values():
        embedded.create_database(admin, urlsplit(url).path.lstrip("/"))
    try:
        with env.overridden({"WAREHOUSE_URL": urls["warehouse"], "SHOP_DATABASE_URL": urls["shop"]}):
            migrate.upgrade()
            from simulator import source

            source.create_schema(urls["shop"])
            yield urls
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for url in urls.values():
                name = urlsplit(url).path.lstrip("/")
                conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def warehouse_conn(test_databases) -> Iterator[psycopg.Connection]:
    with psycopg.connect(test_databases["warehouse"], autocommit=True) as conn:
        yield conn


@pytest.fixture
def shop_conn(test_databases) -> Iterator[psycopg.Connection]:
    with psycopg.connect(test_databases["shop"], autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def project_root() -> Path:
    return settings.PROJECT_ROOT


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> Iterator[Path]:
    """A throwaway sqlite MLflow store and artifact/export folders for the module."""
    root = tmp_path_factory.mktemp("mlflow")
    values = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "ML_ARTIFACT_ROOT": str(root / "artifacts"),
        "ML_EXPORT_DIR": str(root / "exports"),
    }
    with env.overridden(values):
        yield root


@pytest.fixture
def sink(tmp_path, monkeypatch):
    """A local SMTP sink on a free port, as the engine's SMTP connection and SMTP_SINK_DIR."""
    from harness.smtp_sink import SmtpSink, free_port

    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_CAMPAIGNS", f"smtp://127.0.0.1:{port}")
    monkeypatch.setenv("SMTP_SINK_DIR", str(tmp_path / "outbox"))
    s = SmtpSink(tmp_path / "outbox", port).start()
    yield s
    s.stop()
