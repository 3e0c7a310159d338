"""The collector's HTTP API against a real uvicorn process and the session's test database.

Covers Segment's endpoints (also through the real segment-analytics-python and
rudder-sdk-python clients), webhooks (Standard Webhooks and Shopify), identity
links, NOTIFY after commit, bad input and the privacy of the logs. The helpers
at the top (`CollectorProcess`, `sign_webhook`) are shared with the other
test_collector_* modules.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from warehouse.settings import RAW_EVENTS_CHANNEL

pytestmark = pytest.mark.integration

WRITE_KEY = "test-web-key"
APP_KEY = "test-app-key"
REJECT_KEY = "test-reject-key"  # source "rejects": every request sent with it must store nothing
SHOP_SECRET = "whsec_" + base64.b64encode(b"shop-secret-for-tests-0123456789").decode()
SHOP_NEW_SECRET = "whsec_" + base64.b64encode(b"rotated-shop-secret-0123456789ab").decode()
ESP_SECRET = "whsec_" + base64.b64encode(b"esp-secret-for-tests-0123456789a").decode()
SHOPIFY_SECRET = "shpss_test_secret"
COLLECTOR_ENV = {
    "COLLECTOR_WRITE_KEYS": f"{WRITE_KEY}:web,{APP_KEY}:app,{REJECT_KEY}:rejects",
    "COLLECTOR_WEBHOOK_SECRETS": f"shop:{SHOP_SECRET} {SHOP_NEW_SECRET},esp:{ESP_SECRET}",
    "COLLECTOR_SHOPIFY_SECRETS": f"shopify:{SHOPIFY_SECRET}",
    "COLLECTOR_LOG_LEVEL": "DEBUG",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CollectorProcess:
    """`python -m collector` in its own process, on a free loopback port."""

    def __init__(self, database_url: str, log_path: Path, port: int | None = None, **env: str):
        self.database_url = database_url
        self.log_path = log_path
        self.port = port or free_port()
        self.env = {
            **os.environ,
            **COLLECTOR_ENV,
            **env,
            "WAREHOUSE_URL": database_url,
            "COLLECTOR_PORT": str(self.port),
        }
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> CollectorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collector"], env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        path = "/ready" if wait_ready else "/health"
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"collector exited: {self.log_path.read_text()[-2000:]}"
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"collector not up: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def sign_webhook(secret: str, body: bytes, webhook_id: str, at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, at, body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


@pytest.fixture(scope="module")
def collector(test_databases, tmp_path_factory):
    process = CollectorProcess(
        test_databases["warehouse"], tmp_path_factory.mktemp("collector") / "collector.log"
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def client(collector):
    with httpx.Client(base_url=collector.url, timeout=10) as http:
        yield http


def rows(conn: psycopg.Connection, where: str, params=()) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(f"select * from raw.events where {where} order by message_id", params).fetchall()


def count_rejected(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from raw.events where source = 'rejects'").fetchone()[0]


def new_id() -> str:
    return str(uuid.uuid4())


# ---- health, spec ---------------------------------------------------------------------------


def test_health_ready_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/track",
        "/v1/identify",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/batch",
    ):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["type"] == "object"
    assert "/webhooks/{source}" in spec["paths"]


# ---- Segment API ---------------------------------------------------------------------------


def test_track_is_stored_once_and_a_retry_is_acknowledged(client, warehouse_conn):
    message_id = new_id()
    event = {
        "messageId": message_id,
        "userId": "customer-1",
        "anonymousId": "anon-1",
        "event": "Product Viewed",
        "properties": {"product_id": "42", "price": 19.5},
        "context": {"page": {"path": "/p/42"}},
        "timestamp": "2026-11-29T10:00:00.123Z",
        "sentAt": "2026-11-29T10:00:01Z",
    }
    for _ in range(3):
        response = client.post("/v1/track", content=orjson.dumps(event), headers=basic(WRITE_KEY))
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}
    [row] = rows(warehouse_conn, "message_id = %s", (message_id,))
    assert row["type"] == "track" and row["event"] == "Product Viewed" and row["source"] == "web"
    assert row["user_id"] == "customer-1" and row["anonymous_id"] == "anon-1"
    assert row["properties"] == {"product_id": "42", "price": 19.5}
    assert row["context"] == {"page": {"path": "/p/42"}}
    assert row["occurred_at"] == datetime(2026, 11, 29, 10, 0, 0, 123000, tzinfo=UTC)
    assert row["sent_at"] == datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC)
    assert abs(row["received_at"] - datetime.now(UTC)) < timedelta(minutes=1)


def test_every_call_type_and_the_write_key_in_the_body(client, warehouse_conn):
    ids = {call: new_id() for call in ("identify", "page", "screen", "group", "alias")}
    calls = {
        "identify": {"userId": "c-2", "anonymousId": "a-2", "traits": {"plan": "vip"}},
        "page": {"anonymousId": "a-2", "name": "Home", "category": "Landing", "properties": {"path": "/"}},
        "screen": {"userId": "c-2", "name": "Cart"},
        "group": {"userId": "c-2", "groupId": 77, "traits": {"name": "B2B"}},
        "alias": {"userId": "c-2", "previousId": "old-2"},
    }
    for call, body in calls.items():
        body = {**body, "messageId": ids[call], "writeKey": APP_KEY}
        response = client.post(f"/v1/{call}", content=orjson.dumps(body))
        assert response.status_code == 200, (call, response.text)
    stored = {r["type"]: r for r in rows(warehouse_conn, "message_id = any(%s)", (list(ids.values()),))}
    assert set(stored) == set(calls)
    assert all(r["source"] == "app" for r in stored.values())
    assert stored["identify"]["traits"] == {"plan": "vip"}
    assert stored["page"]["name"] == "Home" and stored["page"]["properties"] == {
        "category": "Landing",
        "path": "/",
    }
    assert stored["screen"]["name"] == "Cart"
    assert stored["group"]["group_id"] == "77" and stored["group"]["traits"] == {"name": "B2B"}
    assert stored["alias"]["previous_id"] == "old-2" and stored["alias"]["user_id"] == "c-2"


def test_gzip_batch_with_batch_context_and_duplicate_ids(client, warehouse_conn):
    ids = [new_id() for _ in range(50)]
    batch = [
        {"type": "track", "event": "Cart Viewed", "anonymousId": f"a-{i}", "messageId": m}
        for i, m in enumerate(ids)
    ]
    batch.append(dict(batch[0]))  # the same messageId twice in one batch: stored once
    body = gzip.compress(
        orjson.dumps(
            {"batch": batch, "context": {"library": {"name": "test"}}, "sentAt": "2026-11-29T10:00:00Z"}
        )
    )
    response = client.post(
        "/v1/batch", content=body, headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    stored = rows(warehouse_conn, "message_id = any(%s)", (ids,))
    assert len(stored) == 50
    assert all(r["context"] == {"library": {"name": "test"}} for r in stored)
    assert all(r["sent_at"] == datetime(2026, 11, 29, 10, tzinfo=UTC) for r in stored)
    # Re-sending the batch with half of it new stores only the new half (the COPY falls back).
    more = [new_id() for _ in range(25)]
    batch2 = batch[:25] + [
        {"type": "track", "event": "Cart Viewed", "anonymousId": "x", "messageId": m} for m in more
    ]
    response = client.post("/v1/batch", content=orjson.dumps({"batch": batch2}), headers=basic(WRITE_KEY))
    assert response.status_code == 200, response.text
    assert len(rows(warehouse_conn, "message_id = any(%s)", (ids + more,))) == 75


def test_copy_keeps_backslashes_tabs_and_newlines_exactly(client, warehouse_conn):
    """Batches go to COPY as text the collector formats itself: values COPY must escape survive."""
    tricky = ["a\\b", "tab\there", "new\nline", "cr\r", "\\N", "\\.", 'quote " ü \u2028']
    batch = [
        {
            "type": "track",
            "event": tricky[i % len(tricky)],
            "userId": f"u\\{i}",
            "messageId": new_id(),
            "properties": {"text": tricky[i % len(tricky)], "nested": {"t": tricky}},
        }
        for i in range(40)  # over the multi-row INSERT's 32: COPY
    ]
    response = client.post("/v1/batch", json={"batch": batch}, headers=basic(WRITE_KEY))
    assert response.status_code == 200, response.text
    stored = {
        r["message_id"]: r
        for r in rows(warehouse_conn, "message_id = any(%s)", ([e["messageId"] for e in batch],))
    }
    for call in batch:
        row = stored[call["messageId"]]
        assert (row["event"], row["user_id"], row["properties"]) == (
            call["event"],
            call["userId"],
            call["properties"],
        )


def test_a_call_without_message_id_is_deduplicated_by_content(client, warehouse_conn):
    event = {"userId": "c-no-id", "event": "Signed Up", "timestamp": "2026-11-29T09:00:00Z"}
    for sent_at in ("2026-11-29T09:00:01Z", "2026-11-29T09:00:05Z"):  # a retry: only sentAt differs
        assert (
            client.post("/v1/track", json={**event, "sentAt": sent_at}, headers=basic(WRITE_KEY)).status_code
            == 200
        )
    stored = rows(warehouse_conn, "user_id = 'c-no-id'")
    assert len(stored) == 1 and stored[0]["message_id"].startswith("auto-")


def test_a_batch_stores_its_valid_calls_and_lists_the_invalid_ones(client, warehouse_conn):
    good = [{"type": "track", "event": "E", "userId": "u", "messageId": new_id()} for _ in range(5)]
    no_id = {"type": "track", "event": "E", "messageId": new_id()}  # no userId or anonymousId
    nan = {
        "type": "track",
        "event": "E",
        "userId": "u",
        "messageId": new_id(),
        "properties": {"quantity": "nan"},
    }
    response = client.post("/v1/batch", json={"batch": [*good, no_id, nan]}, headers=basic(WRITE_KEY))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert [(r["index"], r["code"], r["field"]) for r in body["rejected"]] == [
        (5, "missing_id", "userId"),
        (6, "invalid_number", "properties.quantity"),
    ]
    stored = rows(warehouse_conn, "message_id = any(%s)", ([e["messageId"] for e in [*good, no_id, nan]],))
    assert {r["message_id"] for r in stored} == {e["messageId"] for e in good}
    # Nothing valid: a 400 naming the first invalid call, nothing stored.
    response = client.post("/v1/batch", json={"batch": [no_id, nan]}, headers=basic(WRITE_KEY))
    assert response.status_code == 400 and response.json()["index"] == 0
    assert len(response.json()["rejected"]) == 2


def test_clients_cannot_speak_in_the_webhook_namespace(client, warehouse_conn):
    """The contract the ingest relies on: only signed webhooks write rows whose source (and
    message_id) start with `webhook:`; a client's messageId cannot pre-empt a webhook's id."""
    taken = f"webhook:esp:msg_{new_id()}"
    track = {
        "userId": "1",
        "event": "Email Bounced",
        "messageId": taken,
        "properties": {"email": "x@example.com"},
    }
    response = client.post("/v1/track", json=track, headers=basic(WRITE_KEY))
    assert response.status_code == 400 and response.json()["code"] == "reserved_message_id"
    batch = client.post("/v1/batch", json={"batch": [{**track, "type": "track"}]}, headers=basic(APP_KEY))
    assert batch.status_code == 400 and batch.json()["field"] == "messageId"
    for key in (WRITE_KEY, APP_KEY):  # every write key's rows carry its own source
        client.post("/v1/track", json={"userId": "1", "event": "Unsubscribed"}, headers=basic(key))
    assert rows(warehouse_conn, "message_id = %s", (taken,)) == []
    sources = {
        r[0]
        for r in warehouse_conn.execute(
            "select distinct source from raw.events where context #> '{webhook}' is null"
        )
    }
    assert sources and not any(source.startswith("webhook:") for source in sources)


def test_outside_development_the_collector_refuses_to_start_with_known_or_missing_secrets(tmp_path):
    from collector.config import DEV_WEBHOOK_SECRETS

    production = {**os.environ, "EMAILP_ENV": "production", "UNSUBSCRIBE_SECRET": "p" * 40}
    production.update({k: v for k, v in COLLECTOR_ENV.items()})
    cases = {
        "development write key": {"COLLECTOR_WRITE_KEYS": "dev-web-write-key:web"},
        "development secret": {"COLLECTOR_WEBHOOK_SECRETS": f"esp:{DEV_WEBHOOK_SECRETS['esp'][0]}"},
        "COLLECTOR_WRITE_KEYS is not set": {"COLLECTOR_WRITE_KEYS": ""},
        "UNSUBSCRIBE_SECRET is not set": {"UNSUBSCRIBE_SECRET": ""},
        "UNSUBSCRIBE_SECRET is shorter": {"UNSUBSCRIBE_SECRET": "short"},
        "webhook:": {"COLLECTOR_WRITE_KEYS": "k:webhook:esp"},
    }
    for reason, change in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "collector"],
            env={**production, **change, "COLLECTOR_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and reason in result.stderr, (reason, result.stderr[-500:])


def test_the_collector_never_imports_the_campaign_engine():
    """The collector mounts the unsubscribe route; importing it must not pull in the engine
    (nor ML, Airflow or pandas: the collector's deployment needs none of them)."""
    code = (
        "import sys, collector.app, collector.__main__;"
        "collector.app.create_app();"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('campaigns', 'ml', 'airflow', 'pandas')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 (our own printed list)
    assert "campaigns.unsubscribe" in loaded  # the route is mounted
    assert not [
        m for m in loaded if m.split(".")[0] != "campaigns" or m in ("campaigns.engine", "campaigns.timers")
    ]
    assert set(loaded) <= {"campaigns", "campaigns.unsubscribe", "campaigns.suppressions"}, loaded


def test_identify_and_alias_link_ids_keeping_the_earliest(client, warehouse_conn):
    anonymous, user = f"anon-{new_id()}", f"user-{new_id()}"
    calls = [
        {"type": "identify", "anonymousId": anonymous, "userId": user, "timestamp": "2026-11-29T12:00:00Z"},
        {"type": "identify", "anonymousId": anonymous, "userId": user, "timestamp": "2026-11-29T11:00:00Z"},
        {
            "type": "alias",
            "previousId": f"{anonymous}-old",
            "userId": user,
            "timestamp": "2026-11-29T10:00:00Z",
        },
        {"type": "identify", "userId": user},  # no anonymousId: nothing to link
    ]
    for call in calls:
        call["messageId"] = new_id()
    assert client.post("/v1/batch", json={"batch": calls[:1]}, headers=basic(WRITE_KEY)).status_code == 200
    assert client.post("/v1/batch", json={"batch": calls[1:]}, headers=basic(WRITE_KEY)).status_code == 200
    links = warehouse_conn.execute(
        "select anonymous_id, user_id, message_id, linked_at from raw.identity_links where user_id = %s order by 1",
        (user,),
    ).fetchall()
    assert links == [
        (anonymous, user, calls[1]["messageId"], datetime(2026, 11, 29, 11, tzinfo=UTC)),
        (f"{anonymous}-old", user, calls[2]["messageId"], datetime(2026, 11, 29, 10, tzinfo=UTC)),
    ]


def test_notify_follows_the_commit(client, test_databases):
    message_id = new_id()
    with psycopg.connect(test_databases["warehouse"], autocommit=True) as listener:
        listener.execute(f"listen {RAW_EVENTS_CHANNEL}")
        response = client.post(
            "/v1/track", json={"messageId": message_id, "userId": "n", "event": "E"}, headers=basic(WRITE_KEY)
        )
        assert response.status_code == 200
        notices = list(listener.notifies(timeout=5, stop_after=1))
        assert notices and notices[0].channel == RAW_EVENTS_CHANNEL
        payload = orjson.loads(notices[0].payload)
        assert payload["events"] >= 1 and "received_at" in payload
        # Whoever the NOTIFY wakes sees the event: it was committed before.
        assert listener.execute("select 1 from raw.events where message_id = %s", (message_id,)).fetchone()


def test_the_official_segment_client_delivers(collector, warehouse_conn):
    from segment.analytics import Client

    errors = []
    client = Client(
        WRITE_KEY, host=collector.url, gzip=True, on_error=lambda e, batch: errors.append(e), max_retries=2
    )
    user = f"seg-{new_id()}"
    sent = [
        client.identify(user, {"email": "ada@example.com"}, anonymous_id=f"anon-{user}")[1],
        client.track(user, "Order Completed", {"revenue": 42.0, "products": [{"sku": "S-1"}]})[1],
        client.page(user, "Shop", "Home", {"path": "/"})[1],
        client.screen(user, "App", "Cart")[1],
        client.group(user, "g-1", {"name": "Team"})[1],
        client.alias(f"anon-{user}-previous", user)[1],
    ]
    client.flush()
    client.join()
    assert errors == []
    stored = rows(warehouse_conn, "message_id = any(%s)", ([m["messageId"] for m in sent],))
    assert sorted(r["type"] for r in stored) == sorted(
        ["identify", "track", "page", "screen", "group", "alias"]
    )
    assert {r["source"] for r in stored} == {"web"}
    track = next(r for r in stored if r["type"] == "track")
    assert track["event"] == "Order Completed" and track["properties"]["revenue"] == 42.0
    assert track["context"]["library"]["name"] == "analytics-python"


def test_the_rudderstack_client_delivers(collector, warehouse_conn):
    from rudderstack.analytics.client import Client

    errors = []
    client = Client(APP_KEY, host=collector.url, on_error=lambda e, batch: errors.append(e), max_retries=2)
    user = f"rudder-{new_id()}"
    sent = [
        client.identify(user, {"plan": "vip"}, anonymous_id=f"anon-{user}")[1],
        client.track(user, "Product Viewed", {"product_id": "9"})[1],
        client.page(user, "Shop", "Home")[1],
        client.screen(user, "App", "Cart")[1],
        client.group(user, "g-2")[1],
        client.alias(f"anon-{user}-previous", user)[1],
    ]
    client.flush()
    client.join()
    assert errors == []
    stored = rows(warehouse_conn, "message_id = any(%s)", ([m["messageId"] for m in sent],))
    assert len(stored) == 6 and {r["source"] for r in stored} == {"app"}
    links = warehouse_conn.execute(
        "select anonymous_id from raw.identity_links where user_id = %s order by 1", (user,)
    )
    assert [r[0] for r in links] == [f"anon-{user}", f"anon-{user}-previous"]


# ---- webhooks ---------------------------------------------------------------------------------

WEBHOOK_EVENTS = [
    ("shop", "cart.updated", "Cart Updated"),
    ("shop", "checkout.started", "Checkout Started"),
    ("shop", "order.placed", "Order Completed"),
    ("shop", "product.viewed", "Product Viewed"),
    ("esp", "email.delivered", "Email Delivered"),
    ("esp", "email.opened", "Email Opened"),
    ("esp", "email.clicked", "Email Link Clicked"),
    ("esp", "email.bounced", "Email Bounced"),
    ("esp", "email.complained", "Marked as Spam"),
    ("esp", "email.unsubscribed", "Unsubscribed"),
]


@pytest.mark.parametrize(("source", "kind", "event"), WEBHOOK_EVENTS)
def test_standard_webhooks_become_track_calls(client, warehouse_conn, source, kind, event):
    secret = SHOP_SECRET if source == "shop" else ESP_SECRET
    webhook_id = f"msg_{new_id()}"
    body = orjson.dumps(
        {
            "type": kind,
            "timestamp": "2026-11-29T08:00:00Z",
            "data": {"customer_id": 1234, "anonymous_id": "a-9", "email": "bo@example.com"},
        }
    )
    for _ in range(2):  # the sender's retry: acknowledged, stored once
        response = client.post(
            f"/webhooks/{source}", content=body, headers=sign_webhook(secret, body, webhook_id)
        )
        assert response.status_code == 200, response.text
    [row] = rows(warehouse_conn, "message_id = %s", (f"webhook:{source}:{webhook_id}",))
    assert row["type"] == "track" and row["event"] == event and row["source"] == f"webhook:{source}"
    assert row["user_id"] == "1234" and row["anonymous_id"] == "a-9"
    assert row["properties"]["email"] == "bo@example.com"
    assert row["occurred_at"] == datetime(2026, 11, 29, 8, tzinfo=UTC)
    assert row["context"]["webhook"] == {"id": webhook_id, "scheme": "standard-webhooks", "type": kind}


def test_webhook_secrets_rotate(client, warehouse_conn):
    body = b'{"type": "order.placed", "data": {"customer_id": 5}}'
    # Our side: the new secret configured next to the old one.
    webhook_id = f"msg_{new_id()}"
    assert (
        client.post(
            "/webhooks/shop", content=body, headers=sign_webhook(SHOP_NEW_SECRET, body, webhook_id)
        ).status_code
        == 200
    )
    # The sender's side: two signatures, one of them from a secret we do not know.
    webhook_id2 = f"msg_{new_id()}"
    headers = sign_webhook(SHOP_SECRET, body, webhook_id2)
    unknown = "whsec_" + base64.b64encode(b"some-other-secret-0123456789abcd").decode()
    other = sign_webhook(unknown, body, webhook_id2)["webhook-signature"]
    headers["webhook-signature"] = f"{other} {headers['webhook-signature']}"
    assert client.post("/webhooks/shop", content=body, headers=headers).status_code == 200
    assert (
        len(
            rows(
                warehouse_conn,
                "message_id = any(%s)",
                ([f"webhook:shop:{webhook_id}", f"webhook:shop:{webhook_id2}"],),
            )
        )
        == 2
    )


def _webhook_rejections():
    body = b'{"type": "order.placed", "data": {}}'
    now = datetime.now(UTC)
    good = sign_webhook(SHOP_SECRET, body, "msg_reject")
    wrong_secret = sign_webhook(ESP_SECRET, body, "msg_reject")
    tampered = sign_webhook(SHOP_SECRET, b'{"type": "order.placed", "data": {"x": 1}}', "msg_reject")
    return [
        ("bad signature", "shop", body, wrong_secret, 401, "invalid_signature"),
        ("tampered body", "shop", body, tampered, 401, "invalid_signature"),
        (
            "stale",
            "shop",
            body,
            sign_webhook(SHOP_SECRET, body, "msg_reject", now - timedelta(minutes=6)),
            401,
            "stale_timestamp",
        ),
        (
            "future",
            "shop",
            body,
            sign_webhook(SHOP_SECRET, body, "msg_reject", now + timedelta(minutes=6)),
            401,
            "stale_timestamp",
        ),
        ("no headers", "shop", body, {}, 401, "missing_signature"),
        ("malformed signature", "shop", body, {**good, "webhook-signature": "v1"}, 401, "invalid_signature"),
        ("garbage timestamp", "shop", body, {**good, "webhook-timestamp": "soon"}, 401, "invalid_signature"),
        ("unknown source", "nobody", body, good, 404, "unknown_source"),
    ]


# Cases are built when each test runs, not at collection: signatures carry
# timestamps, and a long session would age "6 minutes ahead" into tolerance.
WEBHOOK_REJECTION_CASES = [case[0] for case in _webhook_rejections()]


@pytest.mark.parametrize("case", WEBHOOK_REJECTION_CASES)
def test_webhook_rejections(client, warehouse_conn, case):
    _, source, body, headers, status, code = next(c for c in _webhook_rejections() if c[0] == case)
    response = client.post(f"/webhooks/{source}", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert rows(warehouse_conn, "message_id like %s", (f"webhook:{source}:msg_reject",)) == []


def test_webhook_within_tolerance_is_accepted(client, warehouse_conn):
    body = b'{"type": "email.opened", "data": {"customer_id": 8}}'
    for minutes in (-4, 4):
        webhook_id = f"msg_{new_id()}"
        at = datetime.now(UTC) + timedelta(minutes=minutes)
        assert (
            client.post(
                "/webhooks/esp", content=body, headers=sign_webhook(ESP_SECRET, body, webhook_id, at)
            ).status_code
            == 200
        )


def test_shopify_webhooks(client, warehouse_conn):
    body = orjson.dumps(
        {
            "id": 820982911946154508,
            "customer": {"id": 115310627314723954},
            "updated_at": "2026-11-29T07:00:00-05:00",
        }
    )
    digest = base64.b64encode(hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    webhook_id = new_id()
    headers = {
        "X-Shopify-Hmac-SHA256": digest,
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": webhook_id,
    }
    assert client.post("/webhooks/shopify", content=body, headers=headers).status_code == 200
    [row] = rows(warehouse_conn, "message_id = %s", (f"webhook:shopify:{webhook_id}",))
    assert row["event"] == "Order Completed" and row["user_id"] == "115310627314723954"
    assert row["occurred_at"] == datetime(2026, 11, 29, 12, tzinfo=UTC)
    bad = {
        **headers,
        "X-Shopify-Hmac-SHA256": base64.b64encode(b"x" * 32).decode(),
        "X-Shopify-Webhook-Id": new_id(),
    }
    response = client.post("/webhooks/shopify", content=body, headers=bad)
    assert response.status_code == 401 and response.json()["code"] == "invalid_signature"


# ---- bad input --------------------------------------------------------------------------------

_BIG = "x" * (33 * 1024)


def _bad_inputs():
    auth = basic(REJECT_KEY)
    ok = {"userId": "u", "event": "E"}
    bomb = gzip.compress(b'{"batch": [' + b" " * (5 * 1024 * 1024) + b"]}")
    return [
        ("malformed json", "/v1/track", b'{"userId": "u", ', auth, 400, "invalid_json"),
        ("empty body", "/v1/track", b"", auth, 400, "invalid_json"),
        ("array body", "/v1/track", b"[1, 2]", auth, 400, "invalid_body"),
        ("no ids", "/v1/track", orjson.dumps({"event": "E"}), auth, 400, "missing_id"),
        ("no event", "/v1/track", orjson.dumps({"userId": "u"}), auth, 400, "missing_event"),
        ("userId a bool", "/v1/track", orjson.dumps({**ok, "userId": True}), auth, 400, "wrong_type"),
        ("properties a list", "/v1/track", orjson.dumps({**ok, "properties": [1]}), auth, 400, "wrong_type"),
        ("context a string", "/v1/track", orjson.dumps({**ok, "context": "web"}), auth, 400, "wrong_type"),
        (
            "bad timestamp",
            "/v1/track",
            orjson.dumps({**ok, "timestamp": "yesterday"}),
            auth,
            400,
            "invalid_timestamp",
        ),
        (
            "numeric timestamp",
            "/v1/track",
            orjson.dumps({**ok, "timestamp": 1700000000}),
            auth,
            400,
            "wrong_type",
        ),
        (
            "NUL in event",
            "/v1/track",
            orjson.dumps({**ok, "event": "a\x00b"}),
            auth,
            400,
            "invalid_character",
        ),
        (
            "NUL in properties",
            "/v1/track",
            orjson.dumps({**ok, "properties": {"k": "a\x00"}}),
            auth,
            400,
            "invalid_character",
        ),
        ("huge id", "/v1/track", orjson.dumps({**ok, "userId": "u" * 300}), auth, 400, "value_too_long"),
        ("alias without previousId", "/v1/alias", orjson.dumps({"userId": "u"}), auth, 400, "missing_id"),
        ("group without groupId", "/v1/group", orjson.dumps({"userId": "u"}), auth, 400, "missing_id"),
        (
            "oversize event",
            "/v1/track",
            orjson.dumps({**ok, "properties": {"p": _BIG}}),
            auth,
            413,
            "payload_too_large",
        ),
        (
            "oversize event in batch",
            "/v1/batch",
            orjson.dumps({"batch": [{**ok, "type": "track", "properties": {"p": _BIG}}]}),
            auth,
            413,
            "event_too_large",
        ),
        (
            "oversize batch",
            "/v1/batch",
            orjson.dumps({"batch": [{**ok, "type": "track", "properties": {"p": "x" * 30000}}] * 20}),
            auth,
            413,
            "payload_too_large",
        ),
        (
            "too many events",
            "/v1/batch",
            orjson.dumps({"batch": [{**ok, "type": "track"}] * 2501}),
            auth,
            400,
            "too_many_events",
        ),
        ("empty batch", "/v1/batch", b'{"batch": []}', auth, 400, "empty_batch"),
        ("batch not a list", "/v1/batch", b'{"batch": {}}', auth, 400, "wrong_type"),
        (
            "unknown type in batch",
            "/v1/batch",
            orjson.dumps({"batch": [{**ok, "type": "click"}]}),
            auth,
            400,
            "invalid_type",
        ),
        ("gzip bomb", "/v1/batch", bomb, {**auth, "Content-Encoding": "gzip"}, 413, "payload_too_large"),
        (
            "not gzip",
            "/v1/track",
            orjson.dumps(ok),
            {**auth, "Content-Encoding": "gzip"},
            400,
            "invalid_encoding",
        ),
        (
            "truncated gzip",
            "/v1/track",
            gzip.compress(orjson.dumps(ok))[:-8],
            {**auth, "Content-Encoding": "gzip"},
            400,
            "invalid_encoding",
        ),
        (
            "unknown encoding",
            "/v1/track",
            orjson.dumps(ok),
            {**auth, "Content-Encoding": "br"},
            415,
            "unsupported_content_encoding",
        ),
        ("no write key", "/v1/track", orjson.dumps(ok), {}, 401, "missing_write_key"),
        ("unknown write key", "/v1/track", orjson.dumps(ok), basic("nope"), 401, "invalid_write_key"),
        (
            "unknown key in body",
            "/v1/track",
            orjson.dumps({**ok, "writeKey": "nope"}),
            {},
            401,
            "invalid_write_key",
        ),
        (
            "bearer auth",
            "/v1/track",
            orjson.dumps(ok),
            {"Authorization": "Bearer abc"},
            401,
            "invalid_authorization",
        ),
        (
            "bad basic",
            "/v1/track",
            orjson.dumps(ok),
            {"Authorization": "Basic %%%"},
            401,
            "invalid_authorization",
        ),
    ]


@pytest.mark.parametrize(
    ("case", "path", "body", "headers", "status", "code"),
    _bad_inputs(),
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_bad_input_gets_a_4xx_naming_the_problem_and_stores_nothing(
    client, warehouse_conn, case, path, body, headers, status, code
):
    before = count_rejected(warehouse_conn)
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["success"] is False and error["code"] == code and error["message"]
    assert count_rejected(warehouse_conn) == before


def test_the_unsubscribe_route_of_campaigns_is_mounted(client):
    from campaigns import unsubscribe

    token = unsubscribe.make_token(5, "0" * 64, "cart_abandonment")
    page = client.get("/unsubscribe", params={"token": token})
    assert page.status_code == 200 and "<form method='post'" in page.text
    assert client.post("/unsubscribe", params={"token": token[:-3] + "AAA"}).status_code == 400
    assert client.post("/unsubscribe").status_code == 400  # no token


def test_wrong_method_and_path_are_json_4xx(client):
    assert client.get("/v1/track").status_code == 405
    response = client.post("/v2/track", json={})
    assert response.status_code == 404 and response.json()["code"] == "not_found"


# ---- privacy (last: reads the log of everything above) ------------------------------------------


def test_logs_carry_no_personal_data(client, collector):
    # A rejected call carrying an email in several places, and an accepted one.
    email = "private.person@example.org"
    client.post(
        "/v1/track",
        json={"userId": email, "event": email, "properties": {"email": email}, "timestamp": email},
        headers=basic(REJECT_KEY),
    )
    client.post("/v1/identify", json={"userId": email, "traits": {"email": email}}, headers=basic(WRITE_KEY))
    client.post("/v1/identify", content=email.encode(), headers=basic(WRITE_KEY))
    time.sleep(0.2)
    log = collector.log_path.read_text()
    assert "POST /v1/track -> 400" in log  # the log does record requests, at DEBUG/INFO
    for secret in (email, "ada@example.com", "bo@example.com", WRITE_KEY, REJECT_KEY):
        assert secret not in log
