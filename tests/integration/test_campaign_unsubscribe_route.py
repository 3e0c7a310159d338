"""The RFC 8058 one-click route the collector mounts: POST records the suppression at once."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from campaigns import suppressions, unsubscribe

pytestmark = pytest.mark.integration


def test_one_click_post_records_suppression(warehouse_conn):
    warehouse_conn.execute("truncate ops.suppressions, ops.consent")
    app = FastAPI()
    app.include_router(unsubscribe.router)
    client = TestClient(app)
    h = suppressions.hash_email("ana@example.test")
    token = unsubscribe.make_token(5, h, "cart_abandonment")

    page = client.get("/unsubscribe", params={"token": token})
    assert page.status_code == 200 and "<form method='post'" in page.text
    assert warehouse_conn.execute("select count(*) from ops.suppressions").fetchone()[0] == 0  # GET changes nothing

    r = client.post(
        "/unsubscribe",
        params={"token": token},
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert warehouse_conn.execute("select email_hash, reason from ops.suppressions").fetchall() == [(h, "unsubscribe")]
    assert warehouse_conn.execute("select granted from ops.consent where customer_id = 5").fetchone() == (False,)
    assert client.post("/unsubscribe", params={"token": token}).status_code == 200  # idempotent

    bad = client.post("/unsubscribe", params={"token": token[:-3] + "AAA"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_token"
