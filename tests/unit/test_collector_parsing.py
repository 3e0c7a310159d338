"""Collector logic without services: call validation, webhook verification, config, log redaction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from collector import segment, webhooks
from collector.config import DEV_WEBHOOK_SECRETS, ConfigError, Settings, parse_mapping
from collector.errors import ApiError
from collector.privacy import RedactingFilter, redact

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
DEV_SETTINGS = Settings.from_env(
    {"EMAILP_ENV": "development", "WAREHOUSE_URL": "postgresql://nobody@127.0.0.1:1/none"}
)


def parse(message, call_type="track", links=None):
    return segment.parse_event(message, call_type, "web", NOW, None, None, [] if links is None else links)


def row_dict(row) -> dict:
    return dict(zip(segment.COLUMNS, row, strict=True))


def test_track_row_in_column_order():
    row = row_dict(
        parse(
            {
                "messageId": "m1",
                "userId": 7,
                "event": "E",
                "properties": {"a": 1},
                "timestamp": "2026-11-29T10:00:00",
            }
        )
    )
    assert row["message_id"] == "m1" and row["user_id"] == "7" and row["type"] == "track"
    assert orjson.loads(row["properties"]) == {"a": 1} and row["traits"] == "{}" and row["context"] == "{}"
    assert row["occurred_at"] == "2026-11-29T10:00:00+00:00"  # no offset: UTC
    assert row["received_at"] == NOW.isoformat() and row["sent_at"] is None and row["source"] == "web"


def test_missing_timestamp_means_received_now():
    assert row_dict(parse({"userId": "u", "event": "E"}))["occurred_at"] == NOW.isoformat()


@pytest.mark.parametrize(
    ("message", "call_type", "code"),
    [
        ({"event": "E"}, "track", "missing_id"),
        ({"userId": "", "anonymousId": None, "event": "E"}, "track", "missing_id"),
        ({"userId": "u"}, "track", "missing_event"),
        ({"userId": 1.5, "event": "E"}, "track", "wrong_type"),
        ({"userId": "u", "event": ["E"]}, "track", "wrong_type"),
        ({"userId": "u", "event": "E", "properties": "p"}, "track", "wrong_type"),
        ({"userId": "u", "traits": [1]}, "identify", "wrong_type"),
        ({"userId": "u", "event": "E", "timestamp": "29/11/2026"}, "track", "invalid_timestamp"),
        ({"userId": "u", "event": "E", "sentAt": False}, "track", "wrong_type"),
        ({"userId": "u"}, "group", "missing_id"),
        ({"previousId": "p"}, "alias", "missing_id"),
        ({"userId": "u", "event": "E", "messageId": "m" * 256}, "track", "value_too_long"),
        ({"userId": "u", "event": "E", "context": {"k": "\x00"}}, "track", "invalid_character"),
        ({"userId": "u\x00", "event": "E"}, "track", "invalid_character"),
        ({"userId": "u", "event": "E", "type": "nope"}, None, "invalid_type"),
        ({"userId": "u", "event": "E"}, None, "missing_type"),
        ("not an object", "track", "invalid_event"),
    ],
)
def test_invalid_calls(message, call_type, code):
    with pytest.raises(ApiError) as error:
        parse(message, call_type)
    assert error.value.status == 400 and error.value.code == code


def test_an_escaped_backslash_before_u0000_is_not_a_nul():
    row = row_dict(parse({"userId": "u", "event": "E", "properties": {"path": "C:\\u0000"}}))
    assert orjson.loads(row["properties"]) == {"path": "C:\\u0000"}


def test_oversize_call():
    with pytest.raises(ApiError) as error:
        parse({"userId": "u", "event": "E", "properties": {"p": "x" * 33_000}})
    assert error.value.status == 413


def test_identify_and_alias_make_links():
    links: list = []
    parse({"userId": "u", "anonymousId": "a", "messageId": "m1"}, "identify", links)
    parse({"userId": "u", "messageId": "m2"}, "identify", links)  # nothing to link
    parse({"userId": "u", "previousId": "p", "messageId": "m3"}, "alias", links)
    assert links == [("a", "u", "m1", NOW), ("p", "u", "m3", NOW)]


def test_derived_message_id_ignores_sent_at_and_write_key():
    a = parse({"userId": "u", "event": "E", "sentAt": "2026-11-29T10:00:00Z"})
    b = parse({"userId": "u", "event": "E", "sentAt": "2026-11-29T10:00:09Z", "writeKey": "k"})
    c = parse({"userId": "u", "event": "F"})
    assert a[0] == b[0] != c[0] and a[0].startswith("auto-")


def test_batch_context_merges_and_call_wins():
    rows, _, _ = segment.parse_batch(
        {
            "batch": [{"type": "track", "userId": "u", "event": "E", "context": {"ip": "x"}}],
            "context": {"ip": "y", "locale": "en"},
        },
        "web",
        NOW,
    )
    assert orjson.loads(row_dict(rows[0])["context"]) == {"ip": "x", "locale": "en"}


def test_batch_limits_and_index_in_errors():
    call = {"type": "track", "userId": "u", "event": "E"}
    with pytest.raises(ApiError) as error:
        segment.parse_batch({"batch": [call] * 2501}, "web", NOW)
    assert error.value.code == "too_many_events"
    rows, _, rejected = segment.parse_batch({"batch": [call, {**call, "event": 3}]}, "web", NOW)
    assert len(rows) == 1
    [error] = rejected
    assert error.index == 1 and error.field == "event" and error.message.startswith("batch[1]:")


def test_dedupe_keeps_first_call_and_earliest_link_sorted():
    rows = [("b", 1), ("a", 2), ("b", 3)]
    later, earlier = NOW, NOW - timedelta(hours=1)
    links = [("x", "u", "m1", later), ("x", "u", "m2", earlier)]
    deduped_rows, deduped_links = segment.dedupe(rows, links)
    assert deduped_rows == [("a", 2), ("b", 1)]
    assert deduped_links == [("x", "u", "m2", earlier)]


# ---- webhooks ---------------------------------------------------------------------------------


SECRET = DEV_WEBHOOK_SECRETS["shop"][0]


def signed_headers(body: bytes, secret: str = SECRET, at: datetime | None = None, webhook_id: str = "msg_1"):
    at = at or datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body.decode()),
    }


def test_standard_webhook_verifies_and_maps():
    verifier = webhooks.Verifier({"shop": (SECRET,)}, {})
    body = b'{"type": "email.clicked", "data": {"userId": "c-1", "url": "https://x"}}'
    headers = signed_headers(body)
    scheme, webhook_id = verifier.verify("shop", body, headers)
    row = row_dict(webhooks.to_row("shop", scheme, webhook_id, body, headers, NOW))
    assert row["message_id"] == "webhook:shop:msg_1" and row["event"] == "Email Link Clicked"
    assert row["user_id"] == "c-1" and row["source"] == "webhook:shop" and row["type"] == "track"


def test_unknown_webhook_type_keeps_its_name():
    body = b'{"type": "email.deferred", "timestamp": "2026-11-29T01:02:03Z"}'
    row = row_dict(webhooks.to_row("esp", "standard-webhooks", "w1", body, {"webhook-timestamp": "0"}, NOW))
    assert row["event"] == "email.deferred" and row["occurred_at"] == "2026-11-29T01:02:03+00:00"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"webhook-id": "msg_1"}, "missing_signature"),
        ("other-secret", "invalid_signature"),
        ("stale", "stale_timestamp"),
        ({"webhook-signature": "v1,not base64!"}, "invalid_signature"),
        ({"webhook-signature": "v2,abc"}, "invalid_signature"),
    ],
)
def test_standard_webhook_rejections(headers, code):
    verifier = webhooks.Verifier({"shop": (SECRET,)}, {})
    body = b'{"type": "order.placed"}'
    if headers == "other-secret":
        headers = signed_headers(
            body, secret="whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
        )
    elif headers == "stale":
        headers = signed_headers(body, at=datetime.now(UTC) - timedelta(minutes=5, seconds=30))
    else:
        headers = {**signed_headers(body), **headers} if "webhook-signature" in headers else headers
    with pytest.raises(ApiError) as error:
        verifier.verify("shop", body, headers)
    assert error.value.status == 401 and error.value.code == code


def test_shopify_hmac():
    verifier = webhooks.Verifier({}, {"shopify": ("old", "new")})
    body = b'{"id": 1}'
    digest = base64.b64encode(hmac.new(b"new", body, hashlib.sha256).digest()).decode()
    headers = {"x-shopify-hmac-sha256": digest, "x-shopify-webhook-id": "w-1"}
    assert verifier.verify("shopify", body, headers) == ("shopify", "w-1")
    with pytest.raises(ApiError):
        verifier.verify("shopify", body + b" ", headers)


# ---- config and privacy --------------------------------------------------------------------------


def test_config_from_env():
    settings = Settings.from_env(
        {
            "EMAILP_ENV": "development",
            "WAREHOUSE_URL": "postgresql://x/y",
            "COLLECTOR_WRITE_KEYS": "k1:web, k2:app",
            "COLLECTOR_WEBHOOK_SECRETS": "shop:whsec_a whsec_b,esp:whsec_c",
            "COLLECTOR_PORT": "9000",
        }
    )
    assert settings.write_keys == {"k1": "web", "k2": "app"}
    assert settings.webhook_secrets == {"shop": ("whsec_a", "whsec_b"), "esp": ("whsec_c",)}
    assert settings.port == 9000 and settings.database_url == "postgresql://x/y"
    with pytest.raises(ValueError):
        parse_mapping("no-colon", "X")


def test_redaction_hashes_emails():
    text = redact("user Ada.Lovelace+shop@example.co.uk signed up; again ada.lovelace+shop@example.co.uk")
    assert "@" not in text and text.count("<email:") == 2
    assert len(set(part for part in text.split() if part.startswith("<email:"))) == 1  # stable: joinable


def test_redacting_filter_applies_to_arguments_and_exceptions():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "got %s", ("bo@example.com",), None)
    RedactingFilter().filter(record)
    assert "bo@example.com" not in record.getMessage()
    try:
        raise ValueError("bad address bo@example.com")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactingFilter().filter(record)
    assert "bo@example.com" not in logging.Formatter().format(record)


# ---- the fast lane answers as the FastAPI routes do --------------------------------------------


def test_fast_lane_and_fastapi_routes_give_the_same_errors():
    import asyncio

    import httpx

    from collector.app import FastLane, create_app
    from collector.config import DEV_WRITE_KEYS

    key = next(iter(DEV_WRITE_KEYS))
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    cases = [
        ("/v1/track", b"{", auth),
        ("/v1/track", b'{"event": "E"}', auth),
        ("/v1/batch", b'{"batch": [{"type": "track", "userId": "u"}]}', auth),
        ("/v1/identify", b'{"userId": "u"}', {"Authorization": "Basic bm9wZTo="}),
        ("/v1/page", b'{"userId": "u"}', {**auth, "Content-Encoding": "br"}),
        ("/v1/track", b"x" * 40_000, auth),
    ]

    async def answers(app) -> list[tuple[int, dict]]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            return [
                (r.status_code, r.json())
                for r in [
                    await client.post(path, content=body, headers=headers) for path, body, headers in cases
                ]
            ]

    app = create_app(DEV_SETTINGS)
    routed, fast = asyncio.run(answers(app)), asyncio.run(answers(FastLane(app)))
    assert routed == fast
    assert [status for status, _ in fast] == [400, 400, 400, 401, 415, 413]


def test_the_openapi_schemas_describe_what_the_collector_accepts():
    import jsonschema

    from collector.app import create_app

    spec = create_app(DEV_SETTINGS).openapi()
    batch = spec["paths"]["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator(batch)
    good = {
        "batch": [
            {"type": "track", "event": "E", "userId": "u"},
            {"type": "alias", "userId": "u", "previousId": 7},
        ]
    }
    assert not list(validator.iter_errors(good))
    segment.parse_batch(good, "web", NOW)  # and the collector agrees
    for bad in (
        {"batch": [{"type": "track", "event": "E"}]},
        {"batch": []},
        {"batch": [{"type": "group", "userId": "u"}]},
    ):
        assert list(validator.iter_errors(bad))
        with pytest.raises(ApiError):
            segment.parse_batch(bad, "web", NOW)


# ---- hostile content: what the ingest and the engine would choke on is a 400 naming the field --------

DEEP_JSON = '{"k":' * 300 + "1" + "}" * 300  # JSON nested 300 deep: orjson writes at most 254
DEEP = orjson.loads(DEEP_JSON)
HOSTILE = [
    ({"timestamp": "9999-12-31T23:59:59-01:00"}, "timestamp_out_of_range", "timestamp"),
    ({"timestamp": "1999-12-31T23:59:59Z"}, "timestamp_out_of_range", "timestamp"),
    ({"timestamp": (NOW + timedelta(days=1, minutes=1)).isoformat()}, "timestamp_out_of_range", "timestamp"),
    ({"sentAt": "9999-01-01T00:00:00Z"}, "timestamp_out_of_range", "sentAt"),
    ({"properties": {"quantity": "nan"}}, "invalid_number", "properties.quantity"),
    ({"properties": {"price": "Infinity"}}, "invalid_number", "properties.price"),
    ({"properties": {"revenue": "-inf"}}, "invalid_number", "properties.revenue"),
    ({"properties": {"total": 1e16}}, "invalid_number", "properties.total"),
    ({"properties": {"value": "twelve"}}, "invalid_number", "properties.value"),
    ({"properties": {"price": True}}, "wrong_type", "properties.price"),
    (
        {"properties": {"products": [{"price": 1}, {"quantity": "NaN"}]}},
        "invalid_number",
        "properties.products[1].quantity",
    ),
    ({"userId": "12345678901234567890"}, "invalid_id", "userId"),
    ({"userId": 2**63}, "invalid_id", "userId"),
    ({"userId": "²"}, "invalid_id", "userId"),
    ({"userId": " 99999999999999999999"}, "invalid_id", "userId"),
    ({"properties": {"product_id": "²"}}, "invalid_id", "properties.product_id"),
    ({"properties": {"product_id": 2**64 - 1}}, "invalid_id", "properties.product_id"),
    (
        {"properties": {"products": [{"product_id": "9" * 20}]}},
        "invalid_id",
        "properties.products[0].product_id",
    ),
    ({"context": {"timezone": "America"}}, "invalid_timezone", "context.timezone"),
    ({"context": {"traits": {"timezone": "Mars/Olympus"}}}, "invalid_timezone", "context.traits.timezone"),
    ({"context": {"timezone": 1}}, "invalid_timezone", "context.timezone"),
    ({"messageId": "webhook:esp:msg_1"}, "reserved_message_id", "messageId"),
    ({"properties": DEEP}, "too_deep", "properties"),
]


@pytest.mark.parametrize(("extra", "code", "field"), HOSTILE, ids=[f"{c[2]}={c[1]}" for c in HOSTILE])
def test_hostile_content_is_a_400_naming_the_field(extra, code, field):
    with pytest.raises(ApiError) as error:
        parse({"userId": "u", "event": "E", **extra})
    assert (error.value.status, error.value.code, error.value.field) == (400, code, field)
    assert field.split(".")[0].split("[")[0] in error.value.message


def test_traits_time_zone_of_an_identify_is_checked():
    with pytest.raises(ApiError) as error:
        parse({"userId": "u", "traits": {"timezone": "Europe"}}, "identify")
    assert error.value.field == "traits.timezone"


def test_sane_values_pass():
    row = row_dict(
        parse(
            {
                "userId": "-7",
                "event": "Order Completed",
                "timestamp": (NOW + timedelta(hours=23)).isoformat(),
                "properties": {
                    "revenue": "19.99",
                    "quantity": 2,
                    "product_id": "9223372036854775807",
                    "products": [{"product_id": 42, "price": 0.5}, "not an object"],
                    "name": "nan",  # not an amount: any text
                },
                "context": {"timezone": "Europe/Paris", "traits": {"timezone": "UTC"}},
            }
        )
    )
    assert row["user_id"] == "-7"
    for user_id in ("customer-42", "0f8fad5b-d9cb-469f-a165-70867728950e", "42", "٣x"):
        assert row_dict(parse({"userId": user_id, "event": "E"}))["user_id"] == user_id


def test_the_window_is_configurable():
    earliest = datetime(1990, 1, 1, tzinfo=UTC)
    message = {"userId": "u", "event": "E", "timestamp": "1995-06-01T00:00:00Z"}
    row = segment.parse_event(
        message, "track", "web", NOW, None, None, [], window=segment.accepted_window(NOW, earliest)
    )
    assert row_dict(row)["occurred_at"].startswith("1995-06-01")


def test_a_batch_keeps_its_valid_calls_and_lists_the_invalid_ones():
    calls = [
        {"type": "track", "userId": "u", "event": "E", "messageId": "m0"},
        {"type": "track", "userId": "u", "event": "E", "messageId": "m1", "properties": {"price": "nan"}},
        {"type": "track", "userId": "u", "event": "E", "messageId": "m2"},
        {
            "type": "track",
            "userId": "u",
            "event": "E",
            "messageId": "m3",
            "timestamp": "9999-12-31T23:59:59-01:00",
        },
    ]
    rows, _, rejected = segment.parse_batch({"batch": calls}, "web", NOW)
    assert [row[0] for row in rows] == ["m0", "m2"]
    assert [(e.index, e.field, e.code) for e in rejected] == [
        (1, "properties.price", "invalid_number"),
        (3, "timestamp", "timestamp_out_of_range"),
    ]
    with pytest.raises(ApiError) as error:  # nothing valid: a 400 naming the first, listing all
        segment.parse_batch({"batch": [calls[1], calls[3]]}, "web", NOW)
    assert error.value.index == 0 and len(orjson.loads(error.value.body())["rejected"]) == 2


# ---- webhooks: the same content rules; an unsigned body never reaches them ----------------------


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (
            {"type": "order.placed", "timestamp": "9999-12-31T23:59:59-01:00"},
            "timestamp_out_of_range",
            "timestamp",
        ),
        (
            {"type": "order.placed", "data": {"customer_id": "12345678901234567890"}},
            "invalid_id",
            "data.customer_id",
        ),
        (
            {"type": "cart.updated", "data": {"products": [{"price": "nan"}]}},
            "invalid_number",
            "data.products[0].price",
        ),
        ('{"type": "cart.updated", "data": ' + DEEP_JSON + "}", "too_deep", "data"),
    ],
)
def test_signed_webhook_content_rules(payload, code, field):
    body = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    with pytest.raises(ApiError) as error:
        webhooks.to_row(
            "shop", "standard-webhooks", "w1", body, {"webhook-timestamp": str(int(NOW.timestamp()))}, NOW
        )
    assert (error.value.status, error.value.code, error.value.field) == (400, code, field)


def test_an_unsigned_body_that_is_not_utf8_is_a_401():
    verifier = webhooks.Verifier({"shop": (SECRET,)}, {})
    headers = {
        "webhook-id": "x",
        "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
        "webhook-signature": "v1,AAAA",
    }
    with pytest.raises(ApiError) as error:
        verifier.verify("shop", b"\xff\xfe", headers)
    assert error.value.status == 401


# ---- configuration outside development mode -----------------------------------------------------

PRODUCTION = {
    "WAREHOUSE_URL": "postgresql://x/y",
    "COLLECTOR_WRITE_KEYS": "a-long-random-write-key:web",
    "COLLECTOR_WEBHOOK_SECRETS": "esp:whsec_cHJvZHVjdGlvbi1lc3Atc2VjcmV0LTMyLWJ5dGVzISE=",
}


def test_production_configuration_starts():
    settings = Settings.from_env(PRODUCTION)
    assert settings.write_keys == {"a-long-random-write-key": "web"} and settings.shopify_secrets == {}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"COLLECTOR_WRITE_KEYS": None}, "COLLECTOR_WRITE_KEYS is not set"),
        ({"COLLECTOR_WEBHOOK_SECRETS": None}, "COLLECTOR_WEBHOOK_SECRETS is not set"),
        ({"COLLECTOR_WRITE_KEYS": "dev-web-write-key:web"}, "development write key"),
        ({"COLLECTOR_WEBHOOK_SECRETS": f"esp:{DEV_WEBHOOK_SECRETS['esp'][0]}"}, "development secret"),
        ({"COLLECTOR_SHOPIFY_SECRETS": "shopify:dev-shopify-app-secret"}, "development secret"),
        ({"EMAILP_ENV": "prod"}, None),  # only "development" is development
        ({"COLLECTOR_WRITE_KEYS": "k:webhook:esp"}, "webhook:"),
    ],
)
def test_the_collector_refuses_known_or_missing_secrets_outside_development(change, reason):
    environ = {**PRODUCTION, **change}
    environ = {k: v for k, v in environ.items() if v is not None}
    if reason is None:
        Settings.from_env(environ)
        return
    with pytest.raises(ConfigError) as error:
        Settings.from_env(environ)
    assert reason in str(error.value)


def test_no_write_key_may_name_a_webhook_source_even_in_development():
    with pytest.raises(ConfigError):
        Settings.from_env(
            {"EMAILP_ENV": "development", "WAREHOUSE_URL": "x", "COLLECTOR_WRITE_KEYS": "k:Webhook:esp"}
        )


def test_copy_text_is_what_psycopg_would_send():
    from psycopg._copy_base import TextFormatter  # psycopg's own row formatting, the reference
    from psycopg.adapt import Transformer

    rows = [
        parse({"userId": "a\\b", "event": "tab\there", "properties": {"p": 'new\nline "q" \\ \r ü \u2028'}}),
        parse({"anonymousId": "x", "event": "E", "messageId": "m\\N"}),
        parse({"userId": "u", "event": "E", "properties": {"path": "C:\\u0000"}}),
    ]
    formatter = TextFormatter(Transformer())
    expected = b"".join(formatter.write_row(row) for row in rows) + formatter.end()
    assert segment.copy_text(rows) == expected
    clean = [
        parse({"userId": "u", "event": "E", "properties": {"name": "ü"}, "messageId": str(i)})
        for i in range(3)
    ]
    assert segment.copy_text(clean, clean=True) == segment.copy_text(clean)
