"""Property-based fuzzing of the live collector: no input gets a 5xx.

Hypothesis generates arbitrary JSON (also nested hundreds of levels deep),
Segment-shaped calls with wrong types and hostile values in every field (NaN and
Infinity as strings, 20-digit ids, far-future timestamps, unknown time zones),
batches of them, raw bytes with any Content-Encoding, and webhooks (unsigned,
and correctly signed with arbitrary payloads). Every answer must be 200 or a 4xx
JSON error, a 200 for a call with a messageId means its row is in the
warehouse, an unsigned webhook is a 401 (404 for an unknown source), and no
Segment call ever lands in the signed webhooks' namespace.
"""

from __future__ import annotations

import gzip
import json

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_collector_api import (  # noqa: F401  (collector: a fixture)
    ESP_SECRET,
    WRITE_KEY,
    basic,
    collector,
    sign_webhook,
)

pytestmark = pytest.mark.integration

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
ENDPOINTS = ("track", "identify", "page", "screen", "group", "alias", "batch")
FIELDS = (
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "event",
    "name",
    "category",
    "properties",
    "traits",
    "context",
    "timestamp",
    "sentAt",
    "writeKey",
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int, leaf) -> object:
    for _ in range(depth):
        leaf = {"k": leaf}
    return leaf


deep_values = st.integers(min_value=200, max_value=400).map(lambda depth: nested(depth, 1))
hostile = st.sampled_from(
    [
        "nan",
        "NaN",
        "Infinity",
        "-inf",
        "1e999",
        "²",
        "12345678901234567890",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+14:00",
        "America",
        "webhook:esp:msg_1",
        2**63,
        2**64 - 1,
        -(2**63) - 1,
    ]
)
commerce = st.dictionaries(
    st.sampled_from(["price", "quantity", "revenue", "total", "product_id", "products", "timezone"]),
    hostile
    | st.lists(st.dictionaries(st.sampled_from(["price", "quantity", "product_id"]), hostile), max_size=3),
    max_size=4,
)
plausible = st.one_of(
    json_values,
    deep_values,
    hostile,
    commerce,
    st.sampled_from(["track", "identify", "alias", "page", "", "Order Completed", WRITE_KEY]),
    st.datetimes().map(lambda d: d.isoformat()),
    st.text(alphabet="0123456789-:TZ+.", max_size=30),
    st.integers(),
    st.text(max_size=300),
)
calls = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {"userId": st.text(min_size=1, max_size=20), "event": st.just("Fuzzed"), "type": st.just("track")}
    ),
    st.dictionaries(st.sampled_from(FIELDS), plausible, max_size=6),
)


@pytest.fixture(scope="module")
def http(collector):  # noqa: F811
    with httpx.Client(base_url=collector.url, timeout=30, headers=basic(WRITE_KEY)) as client:
        yield client


@pytest.fixture(scope="module")
def bare_http(collector):  # noqa: F811
    with httpx.Client(base_url=collector.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def db(test_databases):
    with psycopg.connect(test_databases["warehouse"], autocommit=True) as conn:
        yield conn


def assert_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        error = response.json()
        assert error["success"] is False and error["code"] and error["message"]


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), body=json_values | deep_values)
def test_arbitrary_json(http, endpoint, body):
    assert_answer(http.post(f"/v1/{endpoint}", content=json.dumps(body).encode()))


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS[:-1]), call=calls)
def test_calls_with_wrong_types(http, db, endpoint, call):
    response = http.post(f"/v1/{endpoint}", content=json.dumps(call).encode())
    assert_answer(response)
    message_id = call.get("messageId")
    if response.status_code == 200 and isinstance(message_id, str | int) and not isinstance(message_id, bool):
        if str(message_id):
            assert db.execute("select 1 from raw.events where message_id = %s", (str(message_id),)).fetchone()


@FUZZ
@given(batch=st.lists(calls, min_size=1, max_size=8), gzipped=st.booleans())
def test_batches(http, batch, gzipped):
    body = json.dumps({"batch": batch}).encode()
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    assert_answer(http.post("/v1/batch", content=gzip.compress(body) if gzipped else body, headers=headers))


@FUZZ
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=st.binary(max_size=200),
    encoding=st.sampled_from([None, "gzip", "deflate", "identity", "br", "", "GZIP"]),
)
def test_arbitrary_bytes(http, endpoint, body, encoding):
    headers = {"Content-Encoding": encoding} if encoding is not None else {}
    assert_answer(http.post(f"/v1/{endpoint}", content=body, headers=headers))


@FUZZ
@given(
    body=st.binary(max_size=100),
    headers=st.dictionaries(
        st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "x-shopify-hmac-sha256"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(str.strip),
    ),
    source=st.sampled_from(["shop", "esp", "shopify", "nobody"]),
)
def test_unsigned_webhooks(bare_http, body, headers, source):
    response = bare_http.post(f"/webhooks/{source}", content=body, headers=headers)
    assert_answer(response)
    assert response.status_code == (404 if source == "nobody" else 401), response.text


@FUZZ
@given(
    payload=json_values
    | st.fixed_dictionaries({"type": plausible, "timestamp": plausible, "data": json_values})
)
def test_signed_webhooks_with_arbitrary_payloads(bare_http, payload):
    body = json.dumps(payload).encode()
    headers = sign_webhook(ESP_SECRET, body, f"fuzz_{hash(body)}")
    assert_answer(bare_http.post("/webhooks/esp", content=body, headers=headers))


# Last: reads what every test above stored.
def test_no_segment_call_landed_in_the_webhook_namespace(db):
    """The ingest trusts suppression-grade events only from rows whose source starts with
    `webhook:`: after all the fuzzing above (write-key calls, unsigned webhooks), only the signed
    webhooks' rows are there, each with its own message_id prefix."""
    rows = db.execute(
        "select source, message_id, context #>> '{webhook,scheme}' from raw.events"
        " where source like 'webhook:%%' or message_id like 'webhook:%%'"
    ).fetchall()
    assert all(
        source == "webhook:esp" and message_id.startswith("webhook:esp:") and scheme == "standard-webhooks"
        for source, message_id, scheme in rows
    ), rows[:5]
