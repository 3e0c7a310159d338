"""Segment's HTTP Tracking API: validate calls and turn them into raw.events rows.

Validation is hand-written rather than a pydantic model because it runs for
every event of every batch and is most of the collector's own CPU time; the
OpenAPI schemas in collector/schemas.py document the same rules.

Rules (Segment's spec, plus what the warehouse needs to store the row):
- `userId` or `anonymousId` (string or integer) on every call; alias needs
  `userId` and `previousId`, group needs `groupId`, track needs `event`.
- `properties`, `traits` and `context` are JSON objects when present.
- `timestamp` and `sentAt` are ISO-8601 strings (no offset means UTC); a call
  without `timestamp` happened when it was received.
- `messageId` is the deduplication key. A call without one gets a key derived
  from its content and source, so a client's retry of it still deduplicates.
- 32 KB per call (the body of a single call; in a batch, its properties,
  traits and context, which hold all but the capped fields). Ids and names are capped (255 / 1,000 characters) so the
  primary key index can always take them; NUL characters, which PostgreSQL text
  and jsonb cannot hold, are refused.
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import UTC, datetime

import orjson

from collector.errors import ApiError, bad_request

TYPES = ("track", "identify", "page", "screen", "group", "alias")
COLUMNS = (
    "message_id",
    "type",
    "event",
    "name",
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "properties",
    "traits",
    "context",
    "occurred_at",
    "sent_at",
    "received_at",
    "source",
)
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
MAX_ID_CHARS = 255
MAX_NAME_CHARS = 1000
EMPTY_OBJECT = "{}"
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

# A row: a tuple in COLUMNS order, timestamps as ISO-8601 text. Identity links: (anonymous_id, user_id, message_id, linked_at).
Row = tuple
Link = tuple


def _text(value, name: str, index: int | None, limit: int, *, ids: bool) -> str | None:
    """A string field (ids may also be integers, as Segment's libraries allow); '' is absent."""
    if value is None:
        return None
    if type(value) is not str:
        if ids and type(value) is int:
            value = str(value)
        else:
            kind = "a string or an integer" if ids else "a string"
            raise bad_request("wrong_type", f"{name} must be {kind}", field=name, index=index)
    if not value:
        return None
    if len(value) > limit:
        raise bad_request(
            "value_too_long", f"{name} is longer than {limit} characters", field=name, index=index
        )
    if "\x00" in value:
        raise bad_request("invalid_character", f"{name} contains a NUL character", field=name, index=index)
    return value


def _object(value, name: str, index: int | None) -> str:
    if value is None:
        return EMPTY_OBJECT
    if type(value) is not dict:
        raise bad_request("wrong_type", f"{name} must be a JSON object", field=name, index=index)
    if not value:
        return EMPTY_OBJECT
    blob = orjson.dumps(value)
    if b"\\u0000" in blob and _NUL_ESCAPE.search(blob):
        raise bad_request("invalid_character", f"{name} contains a NUL character", field=name, index=index)
    return blob.decode()


def parse_timestamp(value, name: str, index: int | None = None) -> datetime | None:
    if value is None:
        return None
    if type(value) is not str:
        raise bad_request("wrong_type", f"{name} must be an ISO-8601 string", field=name, index=index)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(
            "invalid_timestamp", f"{name} is not an ISO-8601 timestamp", field=name, index=index
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def derived_message_id(message: dict, source: str) -> str:
    """A stable id for a call without messageId: the same call retried gets the same id."""
    content = {k: v for k, v in message.items() if k not in ("sentAt", "writeKey")}
    digest = hashlib.sha256(source.encode() + b"\x00" + orjson.dumps(content, option=orjson.OPT_SORT_KEYS))
    return "auto-" + digest.hexdigest()[:40]


def parse_event(
    message,
    call_type: str | None,
    source: str,
    received_at: datetime,
    sent_at: datetime | None,
    context: dict | None,
    links: list[Link],
    index: int | None = None,
    size: int | None = None,
) -> Row:
    """Validate one call; `call_type` is the endpoint's (None in a batch: the call's own `type`).

    Appends the identity link of an identify or alias call to `links`.
    """
    if type(message) is not dict:
        raise bad_request("invalid_event", "an event must be a JSON object", index=index)
    get = message.get
    if call_type is None:
        call_type = get("type")
        if call_type not in TYPES:
            if call_type is None:
                raise bad_request("missing_type", "type is required in a batch", field="type", index=index)
            raise bad_request(
                "invalid_type", f"type must be one of {', '.join(TYPES)}", field="type", index=index
            )
    # Fast path inline (a plain, short string), _text for everything else: this runs per event.
    user_id = get("userId")
    if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_CHARS or "\x00" in user_id:
        user_id = _text(user_id, "userId", index, MAX_ID_CHARS, ids=True)
    anonymous_id = get("anonymousId")
    if type(anonymous_id) is not str or not 0 < len(anonymous_id) <= MAX_ID_CHARS or "\x00" in anonymous_id:
        anonymous_id = _text(anonymous_id, "anonymousId", index, MAX_ID_CHARS, ids=True)
    if user_id is None and anonymous_id is None and call_type != "alias":
        raise bad_request("missing_id", "userId or anonymousId is required", field="userId", index=index)
    message_id = get("messageId")
    if type(message_id) is not str or not 0 < len(message_id) <= MAX_ID_CHARS or "\x00" in message_id:
        message_id = _text(message_id, "messageId", index, MAX_ID_CHARS, ids=True)
    event = name = group_id = previous_id = None
    properties_value = get("properties")
    if call_type == "track":
        event = get("event")
        if type(event) is not str or not 0 < len(event) <= MAX_NAME_CHARS or "\x00" in event:
            event = _text(event, "event", index, MAX_NAME_CHARS, ids=False)
        if event is None:
            raise bad_request(
                "missing_event", "event is required for a track call", field="event", index=index
            )
    elif call_type == "page" or call_type == "screen":
        name = _text(get("name"), "name", index, MAX_NAME_CHARS, ids=False)
        category = _text(get("category"), "category", index, MAX_NAME_CHARS, ids=False)
        if category is not None and (properties_value is None or type(properties_value) is dict):
            properties_value = {"category": category, **(properties_value or {})}
    elif call_type == "group":
        group_id = _text(get("groupId"), "groupId", index, MAX_ID_CHARS, ids=True)
        if group_id is None:
            raise bad_request(
                "missing_id", "groupId is required for a group call", field="groupId", index=index
            )
    elif call_type == "alias":
        previous_id = _text(get("previousId"), "previousId", index, MAX_ID_CHARS, ids=True)
        if previous_id is None or user_id is None:
            field = "previousId" if previous_id is None else "userId"
            raise bad_request("missing_id", "alias needs userId and previousId", field=field, index=index)
    properties = _object(properties_value, "properties", index)
    traits = _object(get("traits"), "traits", index)
    own_context = get("context")
    if context and (own_context is None or type(own_context) is dict):
        own_context = {**context, **(own_context or {})}
    context_json = _object(own_context, "context", index)
    if size is None:  # in a batch: what is stored (ids and names have their own caps)
        size = len(properties) + len(traits) + len(context_json)
    if size > MAX_EVENT_BYTES:
        raise ApiError(
            413,
            "event_too_large",
            _at(index, f"an event is {size} bytes, over the {MAX_EVENT_BYTES}-byte limit"),
            index=index,
        )
    occurred_at = parse_timestamp(get("timestamp"), "timestamp", index) or received_at
    own_sent_at = parse_timestamp(get("sentAt"), "sentAt", index) or sent_at
    if message_id is None:
        message_id = derived_message_id(message, source)
    if call_type == "identify" and user_id is not None and anonymous_id is not None:
        links.append((anonymous_id, user_id, message_id, occurred_at))
    elif call_type == "alias":
        links.append((previous_id, user_id, message_id, occurred_at))
    return (
        message_id,
        call_type,
        event,
        name,
        user_id,
        anonymous_id,
        group_id,
        previous_id,
        properties,
        traits,
        context_json,
        occurred_at.isoformat() if occurred_at is not received_at else iso(received_at),
        None if own_sent_at is None else iso(own_sent_at),
        iso(received_at),
        source,
    )


@functools.lru_cache(maxsize=8)
def iso(value: datetime) -> str:
    """Timestamps go to COPY as ISO-8601 text: psycopg's datetime dumper costs ~20 us a value,
    more than the rest of the row; the request's receivedAt and sentAt are formatted once."""
    return value.isoformat()


def _at(index: int | None, message: str) -> str:
    return message if index is None else f"batch[{index}]: {message}"


def parse_batch(body: dict, source: str, received_at: datetime) -> tuple[list[Row], list[Link]]:
    """All or nothing: the first invalid call rejects the whole batch, naming its index."""
    batch = body.get("batch")
    if type(batch) is not list:
        if batch is None:
            raise bad_request("missing_batch", "batch (an array of calls) is required", field="batch")
        raise bad_request("wrong_type", "batch must be an array of calls", field="batch")
    if not batch:
        raise bad_request("empty_batch", "batch contains no calls", field="batch")
    if len(batch) > MAX_BATCH_EVENTS:
        raise bad_request(
            "too_many_events", f"a batch holds at most {MAX_BATCH_EVENTS} calls, got {len(batch)}"
        )
    sent_at = parse_timestamp(body.get("sentAt"), "sentAt")
    context = body.get("context")
    if context is not None and type(context) is not dict:
        raise bad_request("wrong_type", "context must be a JSON object", field="context")
    links: list[Link] = []
    rows = [
        parse_event(message, None, source, received_at, sent_at, context, links, index)
        for index, message in enumerate(batch)
    ]
    return rows, links


def dedupe(rows: list[Row], links: list[Link]) -> tuple[list[Row], list[Link]]:
    """First call per messageId, sorted by it (a fixed lock order: concurrent retries never deadlock);
    the earliest link per (anonymous_id, user_id)."""
    if len(rows) > 1:
        unique = {}
        for row in rows:
            unique.setdefault(row[0], row)
        rows = sorted(unique.values(), key=_first)
    if len(links) > 1:
        earliest: dict = {}
        for link in links:
            key = (link[0], link[1])
            if key not in earliest or link[3] < earliest[key][3]:
                earliest[key] = link
        links = sorted(earliest.values(), key=_pair)
    return rows, links


def _first(row: Row) -> str:
    return row[0]


def _pair(link: Link) -> tuple[str, str]:
    return (link[0], link[1])
