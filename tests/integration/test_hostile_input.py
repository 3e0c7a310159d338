"""Hostile input through collector -> trigger ingest -> engine -> SMTP: the good ones keep going.

A property-based test: Hypothesis draws hostile Segment calls (the known killers
of issue 12 among arbitrary values: a year-10000 timestamp, quantities "nan" and
1e400, a 20-digit userId, product id "²", time zones "America" and 5, forged
unsubscribes and purchases for real customers, arrays where objects belong),
posts them through the real collector (`python -m collector`; whatever it
refuses, it refuses) and signed webhooks, and also writes them straight into
raw.events, as an older collector or a bug could have: the ingest must not rely
on the collector's validation. Then the real ingest and engine run against a
real SMTP sink. Every example: nothing raises, every good customer's cart email
is in the sink exactly once, no good customer is suppressed or cancelled by a
client, the ingest's cursor is past everything, and a second ingest has nothing
left to read.

Below it, the trust rules at send time: emails show the catalogue's product
facts, never an event's, and a cart of products the shop does not know sends nothing.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from campaigns import suppressions, timers
from campaigns.engine import Engine
from campaigns.schema import load_campaigns
from harness import fixtures
from harness.smtp_sink import read_index
from tests.integration.test_collector_api import (  # noqa: F401  (collector: a fixture)
    ESP_SECRET,
    WRITE_KEY,
    basic,
    collector,
    sign_webhook,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAMPAIGNS = load_campaigns()
GOOD = fixtures.treated_customers(CAMPAIGNS["cart_abandonment"], 3, 3000)
AMERICA = 3900  # a customer whose shop profile has the time zone "America"
GOOD_EMAILS = {f"customer{cid}@example.test" for cid in GOOD}
OPS = (
    "ops.campaign_triggers, ops.send_ledger, ops.decision_log, ops.dead_letters, ops.suppressions,"
    " ops.consent, ops.experiment_assignments, ops.campaign_cursors"
)
RELEVANT = sorted(timers.SUPPRESSION_EVENTS) + [
    "Product Added",
    "Product Viewed",
    "Product Removed",
    "Cart Updated",
    "Checkout Started",
    "Order Completed",
]


def names_a_good_customer(value) -> bool:
    """Hostile events for a good customer could legitimately move its timer: they name others."""
    customer = timers._id(value if type(value) is not str else value.strip())
    return customer in (*GOOD, AMERICA) or value in GOOD_EMAILS


# --- what Hypothesis draws ---------------------------------------------------------------------


def texts(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Any text PostgreSQL can store (NUL it cannot; the collector refuses it)."""
    # lone surrogates cannot be encoded as UTF-8: a client can send them only as JSON
    # escapes, which the collector's parser (orjson) refuses as invalid JSON
    return st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
        min_size=min_size,
        max_size=max_size,
    )


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts(20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts(8), children, max_size=3),
    max_leaves=8,
)
hostile_ids = st.one_of(
    st.sampled_from(
        ["12345678901234567890", "9223372036854775808", "²", "٤٢", "-1", "0", "1e3", "", "800001", "800002"]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    texts(30),
).filter(lambda v: not names_a_good_customer(v))
product_fields = st.fixed_dictionaries(
    {},
    optional={
        "product_id": st.sampled_from(["²", "3", 3, -1, 2**70, "x" * 300, None, [], {}, "١"]) | json_values,
        "quantity": st.sampled_from(["nan", "inf", "-inf", 1e308, -5, 0, "2", True, 2**70, None])
        | json_values,
        "price": json_values,
        "name": st.sampled_from(["<script>alert(1)</script>", "FREE PHONE"]) | json_values,
        "cart_id": texts(20) | st.integers() | json_values | st.just("c" * 5000),
        "value": json_values,
        "products": st.lists(json_values, max_size=3) | json_values,
    },
)
timestamps = st.one_of(
    st.sampled_from(
        ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+14:00", "1970-01-01T00:00:00Z", "2026-13-01", ""]
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    texts(25),
)
# what raw.events' timestamptz column can hold but Python's datetime cannot, and more
stored_timestamps = st.sampled_from(
    ["9999-12-31T23:59:59-01:00", "infinity", "-infinity", "0044-03-15 BC", "200000-01-01", "1970-01-01"]
) | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(
    lambda d: d.isoformat()
)
hostile_calls = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "track", "track", "identify"]),
        "event": st.sampled_from(RELEVANT) | texts(12),
        "userId": hostile_ids,
        "anonymousId": texts(12, min_size=1),
        "properties": product_fields | json_values,
        "traits": st.fixed_dictionaries(
            {"timezone": st.sampled_from(["America", "America/", "../etc", 5, {"a": 1}, "", None])}
        )
        | json_values,
        "timestamp": timestamps,
    }
)
# a client (the web write key) speaking for the provider or the shop about a real customer
forgeries = st.builds(
    lambda event, cid, by_email: {
        "type": "track",
        "event": event,
        "userId": str(cid),
        "properties": {"email": f"customer{cid}@example.test"} if by_email else {"order_id": "1"},
        "timestamp": datetime.now(UTC).isoformat(),
    },
    st.sampled_from(sorted(timers.SIGNED_ONLY_EVENTS)),
    st.sampled_from(GOOD),
    st.booleans(),
)
# a signed webhook with hostile content: trusted, so it names no good customer
signed_webhooks = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["email.bounced", "email.unsubscribed", "order.placed", "cart.updated"]),
        "timestamp": timestamps,
        "data": st.fixed_dictionaries({"user_id": hostile_ids}) | product_fields,
    }
)
direct_rows = st.fixed_dictionaries(
    {
        "event": st.sampled_from(RELEVANT),
        "user_id": hostile_ids.map(str),
        "properties": st.one_of(
            product_fields.map(json.dumps),
            json_values.map(json.dumps),
            st.just('{"product_id": "3", "quantity": 1e400, "cart_id": "big"}'),
        ),
        "occurred_at": stored_timestamps,
        "source": st.sampled_from(["web", "app", "webhook:esp", "webhook:shop"]),
    }
)


