"""Send-time scoring (ml.score.score_now) and the campaign engine recording it, against real Postgres.

Champions are trained into a throwaway sqlite MLflow store on a synthetic
shop whose orders land in the dbt models' shape (staging.stg_shop__orders /
stg_shop__customers, marts.customer_features) in the module's warehouse.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
import pytest

from campaigns import timers
from campaigns.engine import Engine
from campaigns.schema import load_campaigns
from harness import fixtures
from harness.smtp_sink import read_index
from warehouse import env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUSTOMERS = 4000
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


def _mart(data) -> pd.DataFrame:
    """A customer_features mart as dbt writes it (browsing, email and discount columns, dbt's RFM label)."""
    rng = np.random.default_rng(3)
    ids = data.customers["customer_id"].to_numpy()
    n = len(ids)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "cutoff_at": pd.Timestamp(NOW),
            "tenure_days": rng.uniform(0, 700, n),
            "order_count": rng.integers(0, 10, n),
            "category_entropy": rng.uniform(0, 2, n),
            "email_open_rate": rng.uniform(0, 1, n),
            "email_click_rate": rng.uniform(0, 0.3, n),
            "sessions_30d": rng.integers(0, 20, n).astype(float),
            "product_views_30d": rng.integers(0, 60, n).astype(float),
            "cart_adds_30d": rng.integers(0, 8, n).astype(float),
            "discount_order_share": rng.uniform(0, 1, n),
            "discount_amount_share": rng.uniform(0, 0.5, n),
            "rfm_segment": rng.choice(["champions", "loyal", "at_risk", "hibernating"], n),
        }
    )


@pytest.fixture(scope="module")
def shop(test_databases):
    """Synthetic orders ending today, written where score_now reads them."""
    from ml import synthetic

    data, _ = synthetic.generate(CUSTOMERS, seed=5, end=NOW.strftime("%Y-%m-%d"))
    mart = _mart(data)
    with psycopg.connect(test_databases["warehouse"], autocommit=True) as conn:
        conn.execute("create schema if not exists staging; create schema if not exists marts")
        conn.execute(
            """create table staging.stg_shop__orders (order_id bigint primary key, customer_id bigint,
                   placed_at timestamptz, total numeric(12, 2), is_valid boolean);
               create index on staging.stg_shop__orders (customer_id);
               create table staging.stg_shop__customers (customer_id bigint primary key, signed_up_at timestamptz);
               create table marts.customer_features (customer_id bigint primary key, cutoff_at timestamptz,
                   tenure_days float8, order_count int, category_entropy float8, email_open_rate float8,
                   email_click_rate float8, sessions_30d float8, product_views_30d float8, cart_adds_30d float8,
                   discount_order_share float8, discount_amount_share float8, rfm_segment text)"""
        )
        with conn.cursor() as cur:
            with cur.copy("copy staging.stg_shop__orders from stdin") as copy:
                for r in data.transactions.itertuples():
                    copy.write_row(
                        (r.order_id, r.customer_id, r.ordered_at.tz_localize("UTC"), r.amount, True)
                    )
            with cur.copy("copy staging.stg_shop__customers from stdin") as copy:
                for r in data.customers.itertuples():
                    copy.write_row((r.customer_id, r.signed_up_at.tz_localize("UTC")))
            with cur.copy(f"copy marts.customer_features ({', '.join(mart.columns)}) from stdin") as copy:
                for row in mart.itertuples(index=False):
                    copy.write_row(row)
        conn.execute("analyze")
    return data, mart


@pytest.fixture(scope="module")
def champions(mlflow_store, shop, test_databases):
    from ml import clv, dbt_features, train

    data, mart = shop
    extra = dbt_features.prepare(mart.copy())
    for target in ("churn", "vip"):
        train.run(target, data, folds=2, candidates=("gradient_boosting",), extra_features=lambda _: extra)
    clv.train(data)
    from ml import score

    found = score.realtime_champions(max_age_s=0)
    assert found is not None
    with psycopg.connect(test_databases["warehouse"], autocommit=True) as conn:
        _record_scoring_run(conn, found)
    return found


def _record_scoring_run(conn, found) -> None:
    """What the daily scoring run writes: the engine scores at send time only once one names champions."""
    conn.execute(
        """insert into ml.scoring_runs (scored_at, features_cutoff_at, customers, vip_model_version,
               churn_model_version, segment_counts) values (%s, %s, %s, %s, %s, '{}')
           on conflict (scored_at) do nothing""",
        (NOW, NOW, CUSTOMERS, found.vip.version, found.churn.version),
    )


