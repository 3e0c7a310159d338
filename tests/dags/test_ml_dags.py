"""The ML DAGs: schedules, and real dag.test() runs on marts dbt built (throwaway MLflow store).

The CDNOW runs are in tests/integration/test_ml_cdnow.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.integration import ml_support
from tests.integration.ml_support import dag as _dag
from warehouse import env

simulated_warehouse = ml_support.simulated_warehouse  # a module's own built warehouse (fixture)

pytestmark = [pytest.mark.dags]


def test_schedules_are_explicit():
    from airflow.sdk.definitions.asset import AssetAll

    from orchestration.assets import MARTS

    train = _dag("train_models")
    # weekly cron, by choice (see its doc)
    assert (train.timetable.expression, str(train.timetable.timezone)) == ("0 3 * * 1", "UTC")
    score = _dag("score_customers")
    condition = score.timetable.asset_condition  # scored whenever dbt refreshed customer_features
    assert isinstance(condition, AssetAll)
    assert [a.uri for a in condition.objects] == [MARTS["customer_features"].uri]


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
def test_train_then_score_runs(mlflow_store, simulated_warehouse):
    import psycopg

    logical = datetime(2026, 1, 5, 3, tzinfo=UTC)
    run = _dag("train_models").test(logical_date=logical, run_conf={"folds": 2})
    assert run.state == "success"
    for _ in range(2):  # rerunning the same run writes the same rows
        run = _dag("score_customers").test(logical_date=logical, run_conf={"export_csv": False})
        assert run.state == "success"
    with psycopg.connect(simulated_warehouse["url"]) as conn:
        count, scored_at, versions = conn.execute(
            "select count(*), max(scored_at), count(distinct vip_model_version) from ml.customer_segments"
        ).fetchone()
        assert count == conn.execute("select count(*) from marts.customer_features").fetchone()[0]
        assert scored_at == logical and versions == 1
        assert conn.execute("select count(*) from ml.recommendations").fetchone()[0] > 0
