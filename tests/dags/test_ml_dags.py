"""The ML DAGs: schedules, and real dag.test() runs (synthetic source, throwaway MLflow store)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from warehouse import env, settings

pytestmark = [pytest.mark.dags]
DAGS = settings.PROJECT_ROOT / "dags"


def _dag(name: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{name}.py"))
    assert bag.import_errors == {}
    return bag.get_dag(name)


def test_schedules_are_explicit():
    from orchestration.assets import MARTS

    train = _dag("train_models")
    assert train.timetable.expression == "0 3 * * 1"  # weekly cron, by choice (see its doc)
    score = _dag("score_customers")
    assert (
        MARTS["customer_features"].uri
        in {a.uri for a in score.timetable.asset_condition.iter_assets().values()}
        if hasattr(score.timetable.asset_condition, "iter_assets")
        else True
    )


@pytest.fixture
def mlflow_store(tmp_path):
    values = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "ML_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "ML_EXPORT_DIR": str(tmp_path / "exports"),
    }
    with env.overridden(values):
        yield tmp_path


@pytest.mark.integration
@pytest.mark.slow
def test_train_then_score_runs(mlflow_store, warehouse_conn):
    conf = {"source": "synthetic", "synthetic_customers": 800}
    logical = datetime(2026, 1, 5, 3, tzinfo=UTC)
    run = _dag("train_models").test(logical_date=logical, run_conf={**conf, "folds": 2})
    assert run.state == "success"
    for _ in range(2):  # rerunning the same run writes the same rows
        run = _dag("score_customers").test(logical_date=logical, run_conf={**conf, "export_csv": False})
        assert run.state == "success"
    # other tests may have left segments of a bigger shop: count this run's rows
    count, scored_at = warehouse_conn.execute(
        "select count(*), max(scored_at) from ml.customer_segments where scored_at = %s", (logical,)
    ).fetchone()
    assert count == 800
    assert scored_at == logical
    assert warehouse_conn.execute("select count(*) from ml.recommendations").fetchone()[0] > 0
