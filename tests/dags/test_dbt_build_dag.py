"""dbt_build: renders one task group per dbt node from the manifest, is wired by Assets, and runs."""

from __future__ import annotations

import json
import os

import pytest

from tests.integration import dbt_scenario as scenario
from tests.integration import dbt_support
from warehouse import settings

dbt_warehouse = dbt_support.dbt_warehouse  # the module's own warehouse (fixture)

pytestmark = pytest.mark.dags

DAG_FILE = settings.PROJECT_ROOT / "dags" / "dbt_build.py"


@pytest.fixture(scope="module")
def manifest() -> dict:
    """The manifest the DAG renders from (dbt_project/target/manifest.json), freshly parsed."""
    from warehouse import dbt

    return json.loads(dbt.parse().read_text())


def load_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.get_dag("dbt_build")


def test_every_model_is_a_task_followed_by_its_tests(manifest):
    dag = load_dag()
    task_ids = set(dag.task_ids)
    nodes = [n for n in manifest["nodes"].values() if n["resource_type"] == "model"]
    # ephemeral models are inlined into the models that read them: no task
    ephemeral = [n["name"] for n in nodes if n["config"]["materialized"] == "ephemeral"]
    models = [n["name"] for n in nodes if n["name"] not in ephemeral]
    assert len(models) >= 20
    assert ephemeral and not any(f"dbt.{model}.run" in task_ids for model in ephemeral)
    for model in models:
        assert f"dbt.{model}.run" in task_ids
        run = dag.get_task(f"dbt.{model}.run")
        tests = [t for t in run.downstream_task_ids if t.startswith(f"dbt.{model}.")]
        if f"dbt.{model}.test" in task_ids:
            assert tests == [f"dbt.{model}.test"]
    assert "dbt.customer_rfm_snapshot.snapshot" in task_ids
    # incremental events before sessions before marts
    assert "dbt.int_events_stitched.test" in dag.get_task("dbt.int_sessions_inferred.run").upstream_task_ids


def test_scheduled_on_raw_assets_and_emits_marts_assets(manifest):
    from orchestration.assets import MARTS, RAW

    dag = load_dag()
    scheduled_on = {asset.uri for asset in dag.timetable.asset_condition.objects}
    assert scheduled_on == {asset.uri for asset in RAW.values()}
    publish = dag.get_task("publish_marts")
    assert {outlet.uri for outlet in publish.outlets} == {asset.uri for asset in MARTS.values()}
    assert publish.upstream_task_ids  # after the whole dbt group
    # every mart the Assets name is a model of the project
    models = {n["name"] for n in manifest["nodes"].values() if n["resource_type"] == "model"}
    assert set(MARTS) <= models


def test_without_a_manifest_the_dag_still_imports(monkeypatch, tmp_path):
    from warehouse import dbt

    monkeypatch.setattr(dbt, "MANIFEST_PATH", tmp_path / "missing.json")
    dag = load_dag()
    assert set(dag.task_ids) == {"parse_and_build", "publish_marts"}


def test_operators_take_the_profile_from_the_runtime_environment(manifest):
    dag = load_dag()
    run = dag.get_task("dbt.customer_rfm.run")
    assert run.env["DBT_WAREHOUSE_HOST"].startswith("{{")  # rendered in the worker, not at parse time
    assert run.append_env is True


@pytest.mark.integration
@pytest.mark.slow
def test_dbt_tasks_run_and_the_marts_assets_are_emitted(manifest, dbt_warehouse):
    """Two Cosmos tasks (a model and its tests) and publish_marts, through dag.test()."""
    import psycopg

    scenario.load_batch(dbt_warehouse["url"], 1)
    dag = load_dag().partial_subset(
        task_ids=["dbt.stg_shop__customers.run", "dbt.stg_shop__customers.test", "publish_marts"],
        include_upstream=False,
    )
    run = dag.test(logical_date=scenario.LOADED_1)
    assert run.state == "success"
    with psycopg.connect(dbt_warehouse["url"]) as conn:
        assert conn.execute("select count(*) from staging.stg_shop__customers").fetchone()[0] == 6


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("EMAILP_FULL_DAG_TEST"),
    reason="a whole dbt_build run takes minutes (50 dbt invocations); set EMAILP_FULL_DAG_TEST=1",
)
def test_whole_dag_run_builds_the_marts(manifest, dbt_warehouse):
    import psycopg

    scenario.load_batch(dbt_warehouse["url"], 1)
    scenario.load_batch(dbt_warehouse["url"], 2)
    run = load_dag().test(logical_date=scenario.LOADED_2)
    assert run.state == "success"
    with psycopg.connect(dbt_warehouse["url"]) as conn:
        assert conn.execute("select count(*) from marts.customer_rfm").fetchone()[0] == 5
        assert conn.execute("select count(*) from marts.trigger_candidates").fetchone()[0] == 1
