"""trigger_campaigns: DAG integrity, and a dag.test() run that sends a due cart email."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from campaigns import assignment
from campaigns.schema import load_campaigns
from harness import fixtures
from harness.smtp_sink import SmtpSink, free_port, read_index

pytestmark = pytest.mark.dags


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(__import__("warehouse.settings").settings.PROJECT_ROOT / "dags"))
    errors = {k: v for k, v in bag.import_errors.items() if "trigger_campaigns" in k}
    assert not errors, errors
    return bag.get_dag("trigger_campaigns")


def test_dag_shape(dag):
    assert dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    assert not dag.catchup
    assert {"campaigns", "real-time"} <= set(dag.tags)
    assert dag.doc_md
    first = dag.get_task("wait_for_due_triggers")
    assert type(first).__name__ == "DueTriggersSensor" and first.deferrable
    assert [t.task_id for t in first.downstream_list] == ["process_due_triggers"]
    assert dag.get_task("process_due_triggers").retries >= 1


@pytest.mark.integration
@pytest.mark.slow
def test_dag_test_run_sends_the_due_email(dag, warehouse_conn, tmp_path, monkeypatch):
    conn = warehouse_conn
    conn.execute(
        "truncate ops.campaign_triggers, ops.send_ledger, ops.decision_log, ops.campaign_cursors,"
        " raw.events, raw.shop_customers, raw.shop_products"
    )
    cart = load_campaigns()["cart_abandonment"]
    cid = next(i for i in range(9000, 9100) if assignment.assign(cart, i)[0] != assignment.HOLDOUT)
    fixtures.insert_products(conn)
    fixtures.insert_customers(conn, [cid], timezone=fixtures.daytime_timezone())
    fixtures.insert_events(conn, [fixtures.cart_event(cid, datetime.now(UTC) - timedelta(minutes=31))])
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_CAMPAIGNS", f"smtp://127.0.0.1:{port}")
    with SmtpSink(tmp_path / "outbox", port):
        run = dag.test(run_conf={"linger_s": 0, "max_seconds": 30})
    assert run.state == "success", run.state
    index = read_index(tmp_path / "outbox")
    assert [m["rcpt"] for m in index] == [[f"customer{cid}@example.test"]]
    assert conn.execute("select state from ops.send_ledger").fetchall() == [("sent",)]
