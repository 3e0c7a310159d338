"""
### dbt_build

Builds the dbt project (`dbt_project/`: staging -> intermediate -> marts and
the RFM segment snapshot) whenever extract_load has refreshed every raw table,
then emits the Asset of the `customer_features` mart, which score_customers is
scheduled on.

Astronomer Cosmos renders one task group per dbt node from the manifest
(`LoadMode.DBT_MANIFEST`): each model runs, then its tests, so a failing test
stops everything downstream of that model. Regenerate the manifest after
editing the project with `python -m warehouse.dbt parse` (the demo and tests
do). Until it exists, the DAG is one task that parses and builds the project.

dbt's profile reads its connection from environment variables, which each task
derives from `WAREHOUSE_URL` when it runs (`warehouse.dbt.profile_env`).
Models are computed as of the latest data they hold (var `as_of`, see
`dbt_project/DECISIONS.md`), so a rerun on the same data gives the same marts.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior

from orchestration.assets import MARTS, RAW
from warehouse import dbt as warehouse_dbt

# Rendered in the worker when a task runs (not at parse time), so the
# connection follows WAREHOUSE_URL and no password lands in the serialized DAG.
PROFILE_ENV = {key: "{{ dbt_profile_env()['" + key + "'] }}" for key in warehouse_dbt.PROFILE_ENV_KEYS}


@dag(
    schedule=list(RAW.values()),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["dbt", "marts"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    user_defined_macros={"dbt_profile_env": warehouse_dbt.profile_env},
)
def dbt_build():
    if warehouse_dbt.MANIFEST_PATH.exists():
        models = DbtTaskGroup(
            group_id="dbt",
            project_config=ProjectConfig(
                dbt_project_path=warehouse_dbt.PROJECT_DIR,
                manifest_path=warehouse_dbt.MANIFEST_PATH,
                install_dbt_deps=False,
                env_vars=PROFILE_ENV,
            ),
            profile_config=ProfileConfig(
                profile_name=warehouse_dbt.PROFILE_NAME,
                target_name=warehouse_dbt.TARGET_NAME,
                profiles_yml_filepath=warehouse_dbt.PROFILES_DIR / "profiles.yml",
            ),
            execution_config=ExecutionConfig(
                execution_mode=ExecutionMode.LOCAL,
                invocation_mode=InvocationMode.DBT_RUNNER,
                dbt_executable_path=Path(sys.executable).with_name("dbt"),
            ),
            render_config=RenderConfig(
                load_method=LoadMode.DBT_MANIFEST,
                test_behavior=TestBehavior.AFTER_EACH,
                # tests on two models (relationships) run once both are built
                should_detach_multiple_parents_tests=True,
                # Cosmos' own dataset URIs need a TCP host; the marts' Assets
                # are emitted by publish_marts below instead.
                emit_datasets=False,
            ),
            operator_args={"append_env": True},
        )
    else:

        @task
        def parse_and_build() -> None:
            warehouse_dbt.parse()
            warehouse_dbt.build()

        models = parse_and_build()

    @task(outlets=list(MARTS.values()))
    def publish_marts() -> list[str]:
        """Mark the marts updated: the DAGs scheduled on them start."""
        return sorted(asset.uri for asset in MARTS.values())

    models >> publish_marts()


dbt_build()