# --- the world ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(test_databases):
    with psycopg.connect(test_databases["warehouse"], autocommit=True) as conn:
        conn.execute("truncate raw.shop_customers, raw.shop_products")
        fixtures.insert_products(conn)
        fixtures.insert_customers(conn, GOOD, timezone=fixtures.daytime_timezone())
        fixtures.insert_customers(conn, [AMERICA], timezone="America")
        yield conn


@pytest.fixture(scope="module")
def http(collector):  # noqa: F811
    with httpx.Client(base_url=collector.url, timeout=30) as client:
        yield client


def post(http: httpx.Client, calls: list[dict]) -> None:
    response = http.post("/v1/batch", json={"batch": calls}, headers=basic(WRITE_KEY))
    assert response.status_code < 500, response.text


def post_webhook(http: httpx.Client, payload: dict) -> None:
    body = json.dumps(payload).encode()
    response = http.post(
        "/webhooks/esp", content=body, headers=sign_webhook(ESP_SECRET, body, uuid.uuid4().hex)
    )
    assert response.status_code < 500, response.text


def insert_direct(db: psycopg.Connection, row: dict) -> None:
    db.execute(
        """insert into raw.events (message_id, type, event, user_id, anonymous_id, properties, traits,
               occurred_at, received_at, source)
           values (%s, 'track', %s, %s, 'direct', %s::jsonb, '{"timezone": "America"}', %s::timestamptz, now(), %s)""",
        (
            f"direct-{uuid.uuid4()}",
            row["event"],
            row["user_id"],
            row["properties"],
            row["occurred_at"],
            row["source"],
        ),
    )


def sent_to(sink) -> Counter:
    return Counter(to for entry in read_index(sink.directory) for to in entry["rcpt"])


