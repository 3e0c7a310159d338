"""Send-time scoring (ml.realtime, the campaign engine's one call into ML) and the engine recording it.

Champions are trained into a throwaway sqlite MLflow store from the marts dbt
built for a small simulated shop (tests/integration/ml_support.py); send-time
scores read the same marts.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from campaigns import timers
from campaigns.engine import Engine
from campaigns.schema import load_campaigns
from harness import fixtures
from harness.smtp_sink import read_index
from tests.integration import ml_support
from warehouse import env

simulated_warehouse = ml_support.simulated_warehouse  # the module's own built warehouse (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOW = datetime.now(UTC).replace(microsecond=0)
CAMPAIGNS = load_campaigns()
CART = CAMPAIGNS["cart_abandonment"]


@pytest.fixture(scope="module")
def mlflow_store(mlflow_store):
    """The suite's throwaway store, with the registry asked on every batch: stores switch below."""
    from ml import config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "CHAMPION_CHECK_S", 0.0)
        yield mlflow_store


@pytest.fixture
def wh(simulated_warehouse):
    with psycopg.connect(simulated_warehouse["url"], autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def customers(simulated_warehouse) -> list[int]:
    with psycopg.connect(simulated_warehouse["url"]) as conn:
        return [r[0] for r in conn.execute("select customer_id from marts.customer_features order by 1")]


@pytest.fixture(scope="module")
def champions(mlflow_store, simulated_warehouse):
    from ml import clv, data, realtime, train

    shop = data.from_warehouse()
    for target in ("churn", "vip"):
        train.run(target, shop, folds=2, candidates=("gradient_boosting",))
    clv.train(shop)
    found = realtime._champions(wait=True, max_age_s=0)
    assert found is not None
    with psycopg.connect(simulated_warehouse["url"], autocommit=True) as conn:
        _record_scoring_run(conn, found)
    return found


def _record_scoring_run(conn, found) -> None:
    """What the daily scoring run writes: the engine scores at send time only once one names champions."""
    conn.execute(
        """insert into ml.scoring_runs (scored_at, features_cutoff_at, customers, vip_model_version,
               churn_model_version, segment_counts) values (%s, %s, 0, %s, %s, '{}')
           on conflict (scored_at) do nothing""",
        (NOW, NOW, found.vip.version, found.churn.version),
    )


@pytest.fixture
def fresh_process(monkeypatch):
    """ml.realtime as a new task process finds it: no models in hand, nothing asked yet."""
    from ml import realtime

    monkeypatch.setattr(realtime, "_state", realtime._State())


def test_scores_are_per_customer_and_score_one_adds_clv(champions, wh, customers):
    from ml import realtime

    ids = [customers[3], customers[17], customers[250], customers[1999]]
    batch = realtime.scores(wh, ids, NOW)
    assert sorted(batch) == ids
    for cid in ids:
        # a customer's scores do not depend on who else is in the batch
        assert realtime.scores(wh, [cid], NOW) == {cid: batch[cid]}
        one = realtime.score_one(cid, at=NOW)
        assert one["vip_score"] == batch[cid]["vip_score"] and one["churn_score"] == batch[cid]["churn_score"]
        assert (
            one["predicted_clv"] is not None and batch[cid]["predicted_clv"] is None
        )  # the send path: no CLV
    first = batch[ids[0]]
    assert first["vip_model_version"] == champions.vip.version
    assert first["churn_model_version"] == champions.churn.version
    assert 0 <= first["vip_score"] <= 1 and first["scored_at"] == NOW.isoformat()
    assert realtime.scores(wh, [10**9], NOW) == {}
    with pytest.raises(KeyError):
        realtime.score_one(10**9, at=NOW)


def test_the_send_path_never_waits_for_the_models(champions, wh, customers, fresh_process):
    from ml import realtime

    ids = customers[:50]
    t0 = time.perf_counter()
    assert realtime.scores(wh, ids, NOW) == {}  # a fresh process: the models load in the background
    assert time.perf_counter() - t0 < 1.0
    realtime._state.checker.join(60)
    found = realtime.scores(wh, ids, NOW)
    assert sorted(found) == ids and found[ids[0]]["vip_model_version"] == champions.vip.version


def test_a_moved_champion_alias_is_loaded_at_the_next_check(champions, wh, customers, fresh_process):
    from ml import config, data, realtime, register, train

    ids = customers[:20]
    realtime._champions(wait=True, max_age_s=0)
    before = realtime.scores(wh, ids, NOW)
    challenger = train.run("vip", data.from_warehouse(), folds=2, candidates=("rfm_rule",), promote=False)
    register.set_champion(config.model_name("vip"), challenger.version)
    try:
        # the check is due (ML_CHAMPION_CHECK_S is 0 here): it runs in the background, the send
        # path scores with the models in hand meanwhile
        assert realtime.scores(wh, ids, NOW) == before
        realtime._state.checker.join(60)
        after = realtime.scores(wh, ids, NOW)
        assert {r["vip_model_version"] for r in after.values()} == {challenger.version}
        assert {r["churn_model_version"] for r in after.values()} == {champions.churn.version}
    finally:
        register.set_champion(config.model_name("vip"), champions.vip.version)


def test_a_failing_query_never_reaches_the_send_path(
    champions, simulated_warehouse, customers, monkeypatch, caplog
):
    from ml import features, realtime

    monkeypatch.setattr(features, "MART", "marts.no_such_mart")
    with psycopg.connect(simulated_warehouse["url"]) as conn, caplog.at_level(logging.WARNING, "ml.realtime"):
        conn.execute("select 1")  # the caller's transaction is open
        assert realtime.scores(conn, customers[:5], NOW) == {}
        assert conn.execute("select 2").fetchone() == (2,)  # and still usable
    assert "no_such_mart" in caplog.text


def test_send_time_scoring_costs_a_few_ms_per_batch(champions, wh, customers):
    """Per-batch cost at warm cache (models loaded, no registry check), median of several runs."""
    from ml import config, realtime

    rng = np.random.default_rng(0)
    figures = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "CHAMPION_CHECK_S", 3600.0)
        realtime._champions(wait=True, max_age_s=0)
        for size in (16, 100, 500):
            times = []
            for _ in range(7):
                ids = rng.choice(customers, size, replace=False).tolist()
                t0 = time.perf_counter()
                out = realtime.scores(wh, ids, NOW)
                times.append(time.perf_counter() - t0)
                assert len(out) == size
            figures[size] = statistics.median(times) * 1000
    for size, ms in figures.items():
        print(f"realtime.scores batch={size:>3} {ms:6.1f} ms")
    assert figures[500] < 500  # generous: a loaded 2-core box; see the printed figures


