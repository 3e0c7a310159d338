"""Segment's HTTP Tracking API: validate calls and turn them into raw.events rows.

Validation is hand-written rather than a pydantic model because it runs for
every event of every batch and is most of the collector's own CPU time; the
OpenAPI schemas in collector/schemas.py document the same rules.

Rules (Segment's spec, plus what the warehouse needs to store the row):
- `userId` or `anonymousId` (string or integer) on every call; alias needs
  `userId` and `previousId`, group needs `groupId`, track needs `event`.
- `properties`, `traits` and `context` are JSON objects when present.
- `timestamp` and `sentAt` are ISO-8601 strings (no offset means UTC) within a
  sane window: not before 2000 (COLLECTOR_EARLIEST_TIMESTAMP), not more than a
  day ahead of the receive time (COLLECTOR_MAX_CLOCK_AHEAD); a call without
  `timestamp` happened when it was received.
- What the warehouse and the engine read as numbers and integer ids can be read:
  the e-commerce amounts (NUMERIC_PROPERTIES, in `properties` and in each of
  `properties.products`) are finite numbers (or numeric strings) within
  +-1e15, never NaN or Infinity; an id that reads as an integer (`userId`,
  `product_id`) is ASCII digits within PostgreSQL's bigint (a 20-digit userId,
  or `"²"`, which `str.isdigit` accepts and `int` refuses, are refused);
  `context.timezone`, `traits.timezone` and `context.traits.timezone` are IANA
  zone names (`Europe/Paris`, not `America`).
- A client's `messageId` may not start with `webhook:`: that namespace is the
  signed webhooks' (a client could otherwise pre-empt a bounce's id).
- Objects nested deeper than JSON serialisation allows (orjson: 254 levels)
  are a 400 `too_deep`.
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
import zoneinfo
from datetime import UTC, datetime, timedelta

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
MAX_BIGINT = 2**63 - 1
MAX_NUMBER = 1e15
# Segment's e-commerce spec amounts, which the ingest and the engine read as numbers.
NUMERIC_PROPERTIES = (
    "price",
    "quantity",
    "revenue",
    "value",
    "total",
    "subtotal",
    "tax",
    "shipping",
    "discount",
)
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
MAX_CLOCK_AHEAD = timedelta(days=1)
RESERVED_MESSAGE_ID_PREFIX = "webhook:"
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

# A row: a tuple in COLUMNS order, timestamps as ISO-8601 text. Identity links: (anonymous_id, user_id, message_id, linked_at).
Row = tuple
Link = tuple
# (earliest, latest) accepted timestamp of a request: see accepted_window().
Window = tuple[datetime, datetime]


def accepted_window(
    received_at: datetime, earliest: datetime = EARLIEST_TIMESTAMP, ahead: timedelta = MAX_CLOCK_AHEAD
) -> Window:
    return earliest, received_at + ahead


def _text(value, name: str, index: int | None, limit: int, *, ids: bool) -> str | None:
    """A string field (ids may also be integers, as Segment's libraries allow); '' is absent."""
    if value is None:
        return None
    if type(value) is not str:
        if ids and type(value) is int:
            if not -MAX_BIGINT - 1 <= value <= MAX_BIGINT:
                raise bad_request(
                    "invalid_id", f"{name} is out of range for a 64-bit integer id", field=name, index=index
                )
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


def integer_id(value: str, name: str, index: int | None) -> str:
    """`value`, refused when a reader would take it for an integer that bigint cannot hold or
    `int()` cannot read: the ingest and the engine cast numeric user and product ids."""
    if value.isdigit():  # any script's digits, superscripts included
        if value.isascii() and (len(value) < 19 or int(value) <= MAX_BIGINT):
            return value
    elif value[:1].isalpha():  # "customer-42", most uuids: not a number
        return value
    else:
        try:
            number = int(value)  # also " 7", "-7", "1_000"
        except ValueError:
            return value
        if -MAX_BIGINT - 1 <= number <= MAX_BIGINT:
            return value
    raise bad_request(
        "invalid_id",
        f"{name} reads as an integer but is not ASCII digits within the 64-bit range",
        field=name,
        index=index,
    )


def _number(value, name: str, index: int | None) -> None:
    kind = type(value)
    if kind is float or kind is int:
        number = value
    elif kind is str:
        try:
            number = float(value)  # how the ingest reads it
        except ValueError:
            raise bad_request("invalid_number", f"{name} is not a number", field=name, index=index) from None
    elif value is None:
        return
    else:
        raise bad_request("wrong_type", f"{name} must be a number", field=name, index=index)
    if not -MAX_NUMBER <= number <= MAX_NUMBER:  # NaN fails both comparisons
        raise bad_request(
            "invalid_number",
            f"{name} must be a finite number within +-{MAX_NUMBER:.0e}",
            field=name,
            index=index,
        )


_COMMERCE_KEYS = frozenset((*NUMERIC_PROPERTIES, "product_id"))


def _commerce_fields(values: dict, prefix: str, index: int | None) -> None:
    # Runs for every event: the common valid values pass inline; names are built only for errors.
    for key, value in values.items():
        if key not in _COMMERCE_KEYS or value is None:
            continue
        kind = type(value)
        if key == "product_id":
            if kind is str:
                if not (value.isascii() and value.isdigit() and len(value) < 19):
                    integer_id(value, f"{prefix}.product_id", index)
            elif kind is int:
                _text(value, f"{prefix}.product_id", index, MAX_ID_CHARS, ids=True)
        elif not ((kind is float or kind is int) and -MAX_NUMBER <= value <= MAX_NUMBER):
            _number(value, f"{prefix}.{key}", index)


def check_properties(properties: dict, index: int | None, name: str = "properties") -> None:
    """The e-commerce numbers and product ids the ingest and the engine read (Segment's spec)."""
    _commerce_fields(properties, name, index)
    products = properties.get("products")
    if type(products) is list:
        for position, product in enumerate(products):
            if type(product) is dict:
                _commerce_fields(product, f"{name}.products[{position}]", index)


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _time_zone(values, name: str, index: int | None) -> None:
    if type(values) is dict:
        zone = values.get("timezone")
        if zone is not None and (type(zone) is not str or zone not in _time_zones()):
            raise bad_request(
                "invalid_timezone",
                f"{name}.timezone is not an IANA time zone name",
                field=f"{name}.timezone",
                index=index,
            )


def _object(value, name: str, index: int | None) -> str:
    if value is None:
        return EMPTY_OBJECT
    if type(value) is not dict:
        raise bad_request("wrong_type", f"{name} must be a JSON object", field=name, index=index)
    if not value:
        return EMPTY_OBJECT
    try:
        blob = orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise _too_deep(name, index) from None
    if b"\\u0000" in blob and _NUL_ESCAPE.search(blob):
        raise bad_request("invalid_character", f"{name} contains a NUL character", field=name, index=index)
    return blob.decode()


def _too_deep(name: str, index: int | None):
    return bad_request("too_deep", f"{name} is nested too deeply", field=name, index=index)


def parse_timestamp(
    value, name: str, index: int | None = None, window: Window | None = None
) -> datetime | None:
    """An ISO-8601 timestamp (UTC when it has no offset) within `window` when one is given."""
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
    if window is not None and not window[0] <= parsed <= window[1]:
        raise bad_request(
            "timestamp_out_of_range",
            f"{name} must lie between {window[0].isoformat()} and {window[1].isoformat()}"
            " (the receive time plus the clock skew allowed)",
            field=name,
            index=index,
        )
    return parsed


def timestamp_text(value: str, parsed: datetime) -> str:
    """What goes to PostgreSQL for a parsed timestamp: the client's own text when it is RFC 3339
    with an offset (YYYY-MM-DDTHH:MM:SS[.frac](Z|+-HH:MM), which PostgreSQL reads as Python
    did), else Python's isoformat (1 us an event, the dearest step of parsing a call)."""
    if (
        len(value) >= 20
        and value[4] == "-"
        and value[7] == "-"
        and value[10] == "T"
        and value[13] == ":"
        and value[16] == ":"
        and value[19] in ".Z+-"
        and (value[-1] == "Z" or (value[-3] == ":" and value[-6] in "+-"))
    ):
        return value
    return parsed.isoformat()


def derived_message_id(message: dict, source: str, index: int | None = None) -> str:
    """A stable id for a call without messageId: the same call retried gets the same id."""
    content = {k: v for k, v in message.items() if k not in ("sentAt", "writeKey")}
    try:
        blob = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        raise bad_request("too_deep", "the call is nested too deeply", index=index) from None
    digest = hashlib.sha256(source.encode() + b"\x00" + blob)
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
    window: Window | None = None,
) -> Row:
    """Validate one call; `call_type` is the endpoint's (None in a batch: the call's own `type`).

    Appends the identity link of an identify or alias call to `links`. Timestamps must lie in
    `window` (default: accepted_window(received_at)).
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
    if user_id is not None:
        integer_id(user_id, "userId", index)
    anonymous_id = get("anonymousId")
    if type(anonymous_id) is not str or not 0 < len(anonymous_id) <= MAX_ID_CHARS or "\x00" in anonymous_id:
        anonymous_id = _text(anonymous_id, "anonymousId", index, MAX_ID_CHARS, ids=True)
    if user_id is None and anonymous_id is None and call_type != "alias":
        raise bad_request("missing_id", "userId or anonymousId is required", field="userId", index=index)
    message_id = get("messageId")
    if type(message_id) is not str or not 0 < len(message_id) <= MAX_ID_CHARS or "\x00" in message_id:
        message_id = _text(message_id, "messageId", index, MAX_ID_CHARS, ids=True)
    if message_id is not None and message_id.startswith(RESERVED_MESSAGE_ID_PREFIX):
        raise bad_request(
            "reserved_message_id",
            f"messageId may not start with {RESERVED_MESSAGE_ID_PREFIX!r}: that namespace is the signed webhooks'",
            field="messageId",
            index=index,
        )
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
    if properties_value and type(properties_value) is dict:
        check_properties(properties_value, index)
    properties = _object(properties_value, "properties", index)
    traits_value = get("traits")
    if traits_value:
        _time_zone(traits_value, "traits", index)
    traits = _object(traits_value, "traits", index)
    own_context = get("context")
    if context and (own_context is None or type(own_context) is dict):
        own_context = {**context, **(own_context or {})}
    if own_context and type(own_context) is dict:
        _time_zone(own_context, "context", index)
        _time_zone(own_context.get("traits"), "context.traits", index)
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
    if window is None:
        window = accepted_window(received_at)
    timestamp = get("timestamp")
    occurred_at = parse_timestamp(timestamp, "timestamp", index, window) or received_at
    own_sent_at = parse_timestamp(get("sentAt"), "sentAt", index, window) or sent_at
    if message_id is None:
        message_id = derived_message_id(message, source, index)
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
        timestamp_text(timestamp, occurred_at) if occurred_at is not received_at else iso(received_at),
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


def parse_batch(
    body: dict, source: str, received_at: datetime, window: Window | None = None
) -> tuple[list[Row], list[Link], list[ApiError]]:
    """The valid calls of a batch, their identity links, and the errors of the invalid ones.

    As Segment's own API does, one invalid call does not cost the others: it is left
    out and reported (its index, field and problem); the clients do not retry a 4xx,
    so rejecting the batch would lose every valid call in it. A batch with no valid
    call at all, or an invalid envelope (batch, sentAt, context), is a 4xx.
    """
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
    if window is None:
        window = accepted_window(received_at)
    sent_at = parse_timestamp(body.get("sentAt"), "sentAt", None, window)
    context = body.get("context")
    if context is not None and type(context) is not dict:
        raise bad_request("wrong_type", "context must be a JSON object", field="context")
    links: list[Link] = []
    rows: list[Row] = []
    rejected: list[ApiError] = []
    for index, message in enumerate(batch):
        try:
            rows.append(
                parse_event(message, None, source, received_at, sent_at, context, links, index, None, window)
            )
        except ApiError as error:
            rejected.append(error)
    if not rows:
        first = rejected[0]
        first.rejected = rejected
        raise first
    return rows, links, rejected


COPY_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(rows: list[Row], clean: bool = False) -> bytes:
    """The rows in COPY's text format, what psycopg's write_row would send, in one buffer (about
    twice as cheap: no per-row call and await). `clean` skips escaping: the caller knows no value
    holds a backslash, tab, newline or carriage return (a JSON body without a backslash cannot
    produce one: JSON writes those characters only as backslash escapes)."""
    if clean:
        lines = ["\t".join([COPY_NULL if v is None else v for v in row]) for row in rows]
    else:
        lines = [
            "\t".join([COPY_NULL if v is None else v.translate(_COPY_ESCAPES) for v in row]) for row in rows
        ]
    lines.append("")
    return "\n".join(lines).encode()


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