HOSTILE = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@HOSTILE
@given(
    calls=st.lists(hostile_calls, max_size=6),
    forged=st.lists(forgeries, max_size=3),
    webhooks=st.lists(signed_webhooks, max_size=2),
    rows=st.lists(direct_rows, min_size=1, max_size=6),
)
def test_hostile_events_never_stop_the_good_ones(db, http, sink, calls, forged, webhooks, rows):
    db.execute(f"truncate {OPS}, raw.events, raw.identity_links")
    before = sent_to(sink)
    abandoned = datetime.now(UTC) - timedelta(minutes=31)
    post(http, [fixtures.cart_call(cid, abandoned, prefix="good") for cid in [*GOOD, AMERICA]])
    for call in calls + forged:  # one by one: a batch is refused whole for one bad call
        post(http, [{**call, "messageId": f"hostile-{uuid.uuid4()}"}])
    for payload in webhooks:
        post_webhook(http, payload)
    for row in rows:
        insert_direct(db, row)

    ingested = timers.ingest(db, CAMPAIGNS)
    event(f"set aside: {min(ingested.dead_letters, 3)}+, untrusted: {min(ingested.untrusted, 1)}+")
    Engine(campaigns=CAMPAIGNS, senders=1).run(max_seconds=60)

    sent = sent_to(sink) - before
    assert {f"customer{cid}@example.test": 1 for cid in GOOD}.items() <= sent.items(), sent
    assert not {suppressions.hash_email(e) for e in GOOD_EMAILS} & {
        h for (h,) in db.execute("select email_hash from ops.suppressions")
    }
    decided = {cid for (cid,) in db.execute("select customer_id from ops.decision_log")}
    assert AMERICA in decided  # its time zone is UTC's, whatever quiet hours then say
    newest, cursor = db.execute(
        "select (select max(received_at) from raw.events),"
        " (select position from ops.campaign_cursors where name = 'raw.events')"
    ).fetchone()
    assert cursor >= newest
    again = timers.ingest(db, CAMPAIGNS)
    assert again.events == 0 and again.dead_letters == 0


# --- product facts come from the catalogue -----------------------------------------------------


@pytest.fixture
def fresh(db):
    db.execute(f"truncate {OPS}, raw.events, raw.identity_links")
    return db


def html_sent_to(sink, address: str) -> str:
    import email
    import email.policy

    (entry,) = [e for e in read_index(sink.directory) if address in e["rcpt"]]
    message = email.message_from_bytes(
        (sink.directory / entry["file"]).read_bytes(), policy=email.policy.default
    )
    return next(p for p in message.walk() if p.get_content_type() == "text/html").get_content()


def test_emails_show_the_catalogues_product_facts_not_the_events(fresh, sink):
    forged = {
        "product_id": 3,
        "name": "FREE PHONE",
        "price": 0.01,
        "image_url": "https://evil.example/phone.png",
        "quantity": 1,
        "cart_id": "forged-facts",
    }
    at = datetime.now(UTC) - timedelta(minutes=31)
    fixtures.insert_events(fresh, [fixtures.track_event(GOOD[0], "Product Added", forged, at)])
    timers.ingest(fresh, CAMPAIGNS)
    assert Engine(campaigns=CAMPAIGNS, senders=1).run().sent == 1
    html = html_sent_to(sink, f"customer{GOOD[0]}@example.test")
    assert "Oak desk lamp" in html and fixtures.image_url("LAMP-OAK") in html and "$79.00" in html
    assert "FREE PHONE" not in html and "evil.example" not in html and "$0.01" not in html


def test_a_cart_of_products_the_shop_does_not_know_sends_nothing(fresh, sink):
    unknown, mixed = GOOD[1], GOOD[2]
    at = datetime.now(UTC) - timedelta(minutes=31)
    line = {"price": 5.0, "quantity": 1, "name": "Mystery box"}
    fixtures.insert_events(
        fresh,
        [
            fixtures.track_event(unknown, "Product Added", {**line, "product_id": 999, "cart_id": "u"}, at),
            fixtures.track_event(mixed, "Product Added", {**line, "product_id": 999, "cart_id": "m"}, at),
            fixtures.track_event(mixed, "Product Added", {**line, "product_id": 1, "cart_id": "m"}, at),
        ],
    )
    timers.ingest(fresh, CAMPAIGNS)
    stats = Engine(campaigns=CAMPAIGNS, senders=1).run()
    assert stats.sent == 1 and stats.outcomes["nothing_to_show"] == 1, stats.as_dict()
    html = html_sent_to(sink, f"customer{mixed}@example.test")
    assert "Blue stoneware mug" in html and "Mystery box" not in html
