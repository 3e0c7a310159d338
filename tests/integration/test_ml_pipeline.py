"""Train -> register -> promote -> score -> recommend on marts dbt built from a simulated shop, on real Postgres.

MLflow runs in a throwaway sqlite store with artifacts in a temp dir, so the
tests never touch the shared `mlflow` database.
"""

from __future__ import annotations

import re

import pandas as pd
import psycopg
import pytest

from tests.integration import ml_support

simulated_warehouse = ml_support.simulated_warehouse  # the module's own built warehouse (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def shop(simulated_warehouse):
    """(the marts' orders, order lines and products; the simulator's ground truth)."""
    from ml import data

    with psycopg.connect(simulated_warehouse["shop_url"]) as conn:
        truth = data.read_sql(
            conn, "select customer_id, behaviour_type, churned_at from simulator.customer_truth"
        )
    return data.from_warehouse(with_items=True), truth


@pytest.fixture(scope="module")
def trained(mlflow_store, shop):
    from ml import clv, train

    data, _ = shop
    return {
        "churn": train.run("churn", data, folds=2),
        "vip": train.run("vip", data, folds=2),
        "clv": clv.train(data),
    }


@pytest.fixture
def wh(simulated_warehouse):
    with psycopg.connect(simulated_warehouse["url"], autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def mart_customers(simulated_warehouse) -> int:
    with psycopg.connect(simulated_warehouse["url"]) as conn:
        return conn.execute("select count(*) from marts.customer_features").fetchone()[0]


def test_training_logs_comparable_runs_and_registers_a_champion(trained):
    from mlflow import MlflowClient

    from ml import config, register

    client = MlflowClient()
    for target in ("churn", "vip"):
        result = trained[target]
        assert set(result.metrics) == {"rfm_rule", "logistic_regression", "gradient_boosting"}
        for m in result.metrics.values():
            assert {"roc_auc", "pr_auc", "lift_top_decile", "brier"} <= set(m)
        assert result.cv["gradient_boosting"]["cv_folds"] == 2
        run = client.get_run(result.run_id)
        assert run.data.params["holdout_cutoff"] > run.data.params["train_cutoff"]
        assert run.data.params["features_left_out"] == ""  # the simulated shop has every feature
        assert run.data.tags["promotion.promoted"] == "True"
        artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
        assert {
            "plots/roc.png",
            "plots/pr.png",
            "plots/lift.png",
            "plots/calibration.png",
            "plots/feature_importance.png",
        } <= artifacts
        # per-slice metrics on the candidate runs
        children = client.search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
        )
        assert len(children) == 3
        assert any(k.startswith("slice_tenure_band_") for k in children[0].data.metrics)
        name = config.model_name(target)
        assert register.champion_version(name) == result.version
        # the inputs: the mart's features and the ages ml.realtime measures
        inputs = register.input_columns(name, result.version)
        assert {"recency_days", "orders_90d", "views_30d", "email_open_rate", "days_since_last_open"} <= set(
            inputs
        )
        assert not {"r_score", "repeat_purchase_days", "cutoff_at", "last_order_at"} & set(inputs)
    assert trained["vip"].metrics["logistic_regression"]["roc_auc"] > 0.75
    assert trained["churn"].metrics["logistic_regression"]["roc_auc"] > 0.7
    assert trained["clv"]["promoted"] is True


def test_models_load_without_pickle(trained):
    """skops with our own allow-list for VIP and churn; the CLV model is its JSON parameters."""
    from pathlib import Path

    import mlflow.sklearn
    from mlflow.artifacts import download_artifacts
    from sklearn.dummy import DummyClassifier

    from ml import champions, clv, config, register

    found = champions.current(refresh=True)
    assert found.clv is not None and found.clv.model == clv.load_version(trained["clv"]["version"])
    assert found.vip.model.predict_proba  # a scikit-learn estimator, loaded by skops
    for target, kept in (("vip", "model.skops"), ("churn", "model.skops"), ("clv", "clv_params.json")):
        name = config.model_name(target)
        uri = register.client().get_model_version_download_uri(name, register.champion_version(name))
        files = {p.name for p in Path(download_artifacts(uri)).rglob("*") if p.is_file()}
        assert kept in files and not {f for f in files if f.endswith((".pkl", ".pickle"))}, files

    # a model saved as a pickle is refused, never unpickled
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            DummyClassifier().fit([[0], [1]], [0, 1]), name="model", serialization_format="pickle"
        )
    version = register.register(info.model_uri, "pickled-model")
    with pytest.raises(ValueError, match="not a skops model"):
        register.load_version("pickled-model", version)


