"""Shared by the dbt integration tests: a warehouse database of the module's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest


@pytest.fixture(scope="module")
def dbt_warehouse(test_databases, tmp_path_factory) -> Iterator[dict]:
    """A fresh migrated warehouse for one test module, WAREHOUSE_URL pointing at it.

    dbt's artefacts go to a temporary target path, so the tests never touch
    dbt_project/target (the manifest the dbt_build DAG renders from).
    """
    from warehouse import embedded, env, migrate
    from warehouse.settings import with_database

    admin = with_database(test_databases["warehouse"], "postgres")
    name = f"test_dbt_{uuid.uuid4().hex[:8]}"
    embedded.create_database(admin, name)
    url = with_database(test_databases["warehouse"], name)
    try:
        with env.overridden({"WAREHOUSE_URL": url}):
            migrate.upgrade()
            yield {"url": url, "target": tmp_path_factory.mktemp("dbt_target")}
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def run_dbt(dbt_warehouse: dict, *args: str, **kwargs):
    from warehouse import dbt

    return dbt.run_dbt(list(args), target_path=dbt_warehouse["target"], quiet=True, **kwargs)