def _abandon_and_run(conn, ids) -> dict:
    conn.execute(
        "truncate ops.campaign_triggers, ops.send_ledger, ops.decision_log, ops.experiment_assignments,"
        " ops.campaign_cursors, raw.events, raw.shop_customers, raw.shop_products"
    )
    fixtures.insert_products(conn)
    fixtures.insert_customers(conn, ids, timezone=fixtures.daytime_timezone())
    at = datetime.now(UTC) - timedelta(minutes=31)
    fixtures.insert_events(conn, [fixtures.cart_event(i, at) for i in ids])
    timers.ingest(psycopg.connect(os.environ["WAREHOUSE_URL"], autocommit=True), CAMPAIGNS)
    return Engine(campaigns=CAMPAIGNS).run().as_dict()


def _sent_details(conn) -> dict[int, dict]:
    return dict(
        conn.execute("select customer_id, detail from ops.decision_log where outcome = 'sent'").fetchall()
    )


def test_engine_records_the_send_time_score_and_model_versions(champions, wh, sink):
    from ml import realtime

    realtime._champions(wait=True, max_age_s=0)  # this process has the models in hand
    ids = fixtures.treated_customers(CART, 5, 100)
    stats = _abandon_and_run(wh, ids)
    assert stats["sent"] == 5, stats
    assert len(read_index(sink.directory)) == 5
    details = _sent_details(wh)
    expected = realtime.scores(wh, ids, NOW)
    for cid in ids:
        s = details[cid]["score"]
        assert s["source"] == "realtime"
        assert s["vip_model_version"] == champions.vip.version
        assert s["churn_model_version"] == champions.churn.version
        assert s["vip_score"] == pytest.approx(expected[cid]["vip_score"], abs=0.05)


def test_engine_scores_at_send_time_only_once_a_scoring_run_names_champions(
    champions, wh, sink, fresh_process
):
    wh.execute("delete from ml.scoring_runs")
    try:
        ids = fixtures.treated_customers(CART, 3, 300)
        assert _abandon_and_run(wh, ids)["sent"] == 3
        assert all((d.get("score") or {}).get("source") != "realtime" for d in _sent_details(wh).values())
    finally:
        _record_scoring_run(wh, champions)
    from ml import realtime

    assert realtime._state.checker is None  # the registry was never asked, MLflow never loaded for it


def test_engine_falls_back_to_batch_scores_without_a_champion(champions, wh, sink, tmp_path):
    from ml import realtime

    ids = fixtures.treated_customers(CART, 3, 300)
    wh.execute("truncate ml.customer_segments")
    wh.execute(
        """insert into ml.customer_segments (customer_id, vip_score, churn_score, segment, segments,
               vip_model_version, churn_model_version, features_cutoff_at, scored_at)
           values (%s, 0.25, 0.5, 'active', array['active'], '7', '8', %s, %s)""",
        (ids[0], NOW - timedelta(days=1), NOW - timedelta(hours=20)),
    )
    with env.overridden({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/empty.db"}):
        # the engine does not wait for the registry: settle this process's check first
        assert realtime._champions(wait=True, max_age_s=0) is None
        stats = _abandon_and_run(wh, ids)
    assert stats["sent"] == 3, stats
    assert len(read_index(sink.directory)) == 3
    details = _sent_details(wh)
    batch = details[ids[0]]["score"]
    assert batch["source"] == "batch"
    assert (batch["vip_score"], batch["churn_score"]) == (0.25, 0.5)
    assert (batch["vip_model_version"], batch["churn_model_version"]) == ("7", "8")
    assert all("score" not in details[c] for c in ids[1:])  # neither a send-time nor a batch score
    wh.execute("truncate ml.customer_segments")
