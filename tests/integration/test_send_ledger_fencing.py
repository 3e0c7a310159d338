"""Fencing in the send ledger: a lost claim sends nothing more, and no message goes out
on the strength of a decision its customer has withdrawn since.

Against the real PostgreSQL and SMTP sinks. A slow sink (each DATA answered after
a pause) keeps the lanes busy long enough to kill the claiming session, or to
record a suppression, while they send.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from campaigns import ledger, suppressions, timers
from campaigns.engine import DeliveryUnavailable, Engine
from campaigns.schema import load_campaigns
from harness import fixtures
from harness.smtp_sink import SmtpSink, StoringHandler, free_port, read_index

pytestmark = pytest.mark.integration

CAMPAIGNS = load_campaigns()
CART = CAMPAIGNS["cart_abandonment"]
OPS_TABLES = (
    "ops.campaign_triggers, ops.send_ledger, ops.decision_log, ops.suppressions, ops.consent,"
    " ops.experiment_assignments, ops.campaign_cursors, ops.dead_letters"
)
RAW_TABLES = "raw.events, raw.shop_customers, raw.shop_products, raw.shop_orders"


class SlowSink(StoringHandler):
    """Answers each DATA after a pause, as a busy relay does."""

    pause_s = 0.03

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        await asyncio.sleep(self.pause_s)
        return await super().handle_DATA(server, session, envelope)


class RefusingSender(StoringHandler):
    """A relay that refuses our sender: an outage, every message stays due."""

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        return "550 5.7.1 Sender address rejected"


@pytest.fixture
def db(warehouse_conn):
    warehouse_conn.execute(f"truncate {OPS_TABLES}, {RAW_TABLES}")
    fixtures.insert_products(warehouse_conn)
    return warehouse_conn


@pytest.fixture
def relay(tmp_path, monkeypatch):
    """Starts an SMTP sink of a given handler as the engine's relay (stopping the one before)."""
    port = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_CAMPAIGNS", f"smtp://127.0.0.1:{port}")
    current: list[SmtpSink] = []

    def start(handler_class: type[StoringHandler] = StoringHandler) -> SmtpSink:
        if current:
            current.pop().stop()
        current.append(
            SmtpSink(tmp_path / f"outbox-{handler_class.__name__}", port, handler_class=handler_class)
        )
        return current[0].start()

    yield start
    if current:
        current[0].stop()


def due_carts(conn, n: int, start: int) -> list[int]:
    """`n` treated customers with a cart abandoned 31 minutes ago, ingested into timers."""
    ids = fixtures.treated_customers(CART, n, start)
    fixtures.insert_customers(conn, ids, timezone=fixtures.daytime_timezone())
    at = datetime.now(UTC) - timedelta(minutes=31)
    fixtures.insert_events(conn, [fixtures.cart_event(i, at) for i in ids])
    timers.ingest(conn, CAMPAIGNS)
    return ids


def in_background(engine: Engine) -> tuple[threading.Thread, dict]:
    """engine.run() in a thread; its stats or its exception land in the dict."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["stats"] = engine.run()
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="engine-under-test")
    thread.start()
    return thread, outcome


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def claim_holder(conn) -> int:
    """The session holding the claimed triggers' row locks (the oldest such transaction)."""
    return conn.execute(
        """select l.pid from pg_locks l join pg_stat_activity a using (pid)
           where l.relation = 'ops.campaign_triggers'::regclass and l.mode = 'RowShareLock'
             and l.pid <> pg_backend_pid()
           order by a.xact_start limit 1"""
    ).fetchone()[0]


def outcomes_of(conn) -> Counter:
    return Counter(
        dict(conn.execute("select outcome, count(*) from ops.decision_log group by outcome").fetchall())
    )


def test_claim_connection_killed_mid_batch_while_another_engine_claims(db, relay):
    """The claiming session dies while its lanes send; a second engine claims the same
    triggers at once. The first batch's lanes stop at their next mark, so only a group a
    lane had in flight is sent twice (same Message-ID), and nothing is lost."""
    senders, group = 3, 4
    ids = due_carts(db, 60, start=1000)
    sink = relay(SlowSink)
    first = Engine(campaigns=CAMPAIGNS, senders=senders, ledger_group=group)
    thread, first_outcome = in_background(first)
    wait_for(lambda: sink.handler.accepted >= 2 * group)
    pid = claim_holder(db)
    db.execute("select pg_terminate_backend(%s)", (pid,))
    wait_for(lambda: not db.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone())
    sent_when_killed = sink.handler.accepted
    second = Engine(campaigns=CAMPAIGNS, senders=senders, ledger_group=group).run()
    thread.join(60)
    assert isinstance(first_outcome.get("error"), ledger.ClaimLost), first_outcome
    assert second.claimed == len(ids)  # the second engine had every trigger of the lost batch
    assert sent_when_killed < len(ids) - 2 * senders * group  # most were still to send

    index = read_index(sink.directory)
    per_id = Counter(m["message_id"] for m in index)
    assert len(per_id) == len(ids)  # nothing lost
    assert {m["rcpt"][0] for m in index} == {f"customer{i}@example.test" for i in ids}
    duplicates = len(index) - len(per_id)
    # only what a lane had handed to the relay when the claim was lost: a group per lane
    assert duplicates <= second.resent_in_doubt <= senders * group, (duplicates, second.as_dict())
    assert db.execute("select count(*) from ops.send_ledger where state = 'sent'").fetchone()[0] == len(ids)
    assert outcomes_of(db) == {"sent": len(ids)}
    assert Engine(campaigns=CAMPAIGNS).run().claimed == 0