def test_score_one_is_score_now_for_one_customer(champions, warehouse_conn):
    from ml import score

    ids = [3, 17, 250, 1999]
    batch = score.score_now(warehouse_conn, ids, NOW)
    assert sorted(batch) == ids
    for cid in ids:
        assert score.score_one(cid, at=NOW) == batch[cid]
        # a customer's scores do not depend on who else is in the batch
        assert score.score_now(warehouse_conn, [cid], NOW) == {cid: batch[cid]}
    one = batch[ids[0]]
    assert one["vip_model_version"] == champions.vip.version
    assert one["churn_model_version"] == champions.churn.version
    assert one["clv_model_version"] == champions.clv.version
    assert 0 <= one["vip_score"] <= 1 and one["predicted_clv"] is not None
    with pytest.raises(KeyError):
        score.score_one(10**9, at=NOW)
    # the engine's call: no CLV model
    lean = score.score_now(warehouse_conn, ids, NOW, with_clv=False)
    assert [lean[c]["vip_score"] for c in ids] == [batch[c]["vip_score"] for c in ids]
    assert lean[ids[0]]["predicted_clv"] is None


def test_send_time_scoring_costs_a_few_ms_per_batch(champions, warehouse_conn):
    """Per-batch cost at warm cache (models loaded, no registry check), median of several runs."""
    from ml import config, score

    rng = np.random.default_rng(0)
    figures = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "CHAMPION_CHECK_S", 3600.0)
        for with_clv in (False, True):
            for size in (16, 100, 500):
                times = []
                for _ in range(7):
                    ids = rng.choice(np.arange(1, CUSTOMERS + 1), size, replace=False).tolist()
                    t0 = time.perf_counter()
                    out = score.score_now(warehouse_conn, ids, NOW, with_clv=with_clv)
                    times.append(time.perf_counter() - t0)
                    assert len(out) == size
                figures[(size, with_clv)] = statistics.median(times) * 1000
    for (size, with_clv), ms in figures.items():
        print(f"score_now batch={size:>3} clv={with_clv!s:<5} {ms:6.1f} ms")
    assert figures[(500, False)] < 500  # generous: a loaded 2-core box; see the printed figures


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


def test_engine_records_the_send_time_score_and_model_versions(champions, warehouse_conn, sink):
    from ml import score

    ids = fixtures.treated_customers(CART, 5, 100)
    stats = _abandon_and_run(warehouse_conn, ids)
    assert stats["sent"] == 5, stats
    assert len(read_index(sink.directory)) == 5
    details = _sent_details(warehouse_conn)
    expected = score.score_now(warehouse_conn, ids, NOW, with_clv=False)
    for cid in ids:
        s = details[cid]["score"]
        assert s["source"] == "realtime"
        assert s["vip_model_version"] == champions.vip.version
        assert s["churn_model_version"] == champions.churn.version
        assert s["vip_score"] == pytest.approx(expected[cid]["vip_score"], abs=0.05)


def test_engine_scores_at_send_time_only_once_a_scoring_run_names_champions(champions, warehouse_conn, sink):
    warehouse_conn.execute("delete from ml.scoring_runs")
    try:
        ids = fixtures.treated_customers(CART, 3, 300)
        assert _abandon_and_run(warehouse_conn, ids)["sent"] == 3
        assert all(
            (d.get("score") or {}).get("source") != "realtime" for d in _sent_details(warehouse_conn).values()
        )
    finally:
        _record_scoring_run(warehouse_conn, champions)


def test_engine_falls_back_to_batch_scores_without_a_champion(champions, warehouse_conn, sink, tmp_path):
    from ml import score

    ids = fixtures.treated_customers(CART, 3, 300)
    warehouse_conn.execute("truncate ml.customer_segments")
    warehouse_conn.execute(
        """insert into ml.customer_segments (customer_id, vip_score, churn_score, segment, segments,
               vip_model_version, churn_model_version, features_cutoff_at, scored_at)
           values (%s, 0.25, 0.5, 'active', array['active'], '7', '8', %s, %s)""",
        (ids[0], NOW - timedelta(days=1), NOW - timedelta(hours=20)),
    )
    with env.overridden({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/empty.db"}):
        # the engine does not wait for the registry: settle this process's check first
        assert score.realtime_champions(max_age_s=0) is None
        stats = _abandon_and_run(warehouse_conn, ids)
    assert stats["sent"] == 3, stats
    assert len(read_index(sink.directory)) == 3
    details = _sent_details(warehouse_conn)
    batch = details[ids[0]]["score"]
    assert batch["source"] == "batch"
    assert (batch["vip_score"], batch["churn_score"]) == (0.25, 0.5)
    assert (batch["vip_model_version"], batch["churn_model_version"]) == ("7", "8")
    assert all("score" not in details[c] for c in ids[1:])  # neither a send-time nor a batch score
    warehouse_conn.execute("truncate ml.customer_segments")
