"""A real dag.test() run of extract_load against the session's databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_extract_load import add_customer, add_order
from warehouse import settings

pytestmark = [pytest.mark.dags, pytest.mark.integration]


def test_extract_load_run_loads_every_table_once(shop_conn, warehouse_conn):
    from airflow.dag_processing.dagbag import DagBag

    from extract.load import SOURCE_TABLES
    from simulator.source import truncate

    truncate(shop_conn.info.dsn)
    warehouse_conn.execute(
        "truncate ops.extract_batches, " + ", ".join(f"raw.{s.raw_table}" for s in SOURCE_TABLES)
    )
    logical = datetime(2026, 5, 4, 12, tzinfo=UTC)
    add_customer(shop_conn, 7, logical - timedelta(days=3))
    add_order(shop_conn, 70, 7, logical - timedelta(days=1))

    dag = DagBag(dag_folder=str(settings.PROJECT_ROOT / "dags" / "extract_load.py")).get_dag("extract_load")
    for _ in range(2):  # a second run of the same interval changes nothing
        run = dag.test(logical_date=logical)
        assert run.state == "success"

    assert warehouse_conn.execute("select count(*) from raw.shop_orders").fetchone()[0] == 1
    assert warehouse_conn.execute("select count(*) from raw.shop_customers").fetchone()[0] == 1
    batches = warehouse_conn.execute("select count(distinct batch_id) from ops.extract_batches").fetchone()[0]
    assert batches == len(SOURCE_TABLES)
