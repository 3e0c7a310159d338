"""`make demo`: the whole flow on the embedded default, through Airflow.

Generates the source data (the simulated storefront, or the real CDNOW data set
with DATASET=cdnow), then runs each stage's DAG with `airflow dags test` in
dependency order, and ends with what ran, row counts and how to open the UIs.
The demo warehouse is rebuilt from scratch each time: it is a demo, not a
shop's data.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from warehouse import env, settings


@dataclass
class StageResult:
    name: str
    seconds: float


def run(cmd: list[str], label: str) -> StageResult:
    print(f"\n==> {label}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        sys.exit(f"demo stopped: {label} failed (exit {result.returncode})")
    return StageResult(label, time.monotonic() - started)


def reset_warehouse() -> None:
    """Start the demo warehouse afresh: raw, dbt's schemas, ML outputs and ops state."""
    with psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
        conn.execute("drop schema if exists staging, intermediate, marts, snapshots, analytics cascade")
        tables = conn.execute(
            """select format('%I.%I', schemaname, tablename) from pg_tables
               where schemaname in ('raw', 'ml', 'ops') and tablename <> 'alembic_version'"""
        ).fetchall()
        conn.execute(f"truncate {', '.join(t for (t,) in tables)}")


def airflow_dag_test(dag_id: str, logical_date: datetime) -> StageResult:
    dag_file = settings.PROJECT_ROOT / "dags" / f"{dag_id}.py"  # parse only this DAG's file
    return run(
        ["airflow", "dags", "test", dag_id, logical_date.isoformat(), "--dagfile-path", str(dag_file)],
        f"airflow dags test {dag_id}",
    )


def row_counts() -> list[tuple[str, int]]:
    with psycopg.connect(settings.warehouse_url()) as conn:
        tables = conn.execute(
            """select format('%I.%I', schemaname, relname) from pg_stat_user_tables
               where schemaname in ('raw', 'marts', 'ml', 'ops') order by schemaname, relname"""
        ).fetchall()
        return [(t, conn.execute(f"select count(*) from {t}").fetchone()[0]) for (t,) in tables]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=["simulated", "cdnow"], default="simulated")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    env.apply_defaults()
    started = time.monotonic()
    # The hour that just began: its interval covers everything generated so far.
    logical_date = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    stages = []
    if args.dataset == "cdnow":
        stages.append(run([sys.executable, "-m", "simulator", "cdnow"], "load CDNOW into the shop database"))
    else:
        stages.append(
            run(
                [sys.executable, "-m", "simulator", "generate", "--customers", str(args.customers),
                 "--days", str(args.days), "--seed", str(args.seed)],
                "simulate the storefront",
            )
        )
    reset_warehouse()
    stages.append(airflow_dag_test("extract_load", logical_date))
    # Cosmos renders dbt_build from the manifest: parse the project first.
    stages.append(run([sys.executable, "-m", "warehouse.dbt", "parse"], "dbt parse"))
    for dag_id in ("dbt_build", "train_models", "score_customers"):
        stages.append(airflow_dag_test(dag_id, logical_date))

    print("\n==> demo finished in %.0f s" % (time.monotonic() - started))
    print("\nstages:")
    for stage in stages:
        print(f"  {stage.seconds:7.1f} s  {stage.name}")
    print("\nrow counts:")
    for table, count in row_counts():
        print(f"  {count:>12,}  {table}")
    print(
        "\nnext:\n"
        f"  Airflow UI: make airflow, then http://127.0.0.1:8080 (user admin, password in "
        f"{settings.LOCAL_DIR}/airflow/simple_auth_manager_passwords.json.generated)\n"
        "  MLflow UI:  make mlflow-ui, then http://127.0.0.1:5000\n"
        f"  psql:       psql '{settings.warehouse_url()}'\n"
        "  stop:       make stop"
    )


if __name__ == "__main__":
    main()
