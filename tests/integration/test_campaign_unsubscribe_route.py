"""The RFC 8058 one-click route the collector mounts: POST records the suppression at once,
checks the token before the database, never waits on the engine's row locks, and answers 503
with Retry-After when the database is down; the token is escaped in the page."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from campaigns import suppressions, unsubscribe
from tests.integration.test_collector_api import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def client():
    app = FastAPI()
    app.include_router(unsubscribe.router)
    return TestClient(app)


def one_click(client, token):
    return client.post(
        "/unsubscribe",
        params={"token": token},
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def test_one_click_post_records_suppression(warehouse_conn, client):
    warehouse_conn.execute("truncate ops.suppressions, ops.consent")
    h = suppressions.hash_email("ana@example.test")
    token = unsubscribe.make_token(5, h, "cart_abandonment")

    page = client.get("/unsubscribe", params={"token": token})
    assert page.status_code == 200 and "<form method='post'" in page.text
    assert (
        warehouse_conn.execute("select count(*) from ops.suppressions").fetchone()[0] == 0
    )  # GET changes nothing

    assert one_click(client, token).status_code == 200
    assert warehouse_conn.execute("select email_hash, reason from ops.suppressions").fetchall() == [
        (h, "unsubscribe")
    ]
    assert warehouse_conn.execute("select granted from ops.consent where customer_id = 5").fetchone() == (
        False,
    )
    assert client.post("/unsubscribe", params={"token": token}).status_code == 200  # idempotent

    bad = client.post("/unsubscribe", params={"token": token[:-3] + "AAA"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_token"


def test_markup_in_a_token_is_refused_and_never_echoed(client):
    token = unsubscribe.make_token(5, "0" * 64, "cart_abandonment")
    # Characters outside base64url: a lenient decoder skips them, so the signature still matched
    # and the page wrote them into its form's action attribute.
    for markup in ("'\"><>", "'><script>alert(1)</script>"):
        page = client.get("/unsubscribe", params={"token": token + markup})
        assert page.status_code == 400 and markup not in page.text


def test_the_token_is_checked_before_the_database_and_a_database_outage_is_a_503(monkeypatch, client):
    monkeypatch.setenv("WAREHOUSE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/warehouse")
    token = unsubscribe.make_token(5, "0" * 64, "cart_abandonment")
    assert client.post("/unsubscribe", params={"token": token[:-3] + "AAA"}).status_code == 400
    response = one_click(client, token)
    assert response.status_code == 503 and response.headers["Retry-After"] == str(unsubscribe.RETRY_AFTER_S)


def test_a_click_does_not_wait_for_the_engines_row_locks(test_databases, client):
    """The engine holds a claimed trigger row locked while it sends: the unsubscribe is recorded at
    once anyway (the row is skipped; the engine checks suppressions before it sends)."""
    import psycopg

    with psycopg.connect(test_databases["warehouse"], autocommit=True) as conn:
        conn.execute("truncate ops.suppressions, ops.consent, ops.campaign_triggers")
        for trigger_id, customer in (("t-locked", 77), ("t-free", 77)):
            conn.execute(
                """insert into ops.campaign_triggers (trigger_id, campaign, customer_id, trigger_key,
                       first_activity_at, last_activity_at, original_due_at, due_at)
                   values (%s, 'cart_abandonment', %s, %s, now(), now(), now(), now())""",
                (trigger_id, customer, trigger_id),
            )
    h = suppressions.hash_email("locked@example.test")
    with psycopg.connect(test_databases["warehouse"]) as engine:
        engine.execute("select 1 from ops.campaign_triggers where trigger_id = 't-locked' for update")
        started = time.monotonic()
        response = one_click(client, unsubscribe.make_token(77, h, "cart_abandonment"))
        elapsed = time.monotonic() - started
        engine.rollback()
    assert response.status_code == 200 and elapsed < 2, elapsed
    with psycopg.connect(test_databases["warehouse"]) as conn:
        assert conn.execute("select reason from ops.suppressions where email_hash = %s", (h,)).fetchone() == (
            "unsubscribe",
        )
        statuses = dict(conn.execute("select trigger_id, status from ops.campaign_triggers").fetchall())
    assert statuses == {"t-locked": "pending", "t-free": "cancelled"}
