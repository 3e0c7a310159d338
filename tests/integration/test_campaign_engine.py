"""The campaign engine on the real warehouse: timers, eligibility, delivery, exactly once."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from campaigns import assignment, suppressions, timers, unsubscribe
from campaigns.engine import DeliveryUnavailable, Engine
from campaigns.schema import load_campaigns, load_policy
from harness import fixtures
from harness.smtp_sink import SmtpSink, free_port, read_index

pytestmark = pytest.mark.integration

OPS_TABLES = (
    "ops.campaign_triggers, ops.send_ledger, ops.decision_log, ops.suppressions, ops.consent,"
    " ops.experiment_assignments, ops.campaign_cursors, ops.erasure_log"
)
RAW_TABLES = "raw.events, raw.shop_customers, raw.shop_products, raw.shop_orders, raw.esp_email_events"


@pytest.fixture
def db(warehouse_conn):
    warehouse_conn.execute(f"truncate {OPS_TABLES}, {RAW_TABLES}")
    fixtures.insert_products(warehouse_conn)
    return warehouse_conn


CAMPAIGNS = load_campaigns()
CART = CAMPAIGNS["cart_abandonment"]


def treated_ids(n: int, start: int = 1000, campaign=CART) -> list[int]:
    """Customer ids that the cart campaign does not hold out."""
    return fixtures.treated_customers(campaign, n, start)


def abandon_carts(conn, ids, minutes_ago=31, tz=None):
    fixtures.insert_customers(conn, ids, timezone=tz or fixtures.daytime_timezone())
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    fixtures.insert_events(conn, [fixtures.cart_event(i, at) for i in ids])


def run(**kw) -> dict:
    timers.ingest(psycopg.connect(os.environ["WAREHOUSE_URL"], autocommit=True), CAMPAIGNS)
    return Engine(campaigns=CAMPAIGNS, **kw).run().as_dict()


def outcomes(conn) -> Counter:
    return Counter(
        dict(conn.execute("select outcome, count(*) from ops.decision_log group by outcome").fetchall())
    )


def test_cart_abandonment_sends_one_email_with_one_click_unsubscribe(db, sink):
    (cid,) = treated_ids(1)
    abandon_carts(db, [cid])
    stats = run()
    assert stats["sent"] == 1, stats
    index = read_index(sink.directory)
    assert len(index) == 1
    msg = email.message_from_bytes(
        (sink.directory / index[0]["file"]).read_bytes(), policy=email.policy.default
    )
    assert msg["To"] == f"customer{cid}@example.test"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe?token=" in msg["List-Unsubscribe"]
    html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
    text = next(p for p in msg.walk() if p.get_content_type() == "text/plain").get_content()
    assert "Oak desk lamp" in html and "Oak desk lamp" in text
    assert "utm_campaign=cart_abandonment" in html
    state = db.execute("select state, message_id from ops.send_ledger").fetchall()
    assert state == [("sent", msg["Message-ID"])]
    # a rerun sends nothing more
    assert run()["sent"] == 0
    assert len(read_index(sink.directory)) == 1


def test_not_due_yet_then_purchase_cancels(db, sink):
    (cid,) = treated_ids(1)
    abandon_carts(db, [cid], minutes_ago=5)
    assert run()["claimed"] == 0
    fixtures.insert_events(
        db,
        [fixtures.track_event(cid, "Order Completed", {"order_id": 1}, datetime.now(UTC))],
        source="webhook:shop",  # a purchase counts from the shop's signed webhook, not a client
    )
    run()
    assert db.execute("select status, outcome from ops.campaign_triggers").fetchone() == (
        "cancelled",
        "purchased_since",
    )
    assert outcomes(db) == {"purchased_since": 1}


def test_suppressed_unsubscribed_unconsented_never_mailed(db, sink):
    a, b, c, d = treated_ids(4)
    abandon_carts(db, [a, b, c])
    fixtures.insert_customers(db, [d], consent=False, timezone=fixtures.daytime_timezone())
    fixtures.insert_events(db, [fixtures.cart_event(d, datetime.now(UTC) - timedelta(minutes=31))])
    suppressions.add(db, suppressions.hash_email(f"customer{a}@example.test"), "hard_bounce", "test")
    token = unsubscribe.make_token(
        b, suppressions.hash_email(f"customer{b}@example.test"), "cart_abandonment"
    )
    unsubscribe.record_unsubscribe(db, token)
    # a complaint webhook from the provider for c
    fixtures.insert_events(
        db,
        [
            fixtures.track_event(
                c, "Marked as Spam", {"email": f"customer{c}@example.test"}, datetime.now(UTC)
            )
        ],
        source="webhook:esp",
    )
    stats = run()
    assert stats["sent"] == 0
    assert read_index(sink.directory) == []
    got = outcomes(db)
    assert got["suppressed"] == 2 and got["no_consent"] == 1
    # b's pending trigger was cancelled at the click already, or decided as unsubscribed
    assert (
        db.execute(
            "select count(*) from ops.campaign_triggers where customer_id = %s and status <> 'pending'", (b,)
        ).fetchone()[0]
        == 1
    )


def test_quiet_hours_reschedule_in_customer_timezone(db, sink):
    (cid,) = treated_ids(1)
    now = datetime.now(UTC)
    night = (23 - now.hour + 12) % 24 - 12  # offset where it is about 23:00 local
    tz = "Etc/GMT" if night == 0 else f"Etc/GMT{'-' if night > 0 else '+'}{abs(night)}"
    abandon_carts(db, [cid], tz=tz)
    run()
    status, due = db.execute("select status, due_at from ops.campaign_triggers").fetchone()
    assert status == "pending" and due > now + timedelta(hours=5)
    assert outcomes(db) == {"quiet_hours": 1}
    assert read_index(sink.directory) == []


def test_frequency_cap_holds_across_campaigns(db, sink, monkeypatch):
    vip = CAMPAIGNS["vip_offer"]
    cid = next(i for i in treated_ids(50) if assignment.assign(vip, i)[0] != assignment.HOLDOUT)
    abandon_carts(db, [cid])
    # a batch campaign's candidate for the same customer, due at the same time (ml fallback)
    db.execute(
        """insert into ml.customer_segments (customer_id, vip_score, churn_score, segment, segments,
               features_cutoff_at, scored_at) values (%s, 0.95, 0.1, 'vip', '{vip}', now(), now())""",
        (cid,),
    )
    try:
        timers.ingest(db, CAMPAIGNS, candidates=True)
        run()
    finally:
        db.execute("truncate ml.customer_segments")
    got = outcomes(db)
    # one email only: the higher-priority cart email; the VIP offer is capped (1 per 16 h)
    assert len(read_index(sink.directory)) == 1
    assert got == {"sent": 1, "frequency_capped": 1}, got
    assert db.execute("select campaign from ops.send_ledger").fetchall() == [("cart_abandonment",)]


def test_smtp_failing_at_random_neither_drops_nor_duplicates(db, tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_CAMPAIGNS", f"smtp://127.0.0.1:{port}")
    ids = treated_ids(150)
    abandon_carts(db, ids)
    clock = [datetime.now(UTC)]
    with SmtpSink(tmp_path / "flaky", port, fail_rate=0.3, seed=7) as flaky:
        for _ in range(12):
            timers.ingest(db, CAMPAIGNS)
            try:
                Engine(campaigns=CAMPAIGNS, clock=lambda: clock[0], batch_size=40).run()
            except DeliveryUnavailable:
                pass  # five failures in a row: the batch was rescheduled, as an Airflow retry would run it
            if not db.execute(
                "select count(*) from ops.campaign_triggers where status = 'pending'"
            ).fetchone()[0]:
                break
            clock[0] += timedelta(hours=1)  # past every retry backoff
        assert flaky.handler.rejected > 0
    index = read_index(tmp_path / "flaky")
    ids_seen = Counter(m["message_id"] for m in index)
    assert len(ids_seen) == 150 and max(ids_seen.values()) == 1
    assert db.execute("select count(*) from ops.send_ledger where state = 'sent'").fetchone()[0] == 150


@pytest.mark.slow
def test_killed_worker_mid_batch_neither_drops_nor_duplicates(db, tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_CAMPAIGNS", f"smtp://127.0.0.1:{port}")
    ids = treated_ids(400, start=5000)
    abandon_carts(db, ids)
    timers.ingest(db, CAMPAIGNS)
    env = dict(os.environ, AIRFLOW_CONN_SMTP_CAMPAIGNS=f"smtp://127.0.0.1:{port}")
    with SmtpSink(tmp_path / "kill", port) as s:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "campaigns",
                "run-once",
                "--no-ingest",
                "--batch-size",
                "100",
                "--senders",
                "3",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while s.handler.accepted < 150 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = s.handler.accepted
        assert 0 < killed_at < 400
        in_doubt = db.execute("select count(*) from ops.send_ledger where state = 'sending'").fetchone()[0]
        stats = Engine(campaigns=CAMPAIGNS).run().as_dict()
    index = read_index(tmp_path / "kill")
    per_id = Counter(m["message_id"] for m in index)
    assert len(per_id) == 400  # nothing dropped
    duplicates = len(index) - len(per_id)
    # only a message the relay accepted in the instant before the kill can be resent (same Message-ID)
    # at most one ledger group (16) per sender lane (3) is in doubt
    assert duplicates <= in_doubt <= 48, (duplicates, in_doubt, stats)
    assert db.execute("select count(*) from ops.send_ledger where state = 'sent'").fetchone()[0] == 400
    assert db.execute("select count(*) from ops.decision_log where outcome = 'sent'").fetchone()[0] == 400


def test_policy_and_definitions_load():
    policy = load_policy()
    assert [c.max for c in policy.frequency_caps] == [1, 3]
    assert set(CAMPAIGNS) >= {"cart_abandonment", "browse_abandonment", "vip_offer", "churn_winback"}
