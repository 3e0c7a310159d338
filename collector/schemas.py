"""OpenAPI descriptions of the request and response bodies (documentation only:
validation is collector.segment's, which these schemas mirror)."""

from __future__ import annotations

from collector.segment import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES, MAX_ID_CHARS, MAX_NAME_CHARS

DESCRIPTION = f"""
Segment's HTTP Tracking API and signed webhooks, written to the warehouse's
`raw.events` (and `raw.identity_links` for identify and alias) before the
response goes out.

* **Write key**: HTTP Basic with the write key as user name (empty password), or
  `writeKey` in the body. Each key names a source (COLLECTOR_WRITE_KEYS).
* **Bodies**: JSON, optionally `Content-Encoding: gzip`. At most {MAX_EVENT_BYTES:,} bytes
  per call, {MAX_BATCH_BYTES:,} bytes and {MAX_BATCH_EVENTS:,} calls per batch.
* **Batches**: as Segment's API does, an invalid call is left out and the rest
  stored: 200 with `rejected` listing each left-out call's `index`, `field`,
  `code` and `message`. A batch with no valid call is a 4xx naming the first.
* **Exactly once**: unique on `messageId`; a retry of a stored call is answered
  200 without a second row. A call without `messageId` gets one derived from
  its content.
* **Content**: timestamps between 2000 and a day after receipt, e-commerce
  amounts finite, integer-looking ids within bigint, time zones IANA names; a
  client's messageId may not start with `webhook:`.
* **Errors** are JSON `{{"success": false, "code": ..., "message": ...}}`: 400 invalid
  content, 401 write key or signature, 404 unknown webhook source, 413 too large,
  415 unknown encoding, 503 (with Retry-After) when the warehouse is unreachable,
  stalled past the timeout, or the collector is at capacity.
"""

_ID = {"oneOf": [{"type": "string", "maxLength": MAX_ID_CHARS}, {"type": "integer"}]}
_TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO-8601; UTC when no offset"}
_COMMON = {
    "messageId": {**_ID, "description": "Deduplication key"},
    "userId": _ID,
    "anonymousId": _ID,
    "timestamp": _TIMESTAMP,
    "sentAt": _TIMESTAMP,
    "context": {"type": "object"},
    "integrations": {"type": "object"},
    "writeKey": {"type": "string", "description": "The write key, when not sent by HTTP Basic"},
}
_SPECIFIC = {
    "track": (
        {"event": {"type": "string", "maxLength": MAX_NAME_CHARS}, "properties": {"type": "object"}},
        ["event"],
    ),
    "identify": ({"traits": {"type": "object"}}, []),
    "page": (
        {
            "name": {"type": "string", "maxLength": MAX_NAME_CHARS},
            "category": {"type": "string", "maxLength": MAX_NAME_CHARS},
            "properties": {"type": "object"},
        },
        [],
    ),
    "screen": (
        {"name": {"type": "string", "maxLength": MAX_NAME_CHARS}, "properties": {"type": "object"}},
        [],
    ),
    "group": ({"groupId": _ID, "traits": {"type": "object"}}, ["groupId"]),
    "alias": ({"previousId": _ID}, ["previousId", "userId"]),
}


def call_schema(call_type: str, *, in_batch: bool = False) -> dict:
    properties, required = _SPECIFIC[call_type]
    schema: dict = {
        "type": "object",
        "title": f"{call_type.capitalize()}Call",
        "properties": {**_COMMON, **properties},
        "required": list(required),
        "description": "userId or anonymousId is required"
        if call_type != "alias"
        else "userId and previousId",
    }
    if call_type != "alias":
        schema["anyOf"] = [{"required": ["userId"]}, {"required": ["anonymousId"]}]
    if in_batch:
        schema["properties"]["type"] = {"type": "string", "enum": [call_type]}
        schema["required"] = ["type", *required]
    return schema


def _content(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def request_body(call_type: str) -> dict:
    if call_type != "batch":
        return _content(call_schema(call_type))
    return _content(
        {
            "type": "object",
            "title": "Batch",
            "required": ["batch"],
            "properties": {
                "batch": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_BATCH_EVENTS,
                    "items": {"oneOf": [call_schema(t, in_batch=True) for t in _SPECIFIC]},
                },
                "context": {"type": "object", "description": "Merged into every call's context"},
                "sentAt": _TIMESTAMP,
                "writeKey": _COMMON["writeKey"],
            },
        }
    )


def webhook_body() -> dict:
    body = _content(
        {
            "type": "object",
            "title": "StandardWebhook",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "examples": ["order.placed", "cart.updated", "email.opened"]},
                "timestamp": _TIMESTAMP,
                "data": {"type": "object"},
            },
        }
    )
    body["parameters"] = [
        {
            "name": name,
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": description,
        }
        for name, description in (
            ("webhook-id", "Standard Webhooks message id (the deduplication key)"),
            ("webhook-timestamp", "Unix seconds; within 5 minutes of the collector's clock"),
            ("webhook-signature", "Space-separated v1,<base64 HMAC-SHA256> signatures"),
            ("X-Shopify-Hmac-SHA256", "Shopify's signature scheme, for sources with a Shopify secret"),
            ("X-Shopify-Webhook-Id", "Shopify's deduplication key"),
            ("X-Shopify-Topic", "Shopify's event type, e.g. orders/create"),
        )
    ]
    return body


_CALL_ERROR = {
    "type": "object",
    "title": "CallError",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string"},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "The offending field, e.g. properties.price"},
        "index": {"type": "integer", "description": "The offending call of a batch"},
    },
}
_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "title": "Error",
                "required": ["success", "code", "message"],
                "properties": {
                    "success": {"type": "boolean", "enum": [False]},
                    **_CALL_ERROR["properties"],
                    "rejected": {"type": "array", "items": _CALL_ERROR, "description": "Every invalid call"},
                },
            }
        }
    }
}
_OK = {
    "description": "Stored (committed) or already stored; a batch's left-out calls in `rejected`",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "success": {"type": "boolean"},
                    "rejected": {"type": "array", "items": _CALL_ERROR},
                },
            }
        }
    },
}
RESPONSES: dict = {
    200: _OK,
    400: {"description": "Invalid JSON or call", **_ERROR},
    401: {"description": "Missing or unknown write key", **_ERROR},
    413: {"description": "Body or call over the size limit", **_ERROR},
    415: {"description": "Unsupported Content-Encoding", **_ERROR},
    503: {"description": "Warehouse unreachable: retry after Retry-After seconds", **_ERROR},
}
WEBHOOK_RESPONSES: dict = {
    **RESPONSES,
    401: {"description": "Missing, invalid or stale signature", **_ERROR},
    404: {"description": "Unknown webhook source", **_ERROR},
}
