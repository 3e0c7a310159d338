"""Shared by the ML tests: warehouses whose marts dbt actually built, from the simulator or CDNOW.

The ML stages read nothing but the marts, so their tests run on marts built
the way production builds them: the shop database filled (simulator or
CDNOW loader), extracted into raw.*, `dbt build`. That takes ~30-60 s, so
each data set is built once per test process into a pair of template
databases, and every test module gets fresh copies of them
(CREATE DATABASE ... TEMPLATE, about a second), with WAREHOUSE_URL and
SHOP_DATABASE_URL pointing at the copies for the module.
"""

from __future__ import annotations

import atexit
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class DataSet:
    name: str
    end: datetime  # extraction window end: everything before it is in the warehouse
    customers: int = 0  # simulated
    days: int = 0
    seed: int = 0

    def fill_shop(self, shop_url: str) -> None:
        if self.name == "cdnow":
            from simulator import cdnow

            cdnow.load_cdnow(shop_url, sample=True)
        else:
            from simulator import generate

            spec = generate.Spec(customers=self.customers, days=self.days, seed=self.seed, end=self.end)
            generate.run(spec, shop_url)


# A small simulated shop ending today (send-time scoring scores "now"): 540
# days, so even VIP's 180-day label window fits three times.
SIMULATED = DataSet("simulated", TODAY, customers=3000, days=540, seed=11)
# The CDNOW sample (2,357 customers of 1997-1998), the published BG/NBD reference.
CDNOW = DataSet("cdnow", datetime(1998, 7, 1, tzinfo=UTC))

_templates: dict[DataSet, tuple[str, str]] = {}


def _admin(url: str) -> str:
    from warehouse.settings import with_database

    return with_database(url, "postgres")


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _drop(admin: str, *names: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'drop database if exists "{name}" with (force)')


def _template(data: DataSet, base_url: str) -> tuple[str, str]:
    """(warehouse, shop) template database names holding `data`, built once per process."""
    if data in _templates:
        return _templates[data]
    from extract.load import extract_all
    from simulator import source
    from warehouse import dbt, embedded, env, migrate
    from warehouse.settings import with_database

    admin = _admin(base_url)
    suffix = uuid.uuid4().hex[:8]
    names = (f"ml_template_{data.name}_{suffix}", f"ml_template_{data.name}_shop_{suffix}")
    for name in names:
        embedded.create_database(admin, name)
    atexit.register(_drop, admin, *names)
    warehouse_url, shop_url = (with_database(base_url, n) for n in names)
    with env.overridden({"WAREHOUSE_URL": warehouse_url, "SHOP_DATABASE_URL": shop_url}):
        migrate.upgrade()
        source.create_schema(shop_url)
        data.fill_shop(shop_url)
        extract_all(data.end)
        with tempfile.TemporaryDirectory() as target:
            dbt.run_dbt(["build"], target_path=Path(target), quiet=True)
    with psycopg.connect(admin, autocommit=True) as conn:  # a template must have no open sessions
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = any(%s)", (list(names),)
        )
    _templates[data] = names
    return names


def warehouse_of(data: DataSet, test_databases: dict) -> Iterator[dict]:
    """Fresh copies of `data`'s built warehouse and shop for one test module (env pointed at them)."""
    from warehouse import env
    from warehouse.settings import with_database

    base = test_databases["warehouse"]
    admin = _admin(base)
    templates = _template(data, base)
    suffix = uuid.uuid4().hex[:8]
    copies = (f"test_ml_{data.name}_{suffix}", f"test_ml_{data.name}_shop_{suffix}")
    with psycopg.connect(admin, autocommit=True) as conn:
        for copy, template in zip(copies, templates, strict=True):
            conn.execute(f'create database "{copy}" template "{template}"')
    urls = {
        "url": with_database(base, copies[0]),
        "shop_url": with_database(base, copies[1]),
        "end": data.end,
    }
    try:
        with env.overridden({"WAREHOUSE_URL": urls["url"], "SHOP_DATABASE_URL": urls["shop_url"]}):
            yield urls
    finally:
        _drop(admin, *copies)


@pytest.fixture(scope="module")
def simulated_warehouse(test_databases) -> Iterator[dict]:
    """A warehouse of a small simulated shop (3,000 customers, 540 days to today) built by dbt."""
    yield from warehouse_of(SIMULATED, test_databases)


@pytest.fixture(scope="module")
def cdnow_warehouse(test_databases) -> Iterator[dict]:
    """A warehouse of the CDNOW sample (orders only, 1997-1998) built by dbt."""
    yield from warehouse_of(CDNOW, test_databases)


def dag(name: str):
    """The DAG of dags/<name>.py, parsed on its own (import errors fail the test)."""
    from airflow.dag_processing.dagbag import DagBag

    from warehouse import settings

    bag = DagBag(dag_folder=str(settings.PROJECT_ROOT / "dags" / f"{name}.py"))
    assert bag.import_errors == {}
    return bag.get_dag(name)