def test_a_stale_claim_marks_nothing(db):
    """The fence itself: rows another claim has written its token on, or whose claiming
    session is gone, are not marked `sending`."""
    url = os.environ["WAREHOUSE_URL"]
    (cid,) = fixtures.treated_customers(CART, 1, 2000)
    entry = ("cart_abandonment", cid, "t-stale", "reminder", "v1", "h" * 64, datetime.now(UTC))
    a, b = psycopg.connect(url), psycopg.connect(url)
    try:
        first, second = ledger.Claim.of(a), ledger.Claim.of(b)
        ledger_id = ledger.open_rows(db, first, [entry])["t-stale"]["ledger_id"]
        ledger.open_rows(db, second, [entry])  # the trigger was claimed again
        assert ledger.mark_group(db, first, [ledger_id], []) == {}
        assert ledger.mark_group(db, second, [ledger_id], []) == {ledger_id: ("sending", None)}
        db.execute("select pg_terminate_backend(%s)", (first.pid,))
        wait_for(
            lambda: not db.execute("select 1 from pg_stat_activity where pid = %s", (first.pid,)).fetchone()
        )
        ledger.open_rows(db, first, [entry])  # its token back on the row: its session is what is gone
        assert ledger.mark_group(db, first, [ledger_id], []) == {}
    finally:
        a.close()
        b.close()


def test_a_suppression_or_withdrawn_consent_during_a_send_stops_the_rest(db, relay):
    """Recorded while the lanes send: no message to that customer goes out after it
    (at most the one already marked `sending` when it was recorded)."""
    ids = due_carts(db, 10, start=3000)
    sink = relay(SlowSink)
    thread, outcome = in_background(Engine(campaigns=CAMPAIGNS, senders=1, ledger_group=1))
    wait_for(lambda: sink.handler.accepted >= 1)
    for n, cid in enumerate(ids):
        address = suppressions.hash_email(f"customer{cid}@example.test")
        if n % 2:
            suppressions.revoke_consent(db, address, cid, "test")
        else:
            suppressions.add(db, address, "complaint", "test")
    sent_before = sink.handler.accepted
    thread.join(60)
    assert "error" not in outcome, outcome
    sent = len(read_index(sink.directory))
    assert sent <= sent_before + 1, (sent, sent_before)
    got = outcomes_of(db)
    assert got["sent"] == sent and got["suppressed"] + got["no_consent"] == len(ids) - sent, got
    assert got["suppressed"] >= 3 and got["no_consent"] >= 3, got
    stopped = db.execute(
        """select l.state, l.last_error, d.detail from ops.send_ledger l
           join ops.decision_log d using (trigger_id) where d.outcome <> 'sent'"""
    ).fetchall()
    assert all(state == "failed" and detail.get("since_decision") for state, _, detail in stopped)
    assert {error for _, error, _ in stopped} == {
        "not sent: complaint since the decision",
        "not sent: no_consent since the decision",
    }


def test_a_retry_is_decided_again_at_its_next_claim(db, relay):
    """A message the relay could not take (an outage) is rescheduled; what happens before
    its next claim (consent withdrawn, a purchase, a suppression, its expiry) counts."""
    revoked, purchased, suppressed, expired, good = due_carts(db, 5, start=4000)
    relay(RefusingSender)
    with pytest.raises(DeliveryUnavailable):
        Engine(campaigns=CAMPAIGNS).run()
    assert outcomes_of(db) == {"retry": 5}
    assert db.execute("select count(*) from ops.send_ledger where state = 'failed'").fetchone()[0] == 5

    suppressions.revoke_consent(
        db, suppressions.hash_email(f"customer{revoked}@example.test"), revoked, "test"
    )
    fixtures.insert_events(
        db,
        [fixtures.track_event(purchased, "Order Completed", {"order_id": 1}, datetime.now(UTC))],
        source="webhook:shop",
    )
    suppressions.add(db, suppressions.hash_email(f"customer{suppressed}@example.test"), "hard_bounce", "test")
    db.execute("update ops.campaign_triggers set expires_at = now() where customer_id = %s", (expired,))

    sink = relay()
    later = datetime.now(UTC) + timedelta(hours=2)  # past every backoff
    stats = Engine(campaigns=CAMPAIGNS, clock=lambda: later).run()
    assert stats.sent == 1
    assert [m["rcpt"] for m in read_index(sink.directory)] == [[f"customer{good}@example.test"]]
    decided = dict(
        db.execute(
            """select distinct on (customer_id) customer_id, outcome from ops.decision_log
               order by customer_id, decision_id desc"""
        ).fetchall()
    )
    assert decided == {
        revoked: "no_consent",
        purchased: "purchased_since",
        suppressed: "suppressed",
        expired: "expired",
        good: "sent",
    }
    states = dict(db.execute("select customer_id, state from ops.send_ledger").fetchall())
    assert states == {
        revoked: "failed",
        purchased: "failed",
        suppressed: "failed",
        expired: "failed",
        good: "sent",
    }