def test_a_challenger_that_does_not_beat_the_champion_by_the_margin_is_not_promoted(trained, shop):
    from ml import config, register, train

    data, _ = shop
    before = register.champion_version(config.model_name("churn"))
    result = train.run("churn", data, folds=2, candidates=("rfm_rule",), margin=0.5)
    assert result.decision is not None and result.decision.promoted is False
    assert "does not beat" in result.decision.reason
    assert register.champion_version(config.model_name("churn")) == before
    tags = register.client().get_model_version(config.model_name("churn"), result.version).tags
    assert tags["promotion.promoted"] == "False"


def test_scoring_writes_segments_idempotently_with_history_and_crm_rows(trained, wh, mart_customers):
    from ml import champions, features, score

    n, warehouse_conn = mart_customers, wh
    first = score.run("2026-01-02")
    assert first["customers"] == n and first["history_rows"] == n
    rows = warehouse_conn.execute(
        "select count(*), count(distinct scored_at), count(churn_score), min(vip_score), max(vip_score) "
        "from ml.customer_segments"
    ).fetchone()
    assert rows[0] == n and rows[1] == 1
    assert rows[2] < n  # never-buyers have no churn score
    assert 0 <= rows[3] <= rows[4] <= 1
    snapshot = warehouse_conn.execute("select * from ml.customer_segments order by customer_id").fetchall()

    again = score.run("2026-01-02")
    assert again["history_rows"] == 0 and again["crm_changed"] == 0
    assert (
        warehouse_conn.execute("select * from ml.customer_segments order by customer_id").fetchall()
        == snapshot
    )

    # the same run in chunks of 700 customers (merged while the next is scored) writes the same rows
    frame, cutoff = features.current()
    with warehouse_conn.transaction():
        _, chunked = score.score_and_write(
            warehouse_conn,
            frame,
            champions.current(),
            score._utc("2026-01-02"),
            cutoff.to_pydatetime(),
            chunk_rows=700,
        )
    assert chunked["chunks"] == -(-n // 700) and chunked["upserted"] == n and chunked["history_rows"] == 0
    assert (
        warehouse_conn.execute("select * from ml.customer_segments order by customer_id").fetchall()
        == snapshot
    )

    # an older run never overwrites the newer scores
    score.run("2025-12-01", export=False)
    assert (
        warehouse_conn.execute("select count(distinct scored_at) from ml.customer_segments").fetchone()[0]
        == 1
    )

    labels = dict(
        warehouse_conn.execute("select segment, count(*) from ml.customer_segments group by 1").fetchall()
    )
    assert set(labels) <= {"vip", "churned", "at_risk", "new", "active", "prospect"}
    versions = warehouse_conn.execute(
        "select distinct vip_model_version, churn_model_version, clv_model_version from ml.customer_segments"
    ).fetchall()
    assert versions == [(trained["vip"].version, trained["churn"].version, trained["clv"]["version"])]
    pending = warehouse_conn.execute(
        "select count(*) from ml.crm_segment_sync where synced_at is null"
    ).fetchone()[0]
    assert pending == n
    exported = pd.read_csv(first["export"])
    assert len(exported) == n and {"customer_id", "segment", "vip_score", "predicted_clv"} <= set(
        exported.columns
    )
    # dbt's RFM segment travels with the scores: a label campaigns can name
    assert (
        warehouse_conn.execute(
            "select count(*) from ml.customer_segments where 'rfm_Champions' = any(segments)"
        ).fetchone()[0]
        > 0
    )


def test_the_crm_view_moves_changed_at_only_when_labels_change(trained, wh):
    from ml import score
    from ml.config import SegmentThresholds

    warehouse_conn = wh
    score.run("2026-01-05", export=False)
    # the connector marks what it pushed, through the view
    warehouse_conn.execute("update ml.crm_segment_sync set synced_at = '2026-01-05 06:00+00'")
    before = dict(
        warehouse_conn.execute("select customer_id, changed_at from ml.crm_segment_sync").fetchall()
    )

    # a later run with a lower VIP threshold: some customers gain the vip label
    later = score.run("2026-01-06", export=False, thresholds=SegmentThresholds(vip=0.2))
    changed = warehouse_conn.execute(
        """select k.customer_id from ml.crm_segment_sync k
           where k.changed_at = '2026-01-06 00:00+00' and k.synced_at is null"""
    ).fetchall()
    unchanged = warehouse_conn.execute(
        """select count(*) from ml.crm_segment_sync
           where changed_at < '2026-01-06 00:00+00' and synced_at = '2026-01-05 06:00+00'"""
    ).fetchone()[0]
    assert 0 < len(changed) == later["crm_changed"] == later["history_rows"] < len(before)
    assert len(changed) + unchanged == len(before)
    # exactly the customers with a new history row, every row on the newest scores
    history = {
        r[0]
        for r in warehouse_conn.execute(
            "select customer_id from ml.customer_segment_history where valid_from = '2026-01-06 00:00+00'"
        ).fetchall()
    }
    assert {r[0] for r in changed} == history
    assert (
        warehouse_conn.execute(
            "select count(*) from ml.crm_segment_sync k join ml.customer_segments c using (customer_id) "
            "where k.vip_score is distinct from c.vip_score or c.scored_at <> '2026-01-06 00:00+00'"
        ).fetchone()[0]
        == 0
    )


def test_segments_match_the_ground_truth(trained, shop):
    from ml import champions, evaluate, features, score

    _, truth = shop
    frame, cutoff = features.current()
    scored, _ = score.score_frame(frame, champions.current())
    report = evaluate.against_truth(
        scored.reset_index()[["customer_id", "vip_score", "churn_score", "p_alive"]], truth, cutoff
    )
    assert report["vip"]["roc_auc"] > 0.85
    assert report["vip"]["lift_top_decile"] > 3
    assert report["churn"]["roc_auc"] > 0.8


def test_recommendations_exclude_purchases_and_beat_popularity(trained, shop, wh):
    from ml import recommend

    data, _ = shop
    offline = recommend.evaluate_offline(data, log_mlflow=False)
    assert offline["item_cf"]["recall_at_10"] > offline["popularity"]["recall_at_10"]
    assert offline["item_cf"]["coverage"] > offline["popularity"]["coverage"]

    summary = recommend.run(data=data, n=5, evaluate=False)
    assert summary["rows"] > 0
    recs = pd.DataFrame(
        wh.execute("select customer_id, rank, product_id, source from ml.recommendations").fetchall(),
        columns=["customer_id", "rank", "product_id", "source"],
    )
    assert recs.groupby("customer_id")["rank"].max().max() == 5
    bought = data.order_items[["customer_id", "product_id"]].drop_duplicates()
    assert recs.merge(bought, on=["customer_id", "product_id"]).empty
    unavailable = set(
        data.products.loc[(data.products["stock"] <= 0) | ~data.products["is_active"], "product_id"]
    )
    assert not set(recs["product_id"]) & unavailable
    assert {"item_cf", "popular"} >= set(recs["source"])


def test_no_email_address_reaches_the_mlflow_store(trained, mlflow_store, wh):
    """Params, tags, input examples, signatures and artifacts of every run above (training, CLV,
    recommendations) hold features and figures, never a customer's address."""
    emails = {e for (e,) in wh.execute("select email from staging.stg_shop__customers")}
    assert len(emails) >= 3000
    pattern = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
    assert all(pattern.fullmatch(e.encode()) for e in emails)  # the scan would see each one
    found = set()
    files = [p for p in mlflow_store.rglob("*") if p.is_file()]
    assert any(p.name == "input_example.json" for p in files)
    for path in files:  # the sqlite store (params, tags, metrics) and every artifact
        found |= {m.decode().lower() for m in pattern.findall(path.read_bytes())}
    assert not found & emails
