"""Due triggers, maintained incrementally from raw tables (never waiting for dbt).

Timers own cart and browse abandonment (the real-time triggers), whichever way
the activity arrives; marts.trigger_candidates (dbt, a contracted schema) and
ml.customer_segments own the batch audiences (lapsed VIPs, churn risk).
`ingest()` reads what arrived since its cursors and, in one transaction:

- moves or creates timers in ops.campaign_triggers for event campaigns (a cart
  event sets the cart timer to 30 minutes after the last cart activity; product
  views set a browse timer), updates their payload (cart lines and viewed
  products: catalogue ids and quantities) and cancels them on `cancel_on` events
  (a purchase). Activity comes from the collector's raw.events in real time
  and, at most once a minute, from new extract batches: the web export's track
  events (raw.web_events) and the shop's own carts (raw.shop_carts,
  raw.shop_cart_items), so a cart seen only there still gets its email;
- turns provider bounces, complaints and unsubscribes (signed webhook events in
  raw.events, rows of raw.esp_email_events) into suppressions;
- copies batch candidates from marts.trigger_candidates (CANDIDATE_COLUMNS,
  enforced by the mart's dbt contract), or, for a campaign without a candidate
  type or without the mart, selects from ml.customer_segments by its fallback rule.

Who may say what. Clients (a write key, the web export) cannot speak for the
email provider or the shop: suppression-grade events and purchases
(SIGNED_ONLY_EVENTS) count only from signed webhooks (`source` `webhook:<name>`,
a namespace the collector keeps write keys and client messageIds out of); from
a client they are counted (`untrusted`) and ignored. The shop's extracted
orders (raw.shop_orders) stop a trigger at send time (eligibility:
purchased_since). A cart or view event says which catalogue product and how
many, nothing more: names, prices and images come from the catalogue when the
email is sent (render_payload), and a product it does not know is left out.

Hostile rows: a row the ingest cannot use is set aside in ops.dead_letters with
its error (campaigns.dead_letters), counted (IngestStats.dead_letters) and
logged, and everything else goes on: the cursor moves past it.

Every step is idempotent and order-independent, so the cursor re-reads a short
overlap window (OVERLAP) to catch rows committed slightly out of received_at
order: re-reading an event changes nothing, and a timer it leaves as it was is
not written back. Only the window's rows the previous ingest may not have seen
are read again (_READ_EVENTS): the next wake after a burst does not ingest it twice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from campaigns import dead_letters, suppressions
from campaigns.schema import Campaign, CandidateTrigger, EventTrigger
from warehouse.db import columns, relation_exists

log = logging.getLogger(__name__)

OVERLAP = timedelta(seconds=10)
INITIAL_LOOKBACK = timedelta(days=2)
PAGE = 20000
INGEST_LOCK = 0x0E3A11C0  # pg advisory lock id: one ingester at a time
CANDIDATE_SYNC_EVERY = timedelta(seconds=60)
MAX_VIEWED = 10

# provider events that arrive as webhook track events (collector) -> suppression reason
SUPPRESSION_EVENTS = {
    "Email Bounced": "hard_bounce",
    "Marked as Spam": "complaint",
    "Unsubscribed": "unsubscribe",
}
ESP_SUPPRESSION_TYPES = {"bounce": "hard_bounce", "complaint": "complaint", "unsubscribe": "unsubscribe"}
SOFT_BOUNCES = {"soft", "transient", "temporary", "softbounce"}
# what only the email provider or the shop may say: acted on from signed webhooks only
SIGNED_ONLY_EVENTS = frozenset({*SUPPRESSION_EVENTS, "Order Completed"})
SIGNED_SOURCE_PREFIX = "webhook:"

# an event's own timestamp may be this much older, or newer, than its arrival
# (offline devices, client clocks); outside that window it is set aside
EVENT_MAX_AGE = timedelta(days=365)
EVENT_MAX_SKEW = timedelta(days=1)
MAX_QUANTITY = 10_000
MAX_ID = 2**63 - 1  # ids are PostgreSQL bigints
_ID = re.compile(r"[0-9]{1,19}")
# the extract batches cart and browse activity is read from
EXTRACT_TABLES = ("web_events", "shop_carts", "shop_cart_items")
# marts.trigger_candidates as its dbt contract declares it (_marts__models.yml)
CANDIDATE_COLUMNS = {
    "trigger_id": "text",
    "customer_id": "bigint",
    "trigger_type": "text",
    "last_activity_at": "timestamptz",
    "due_at": "timestamptz",
    "payload": "jsonb",
    "as_of_at": "timestamptz",
}
CANDIDATE_MAX_LEAD = timedelta(days=366)  # a batch candidate due further ahead is an error
# what an email may show about a product: the catalogue's, never an event's
PRODUCT_FACTS = ("product_id", "sku", "name", "category", "price", "image_url")


@dataclass
class IngestStats:
    events: int = 0
    timers_touched: int = 0
    cancelled: int = 0
    suppressions: int = 0
    candidates: int = 0
    extract_rows: int = 0  # cart and browse activity read from extract batches
    untrusted: int = 0  # suppression-grade or purchase events from a client: ignored
    dead_letters: int = 0  # rows set aside (ops.dead_letters)
    notes: list[str] = field(default_factory=list)

    def add(self, other: IngestStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _cursor(conn: psycopg.Connection, name: str, default: datetime) -> datetime:
    row = conn.execute("select position from ops.campaign_cursors where name = %s", (name,)).fetchone()
    return row[0] if row else default


def _set_cursor(conn: psycopg.Connection, name: str, position: datetime) -> None:
    conn.execute(
        """insert into ops.campaign_cursors (name, position) values (%s, %s)
           on conflict (name) do update set position = greatest(ops.campaign_cursors.position, excluded.position),
           updated_at = now()""",
        (name, position),
    )


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


def _id(value: Any) -> int | None:
    """A customer or catalogue id (a bigint, or its ASCII digits), else None:
    "²" and "٤٢" are digits to str.isdigit and int(), not ids."""
    if type(value) is int:
        return value if 0 <= value <= MAX_ID else None
    if type(value) is str and _ID.fullmatch(value):
        number = int(value)
        return number if number <= MAX_ID else None
    return None


def _quantity(value: Any) -> int | None:
    """A line's quantity: a finite number from 1 to MAX_QUANTITY (whole units), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: jsonb keeps 1e400 as an integer
        return None
    return int(number) if math.isfinite(number) and 1 <= number <= MAX_QUANTITY else None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _line(props: dict, at: datetime) -> dict:
    """A cart line as stored: which product and how many (validated by _problem)."""
    quantity = props.get("quantity")
    return {"quantity": 1 if quantity is None else _quantity(quantity), "at": _iso(at)}


def _json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (copy.deepcopy is ten times slower)."""
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


class _Timer:
    """One ops.campaign_triggers row being merged in memory."""

    __slots__ = ("row", "dirty", "new", "loaded")

    def __init__(self, row: dict, new: bool):
        self.row = row
        self.dirty = new
        self.new = new
        # the row as read: events applied again (each ingest re-reads OVERLAP) leave it
        # equal, and an unchanged row is not written back
        self.loaded = None if new else {**row, "payload": _json_copy(row["payload"])}

    @property
    def changed(self) -> bool:
        return self.new or (self.dirty and self.row != self.loaded)


def _apply_schedule(t: _Timer, campaign: Campaign, event: str, props: dict, at: datetime) -> None:
    trig: EventTrigger = campaign.trigger  # type: ignore[assignment]
    r = t.row
    if r["status"] == "cancelled" and r["cancelled_at"] is not None and at > r["cancelled_at"]:
        r["status"] = "pending"  # new activity after the purchase that cancelled it
        r["cancelled_at"] = None
        r["outcome"] = None
    r["first_activity_at"] = min(r["first_activity_at"], at)
    r["last_activity_at"] = max(r["last_activity_at"], at)
    _merge_payload(r["payload"], event, props, at)
    if r["status"] == "pending":
        anchor = r["last_activity_at"] if trig.after == "last_activity" else r["first_activity_at"]
        due = anchor + trig.delay
        r["original_due_at"] = due
        r["due_at"] = due  # quiet hours are applied again when it comes due
        r["expires_at"] = due + campaign.expiry
    t.dirty = True


def _product_key(props: dict) -> str:
    """A line's key in the payload: its catalogue id ('' when it names none)."""
    pid = _id(props.get("product_id"))
    return "" if pid is None else str(pid)


def _merge_payload(payload: dict, event: str, props: dict, at: datetime) -> None:
    """Order-independent merge: each product line keeps the state of its latest event."""
    at_iso = _iso(at)
    if event == "Product Viewed":
        viewed = payload.setdefault("viewed", {})
        pid = _product_key(props)
        if pid and (pid not in viewed or viewed[pid]["at"] <= at_iso):
            viewed[pid] = {"at": at_iso}
        if len(viewed) > MAX_VIEWED:
            for k in sorted(viewed, key=lambda k: viewed[k]["at"])[: len(viewed) - MAX_VIEWED]:
                del viewed[k]
        return
    items = payload.setdefault("items", {})
    if props.get("cart_id") is not None:
        payload["cart_id"] = props.get("cart_id")
    products = props.get("products")
    if isinstance(products, list):
        # a full cart snapshot (Cart Updated / Checkout Started): lines not in it were removed
        seen = set()
        for p in products:
            pid = _product_key(p)
            seen.add(pid)
            if pid and (pid not in items or items[pid]["at"] <= at_iso):
                items[pid] = _line(p, at)
        for pid, line in items.items():
            if pid not in seen and line["at"] < at_iso:
                line.update(removed=True, at=at_iso)
        return
    pid = _product_key(props)
    if not pid:
        return
    if pid in items and items[pid]["at"] > at_iso:
        return
    if event == "Product Removed":
        line = items.get(pid) or _line(props, at)
        line.update(removed=True, at=at_iso)
        items[pid] = line
    else:
        items[pid] = _line(props, at)


def payload_product_ids(payloads: Iterable[dict]) -> list[int]:
    """The catalogue ids stored payloads name: what render_payload needs from content.products."""
    return sorted(
        {
            pid
            for payload in payloads
            for part in ("items", "viewed")
            for key in (payload.get(part) or {})
            if (pid := _id(key)) is not None
        }
    )


def render_payload(payload: dict, catalogue: dict[int, dict] | None = None) -> dict:
    """The stored payload as templates see it: live cart lines and viewed products as lists.

    With `catalogue` (content.products of payload_product_ids), a product's facts
    (name, price, image, ...) are the catalogue's, whatever an event said, and a
    line whose product the catalogue does not know, or no longer sells, is left
    out: a cart with none left has no items (eligibility: nothing_to_show).
    Without it (previews), the lines as stored."""

    def shown(key: str, line: dict) -> dict | None:
        if catalogue is None:
            return {k: v for k, v in line.items() if k not in ("at", "removed")}
        product = catalogue.get(_id(key))
        if product is None or not product.get("is_active", True):
            return None
        out = {k: product.get(k) for k in PRODUCT_FACTS}
        if "quantity" in line:
            out["quantity"] = _quantity(line["quantity"]) or 1
        return out

    def listed(lines: dict, newest_first: bool) -> list[dict]:
        ordered = sorted(lines.items(), key=lambda kv: kv[1]["at"], reverse=newest_first)
        return [v for k, line in ordered if not line.get("removed") and (v := shown(k, line)) is not None]

    # cart_total: payloads stored before totals came from the catalogue
    out = {k: v for k, v in payload.items() if k not in ("items", "viewed", "cart_total")}
    if "items" in payload:
        out["items"] = listed(payload["items"] or {}, newest_first=False)
    if "viewed" in payload:
        out["viewed"] = listed(payload["viewed"] or {}, newest_first=True)
    return out


def _trigger_key(trig: EventTrigger, props: dict, at: datetime) -> str:
    """The timer's key: the `key` property's value (a cart id), else the day or the customer."""
    if trig.key:
        value = props.get(trig.key)
        if value not in (None, ""):
            return f"{trig.key}-{value}"
    if trig.key_fallback == "day":
        return f"day-{at.astimezone(UTC).date().isoformat()}"
    return "customer"


def _resolve_customers(conn: psycopg.Connection, rows: list[dict]) -> None:
    """customer_id from user_id, or through raw.identity_links for anonymous events."""
    anon = {r["anonymous_id"] for r in rows if _id(r["user_id"]) is None and r["anonymous_id"]}
    links: dict[str, int] = {}
    if anon:
        for a, u in conn.execute(
            "select distinct on (anonymous_id) anonymous_id, user_id from raw.identity_links"
            " where anonymous_id = any(%s) order by anonymous_id, linked_at desc",
            (list(anon),),
        ):
            if _id(u) is not None:
                links[a] = _id(u)
    for r in rows:
        own = _id(r["user_id"])
        r["customer_id"] = own if own is not None else links.get(r["anonymous_id"])


_TIMER_COLUMNS = (
    "trigger_id",
    "campaign",
    "customer_id",
    "trigger_key",
    "status",
    "priority",
    "first_activity_at",
    "last_activity_at",
    "original_due_at",
    "due_at",
    "expires_at",
    "cancelled_at",
    "payload",
    "outcome",
)


def _load_timers(conn: psycopg.Connection, keys: list[tuple[str, int, str]]) -> dict[tuple, _Timer]:
    if not keys:
        return {}
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        f"""select {", ".join(_TIMER_COLUMNS)} from ops.campaign_triggers
            where (campaign, customer_id, trigger_key) in (
                select * from unnest(%b::text[], %b::bigint[], %b::text[]))
            order by trigger_id for update""",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
    ).fetchall()
    return {(r["campaign"], r["customer_id"], r["trigger_key"]): _Timer(r, new=False) for r in rows}


def _save_timers(conn: psycopg.Connection, timers: list[_Timer]) -> None:
    rows = [t.row for t in timers if t.changed]
    if not rows:
        return
    cols = ", ".join(_TIMER_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _TIMER_COLUMNS if c not in ("trigger_id",))
    with conn.cursor() as cur:
        cur.executemany(
            f"""insert into ops.campaign_triggers ({cols}) values ({", ".join(["%s"] * len(_TIMER_COLUMNS))})
                on conflict (campaign, customer_id, trigger_key) do update set {updates}, updated_at = now()""",
            [tuple(Jsonb(r[c]) if c == "payload" else r[c] for c in _TIMER_COLUMNS) for r in rows],
        )


def _log_cancellations(conn: psycopg.Connection, cancelled: list[tuple[dict, str, datetime]]) -> None:
    if not cancelled:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "insert into ops.decision_log (campaign, customer_id, trigger_id, outcome, detail) values (%s, %s, %s, %s, %s)",
            [
                (
                    r["campaign"],
                    r["customer_id"],
                    r["trigger_id"],
                    outcome,
                    Jsonb({"cancelled_by_event_at": _iso(at), "stage": "ingest"}),
                )
                for r, outcome, at in cancelled
            ],
        )


def _event_campaigns(campaigns: dict[str, Campaign]) -> list[Campaign]:
    return [c for c in campaigns.values() if isinstance(c.trigger, EventTrigger)]


# The columns of an event row as the ingest reads it, from raw.events or raw.web_events:
# a timestamp outside the window around the row's arrival (or that Python cannot
# hold, such as year 10000) reads as null, and the row is set aside (_problem).
_EVENT_COLUMNS = """
    message_id, event, user_id, anonymous_id, properties, {traits} as traits,
    context -> 'traits' as context_traits, {source} as source, received_at,
    case when occurred_at between received_at - %(max_age)s and received_at + %(max_skew)s
         then occurred_at end as occurred_at,
    case when not occurred_at between received_at - %(max_age)s and received_at + %(max_skew)s
         then occurred_at::text end as occurred_at_text
"""
_WINDOW = {"max_age": EVENT_MAX_AGE, "max_skew": EVENT_MAX_SKEW}

# Relevant track events after the cursor, and those in the OVERLAP before it that the
# previous ingest may not have seen: a collector transaction can commit after a
# later one and land behind the cursor. Rows whose transaction is older than the
# previous ingest's snapshot xmin had committed before it read, so they were read
# then and are skipped (a burst is not ingested twice). xmin is a 32-bit xid: its
# 64-bit value is the newest xid's minus their distance modulo 2^32.
_READ_EVENTS = f"""
    with s as (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as newest)
    select {_EVENT_COLUMNS.format(traits="traits", source="source")}
    from raw.events, s
    where (received_at, message_id) > (%(after_at)s, %(after_id)s) and type = 'track' and event = any(%(names)s)
      and (received_at > %(cursor)s or %(seen_xmin)s::bigint is null
           or s.newest - ((s.newest - xmin::text::bigint) & 4294967295) >= %(seen_xmin)s::bigint)
    order by received_at, message_id limit %(limit)s
"""


def _relevant_events(event_campaigns: list[Campaign]) -> set[str]:
    """Event names that create, move or cancel timers, or become suppressions."""
    names = set(SUPPRESSION_EVENTS)
    for c in event_campaigns:
        t: EventTrigger = c.trigger  # type: ignore[assignment]
        names |= set(t.events) | set(t.cancel_on) | set(t.update_on)
    return names


def _payload_events(event_campaigns: list[Campaign]) -> set[str]:
    """Event names whose product lines go into a timer's payload."""
    names: set[str] = set()
    for c in event_campaigns:
        t: EventTrigger = c.trigger  # type: ignore[assignment]
        names |= set(t.events) | set(t.update_on)
    return names


def _ingest_events(
    conn: psycopg.Connection, campaigns: dict[str, Campaign], now: datetime, stats: IngestStats
) -> None:
    event_campaigns = _event_campaigns(campaigns)
    names = _relevant_events(event_campaigns)
    cursor_pos = _cursor(conn, "raw.events", now - INITIAL_LOOKBACK)
    seen_before = conn.execute(
        "select snapshot_xmin from ops.campaign_cursors where name = 'raw.events'"
    ).fetchone()
    # taken before the first read: every transaction older than this has finished
    snapshot_xmin = conn.execute("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()[0]
    after: tuple[datetime, str] = (cursor_pos - OVERLAP, "")
    max_seen = cursor_pos
    cur = conn.cursor(row_factory=dict_row)
    while True:
        rows = cur.execute(_READ_EVENTS, {
            **_WINDOW,
            "after_at": after[0],
            "after_id": after[1],
            "names": sorted(names),
            "cursor": cursor_pos,
            "seen_xmin": seen_before[0] if seen_before else None,
            "limit": PAGE,
        }).fetchall()  # fmt: skip
        if not rows:
            break
        stats.events += len(rows)
        _apply_safely(conn, "raw.events", event_campaigns, rows, stats)
        last = rows[-1]
        after = (last["received_at"], last["message_id"])
        max_seen = max(max_seen, last["received_at"])
        if len(rows) < PAGE:
            break
    _set_cursor(conn, "raw.events", max_seen)
    conn.execute(
        "update ops.campaign_cursors set snapshot_xmin = %s where name = 'raw.events'", (snapshot_xmin,)
    )


def _problem(row: dict, payload_events: set[str]) -> str | None:
    """Why the ingest cannot use an event row, or None. Checks what it relies on; what
    nothing foresaw, dead_letters.apply_rows catches."""
    if row["occurred_at"] is None:
        return (
            f"timestamp {row['occurred_at_text']} is not within {EVENT_MAX_AGE.days} days before"
            f" and {EVENT_MAX_SKEW.days} day after the event arrived"
        )
    props = row["properties"]
    if not isinstance(props, dict):
        return f"properties is a JSON {type(props).__name__}, not an object"
    # a userId that is not numeric names no customer (the anonymous id's link may);
    # one that is, but too large for a bigint, is an error
    user_id = row["user_id"]
    if user_id is not None and user_id.isascii() and user_id.isdigit() and _id(user_id) is None:
        return f"userId has {len(user_id)} digits: larger than any customer id"
    if row["event"] not in payload_events:
        return None
    lines: list[tuple[str, Any]] = [("properties", props)]
    products = props.get("products")
    if products is not None:
        if not isinstance(products, list):
            return "properties.products is not a list"
        lines += [(f"properties.products[{i}]", p) for i, p in enumerate(products)]
    for where, line in lines:
        if not isinstance(line, dict):
            return f"{where} is not an object"
        if line.get("product_id") not in (None, "") and _id(line["product_id"]) is None:
            return f"{where}.product_id {_show(line['product_id'])} is not a catalogue product id"
        if line.get("quantity") is not None and _quantity(line["quantity"]) is None:
            return f"{where}.quantity {_show(line['quantity'])} is not a number from 1 to {MAX_QUANTITY}"
    return None


def _checked(row: dict, payload_events: set[str]) -> str | None:
    """_problem, which must not fail either: a check that raises sets the row aside."""
    try:
        return _problem(row, payload_events)
    except dead_letters.ROW_FAULTS as exc:
        return f"{type(exc).__name__}: {exc}"


def _apply_safely(
    conn: psycopg.Connection,
    stage: str,
    event_campaigns: list[Campaign],
    rows: list[dict],
    stats: IngestStats,
) -> None:
    """Apply event rows, setting aside each that fails a check (_problem) or makes
    applying fail, with its error; every other row is applied."""
    payload_events = _payload_events(event_campaigns)
    bad = [(r["message_id"], problem) for r in rows if (problem := _checked(r, payload_events))]
    if bad:
        stats.dead_letters += dead_letters.record(conn, stage, bad)
        set_aside = {key for key, _ in bad}
        rows = [r for r in rows if r["message_id"] not in set_aside]

    def apply(part: list[dict]) -> IngestStats:
        part_stats = IngestStats()
        _apply_events(conn, event_campaigns, part, part_stats)
        return part_stats

    applied, failed = dead_letters.apply_rows(conn, stage, rows, apply, key="message_id")
    for part_stats in applied:
        stats.add(part_stats)
    stats.dead_letters += failed


def _signed(row: dict) -> bool:
    return row["source"].startswith(SIGNED_SOURCE_PREFIX)


def _apply_events(
    conn: psycopg.Connection, event_campaigns: list[Campaign], rows: list[dict], stats: IngestStats
) -> None:
    _resolve_customers(conn, rows)
    suppressions.forget_erased(conn, rows)
    stats.untrusted += sum(1 for r in rows if r["event"] in SIGNED_ONLY_EVENTS and not _signed(r))
    suppress = [r for r in rows if r["event"] in SUPPRESSION_EVENTS and _signed(r)]
    if suppress:
        stats.suppressions += _suppress_from_events(conn, suppress)
    schedules: list[tuple[Campaign, str, dict, str, int, datetime]] = []
    cancels: list[tuple[Campaign, int, datetime, str]] = []
    for r in rows:
        cid = r["customer_id"]
        if cid is None:
            continue
        props = r["properties"] or {}
        may_cancel = r["event"] not in SIGNED_ONLY_EVENTS or _signed(r)
        for c in event_campaigns:
            t: EventTrigger = c.trigger  # type: ignore[assignment]
            if r["event"] in t.events and all(cond.matches(props) for cond in t.conditions):
                schedules.append(
                    (c, r["event"], props, _trigger_key(t, props, r["occurred_at"]), cid, r["occurred_at"])
                )
            elif r["event"] in t.update_on:
                schedules.append(
                    (c, r["event"], props, _trigger_key(t, props, r["occurred_at"]), cid, r["occurred_at"])
                )
            if r["event"] in t.cancel_on and may_cancel:
                cancels.append((c, cid, r["occurred_at"], r["event"]))
    keys = sorted({(c.name, cid, key) for c, _, _, key, cid, _ in schedules})
    timers = _load_timers(conn, keys)
    for c, event, props, key, cid, at in schedules:
        k = (c.name, cid, key)
        t = timers.get(k)
        trig: EventTrigger = c.trigger  # type: ignore[assignment]
        if event in trig.update_on and event not in trig.events:
            if t is not None:  # only changes an existing timer's payload
                _merge_payload(t.row["payload"], event, props, at)
                t.dirty = True
            continue
        if t is None:
            t = timers[k] = _Timer(
                {
                    "trigger_id": f"{c.name}:{cid}:{key}",
                    "campaign": c.name,
                    "customer_id": cid,
                    "trigger_key": key,
                    "status": "pending",
                    "priority": c.priority,
                    "first_activity_at": at,
                    "last_activity_at": at,
                    "original_due_at": at + trig.delay,
                    "due_at": at + trig.delay,
                    "expires_at": at + trig.delay + c.expiry,
                    "cancelled_at": None,
                    "payload": {},
                    "outcome": None,
                },
                new=True,
            )
        _apply_schedule(t, c, event, props, at)
    _save_timers(conn, list(timers.values()))
    stats.timers_touched += sum(1 for t in timers.values() if t.changed)
    if cancels:
        _cancel(conn, cancels, stats)


def _cancel(
    conn: psycopg.Connection, cancels: list[tuple[Campaign, int, datetime, str]], stats: IngestStats
) -> None:
    # the latest cancelling event per (campaign, customer) decides
    latest: dict[tuple[str, int], tuple[datetime, str]] = {}
    for c, cid, at, event in cancels:
        k = (c.name, cid)
        if k not in latest or at > latest[k][0]:
            latest[k] = (at, event)
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        """with c (campaign, customer_id, at, event) as (
               select * from unnest(%b::text[], %b::bigint[], %b::timestamptz[], %b::text[]))
           update ops.campaign_triggers t
              set status = 'cancelled', cancelled_at = c.at,
                  outcome = case when c.event = 'Order Completed' then 'purchased_since' else 'cancelled' end,
                  updated_at = now()
             from c
            where t.campaign = c.campaign and t.customer_id = c.customer_id
              and t.status = 'pending' and t.last_activity_at <= c.at
           returning t.trigger_id, t.campaign, t.customer_id, t.outcome, c.at""",
        (
            [k[0] for k in latest],
            [k[1] for k in latest],
            [v[0] for v in latest.values()],
            [v[1] for v in latest.values()],
        ),
    ).fetchall()
    _log_cancellations(conn, [(r, r["outcome"], r["at"]) for r in rows])
    stats.cancelled += len(rows)


def _email_of(row: dict) -> str | None:
    for source in (
        row.get("properties") or {},
        row.get("traits") or {},
        row.get("context_traits") or {},
    ):
        for key in ("email", "recipient", "email_address"):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, str) and "@" in value:
                return value
    return None


def _suppress_from_events(conn: psycopg.Connection, rows: list[dict]) -> int:
    from campaigns import content

    need_lookup = [r["customer_id"] for r in rows if not _email_of(r) and r["customer_id"] is not None]
    emails = (
        {cid: p["email"] for cid, p in content.profiles(conn, need_lookup).items()} if need_lookup else {}
    )
    added = 0
    for r in rows:
        props = r["properties"] or {}
        reason = SUPPRESSION_EVENTS[r["event"]]
        kind = str(props.get("bounce_type") or props.get("type") or "").lower()
        if reason == "hard_bounce" and kind in SOFT_BOUNCES:
            continue
        email = _email_of(r) or emails.get(r["customer_id"])
        if not email:
            continue
        h = suppressions.hash_email(email)
        added += suppressions.add(conn, h, reason, f"webhook:{r['event']}")
        if reason == "unsubscribe":
            suppressions.revoke_consent(conn, h, r["customer_id"], f"webhook:{r['event']}")
    return added


def _ingest_esp_events(conn: psycopg.Connection, now: datetime, stats: IngestStats) -> None:
    position = _cursor(conn, "raw.esp_email_events", datetime(1970, 1, 1, tzinfo=UTC))
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        """select event_id, email, event_type, bounce_type, _loaded_at from raw.esp_email_events
           where _loaded_at > %s and event_type = any(%s) order by _loaded_at""",
        (position - OVERLAP, list(ESP_SUPPRESSION_TYPES)),
    ).fetchall()
    if not rows:
        return
    newest = max(r["_loaded_at"] for r in rows)
    bad = [(r["event_id"], "email is not an address") for r in rows if not _looks_like_address(r["email"])]
    stats.dead_letters += dead_letters.record(conn, "raw.esp_email_events", bad)
    set_aside = {key for key, _ in bad}

    def apply(part: list[dict]) -> int:
        added = 0
        for r in part:
            event_type = r["event_type"]
            if event_type == "bounce" and (r["bounce_type"] or "").lower() in SOFT_BOUNCES:
                continue
            h = suppressions.hash_email(r["email"])
            added += suppressions.add(conn, h, ESP_SUPPRESSION_TYPES[event_type], "esp_export")
            if event_type == "unsubscribe":
                suppressions.revoke_consent(conn, h, None, "esp_export")
        return added

    applied, failed = dead_letters.apply_rows(
        conn,
        "raw.esp_email_events",
        [r for r in rows if r["event_id"] not in set_aside],
        apply,
        key="event_id",
    )
    stats.suppressions += sum(applied)
    stats.dead_letters += failed
    _set_cursor(conn, "raw.esp_email_events", newest)


def _looks_like_address(value: Any) -> bool:
    return isinstance(value, str) and "@" in value and len(value) <= 320


# Cart and browse activity in extract batches: new batches of these tables that no
# ingest has read yet, or that a rerun of extract_load rewrote since (each batch
# read is remembered as the cursor 'extract:<batch id>' at its loaded_at).
_NEW_BATCHES = """
    select b.source_table, b.batch_id, b.loaded_at from ops.extract_batches b
    left join ops.campaign_cursors c on c.name = 'extract:' || b.batch_id
    where b.source_table = any(%(tables)s) and b.loaded_at >= %(since)s
      and (c.position is null or c.position < b.loaded_at)
    order by b.loaded_at
"""

# The web export's track events: the collector's layout (Segment's), so read alike.
_READ_WEB_EVENTS = f"""
    select {_EVENT_COLUMNS.format(traits="'{}'::jsonb", source="'web_export'")}
    from raw.web_events
    where _batch_id = any(%(batches)s) and type = 'track' and event = any(%(names)s)
      and received_at >= %(since)s and occurred_at >= %(since)s and message_id > %(after_id)s
    order by message_id limit %(limit)s
"""

# The shop's carts as the events a storefront would have sent: every cart a new
# batch touched, its latest version and its lines' latest versions; each line is a
# 'Product Added' at added_at and, once removed, a 'Product Removed'. Converted
# carts are left out (their order stops any timer at send time).
_READ_SHOP_CART_EVENTS = """
    with touched as (
        select cart_id from raw.shop_carts where _batch_id = any(%(batches)s)
        union
        select cart_id from raw.shop_cart_items where _batch_id = any(%(batches)s)
    ),
    carts as (
        select distinct on (c.cart_id) c.cart_id, c.customer_id, c.anonymous_id, c.status, c.converted_order_id
        from raw.shop_carts as c inner join touched using (cart_id)
        order by c.cart_id, c.updated_at desc, c._loaded_at desc
    ),
    items as (
        select distinct on (i.cart_item_id) i.cart_item_id, i.cart_id, i.product_id, i.quantity, i.unit_price,
               i.added_at, i.removed_at
        from raw.shop_cart_items as i inner join touched using (cart_id)
        order by i.cart_item_id, i.updated_at desc, i._loaded_at desc
    )
    select 'cart_item:' || items.cart_item_id || ':' || e.event as message_id, e.event,
           carts.customer_id::text as user_id, carts.anonymous_id,
           jsonb_build_object('cart_id', items.cart_id::text, 'product_id', items.product_id,
                              'quantity', items.quantity, 'price', items.unit_price) as properties,
           '{}'::jsonb as traits, null::jsonb as context_traits, 'shop_database' as source,
           case when e.at <= %(latest)s then e.at end as occurred_at,
           case when e.at > %(latest)s then e.at::text end as occurred_at_text
    from items
    inner join carts using (cart_id)
    cross join lateral (values ('Product Added', items.added_at), ('Product Removed', items.removed_at))
        as e (event, at)
    where e.at >= %(since)s and carts.status <> 'converted' and carts.converted_order_id is null
    order by e.at, message_id
"""


def _ingest_extracts(
    conn: psycopg.Connection, campaigns: dict[str, Campaign], now: datetime, stats: IngestStats
) -> None:
    """Timers from the cart and browse activity in new extract batches (the web export,
    the shop's carts), exactly as from the collector's events: a cart the collector
    never saw still gets its email, and one it saw (same cart_id) is the same timer."""
    event_campaigns = _event_campaigns(campaigns)
    if not event_campaigns:
        return
    # older activity can only make timers that have expired already
    since = now - max(c.trigger.delay + c.expiry for c in event_campaigns)  # type: ignore[union-attr]
    batches = conn.execute(_NEW_BATCHES, {"tables": list(EXTRACT_TABLES), "since": since}).fetchall()
    if not batches:
        return
    web = [batch for table, batch, _ in batches if table == "web_events"]
    shop = [batch for table, batch, _ in batches if table != "web_events"]
    cur = conn.cursor(row_factory=dict_row)
    after = ""
    while web:
        rows = cur.execute(_READ_WEB_EVENTS, {
            **_WINDOW,
            "batches": web,
            "names": sorted(_relevant_events(event_campaigns)),
            "since": since,
            "after_id": after,
            "limit": PAGE,
        }).fetchall()  # fmt: skip
        stats.extract_rows += len(rows)
        _apply_safely(conn, "raw.web_events", event_campaigns, rows, stats)
        if len(rows) < PAGE:
            break
        after = rows[-1]["message_id"]
    if shop:
        rows = cur.execute(
            _READ_SHOP_CART_EVENTS, {"batches": shop, "since": since, "latest": now + EVENT_MAX_SKEW}
        ).fetchall()
        stats.extract_rows += len(rows)
        _apply_safely(conn, "raw.shop_cart_items", event_campaigns, rows, stats)
    with conn.cursor() as marks:
        marks.executemany(
            """insert into ops.campaign_cursors (name, position) values (%s, %s)
               on conflict (name) do update set position = excluded.position, updated_at = now()""",
            [(f"extract:{batch}", loaded_at) for _, batch, loaded_at in batches],
        )
    conn.execute("delete from ops.campaign_cursors where name like 'extract:%%' and position < %s", (since,))


def sync_candidates(
    conn: psycopg.Connection, campaigns: dict[str, Campaign], now: datetime, stats: IngestStats
) -> None:
    """Batch campaigns: marts.trigger_candidates when the mart exists and the campaign names a
    candidate_type; else the campaign's fallback rule on ml.customer_segments; else nothing."""
    batch = [c for c in campaigns.values() if isinstance(c.trigger, CandidateTrigger)]
    if not batch:
        return
    has_mart = relation_exists(conn, "marts.trigger_candidates")
    has_ml = relation_exists(conn, "ml.customer_segments")
    from_mart = [c for c in batch if has_mart and c.trigger.candidate_type]  # type: ignore[union-attr]
    if from_mart:
        _insert_candidates(
            conn, "marts.trigger_candidates", _mart_candidates(conn, from_mart, now, stats), stats
        )
    for c in batch:
        if c in from_mart:
            continue
        if not has_ml or c.trigger.fallback is None:  # type: ignore[union-attr]
            stats.notes.append(
                f"{c.name}: no marts.trigger_candidates and no ml.customer_segments: no triggers"
            )
            continue
        _insert_candidates(conn, "ml.customer_segments", _ml_candidates(conn, c, now, stats), stats)


def _insert_candidates(conn: psycopg.Connection, stage: str, rows: list[dict], stats: IngestStats) -> None:
    """Candidates become triggers (a trigger already there stays as it is)."""

    def insert(part: list[dict]) -> int:
        with conn.cursor() as cur:
            cur.executemany(
                """insert into ops.campaign_triggers (trigger_id, campaign, customer_id, trigger_key, priority,
                       first_activity_at, last_activity_at, original_due_at, due_at, expires_at, payload)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   on conflict (campaign, customer_id, trigger_key) do nothing""",
                [
                    (
                        f"{r['campaign'].name}:{r['customer_id']}:{r['trigger_key']}",
                        r["campaign"].name,
                        r["customer_id"],
                        r["trigger_key"],
                        r["campaign"].priority,
                        *[r["due_at"]] * 4,
                        r["due_at"] + r["campaign"].expiry,
                        Jsonb(r["payload"]),
                    )
                    for r in part
                ],
            )
        return len(part)

    applied, failed = dead_letters.apply_rows(conn, stage, rows, insert, key="source_key")
    stats.candidates += sum(applied)
    stats.dead_letters += failed


def _mart_candidates(
    conn: psycopg.Connection, batch: list[Campaign], now: datetime, stats: IngestStats
) -> list[dict]:
    """The mart's rows of the campaigns' candidate types, by the contract's column names;
    rows that are stale (older than the campaign's expiry) are skipped, rows that
    break the contract's rules set aside."""
    types = {c.trigger.candidate_type: c for c in batch}  # type: ignore[union-attr]
    cur = conn.cursor(row_factory=dict_row)
    found = cur.execute(
        """select trigger_id, trigger_type, customer_id, payload, due_at::text as due_at_text,
                  case when due_at <= %(latest)s then due_at end as due_at
           from marts.trigger_candidates
           where trigger_type = any(%(types)s) and due_at >= %(stale_before)s""",
        {
            "types": list(types),
            "stale_before": now - max(c.expiry for c in batch),
            "latest": now + CANDIDATE_MAX_LEAD,
        },
    ).fetchall()
    rows, bad = [], []
    for r in found:
        c = types[r["trigger_type"]]
        if r["due_at"] is None:
            bad.append(
                (
                    r["trigger_id"],
                    f"due_at {r['due_at_text']} is more than {CANDIDATE_MAX_LEAD.days} days ahead",
                )
            )
        elif not isinstance(r["payload"], dict):
            bad.append((r["trigger_id"], f"payload is a JSON {type(r['payload']).__name__}, not an object"))
        elif r["due_at"] + c.expiry >= now:  # else stale: older than the campaign's expiry
            rows.append(
                {
                    "source_key": r["trigger_id"],
                    "campaign": c,
                    "customer_id": r["customer_id"],
                    "trigger_key": f"candidate-{r['trigger_id']}",
                    "due_at": r["due_at"],
                    "payload": r["payload"],
                }
            )
    stats.dead_letters += dead_letters.record(conn, "marts.trigger_candidates", bad)
    return rows


def _ml_candidates(conn: psycopg.Connection, c: Campaign, now: datetime, stats: IngestStats) -> list[dict]:
    cols = columns(conn, "ml", "customer_segments")
    fb = c.trigger.fallback  # type: ignore[union-attr]
    period = now.strftime("%G-W%V") if fb.period == "week" else now.strftime("%Y-%m")
    if fb.score and fb.min is not None and fb.score in cols:
        query = f"select customer_id::bigint from ml.customer_segments where {fb.score} >= %s"
        params: tuple = (fb.min,)
    elif fb.segment and "segments" in cols:
        query = "select customer_id::bigint from ml.customer_segments where %s = any(segments)"
        params = (fb.segment,)
    elif fb.segment and "segment" in cols:
        query = "select customer_id::bigint from ml.customer_segments where segment = %s"
        params = (fb.segment,)
    else:
        stats.notes.append(f"{c.name}: ml.customer_segments has no {fb.score or fb.segment} column; skipped")
        return []
    return [
        {
            "source_key": f"{c.name}:{cid}",
            "campaign": c,
            "customer_id": cid,
            "trigger_key": f"{fb.period}-{period}",
            "due_at": now,
            "payload": {"source": "ml.customer_segments"},
        }
        for (cid,) in conn.execute(query, params)
    ]


def _batch_input(conn: psycopg.Connection, name: str, read: Callable[[], None], stats: IngestStats) -> None:
    """A batch input (extract batches, candidates) in a savepoint: when it fails as a
    whole (a mart rebuilt with another schema, say), the real-time path goes on; the
    error is logged and the input is read again at the next sync."""
    try:
        with conn.transaction():
            read()
    except Exception as exc:
        if conn.broken:
            raise
        log.exception("trigger ingest: %s skipped", name)
        stats.notes.append(f"{name} skipped: {type(exc).__name__}: {exc}")


def ingest(
    conn: psycopg.Connection,
    campaigns: dict[str, Campaign],
    *,
    now: datetime | None = None,
    candidates: bool | None = None,
) -> IngestStats:
    """Bring ops.campaign_triggers and ops.suppressions up to date with the raw tables.

    The batch inputs (extract batches, batch candidates) are read when `candidates`
    is true; with `candidates=None`, at most once a minute."""
    now = now or datetime.now(UTC)
    stats = IngestStats()
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (INGEST_LOCK,))
        _ingest_events(conn, campaigns, now, stats)
        _ingest_esp_events(conn, now, stats)
        last_sync = _cursor(conn, "candidates.synced", datetime(1970, 1, 1, tzinfo=UTC))
        if candidates or (candidates is None and now - last_sync >= CANDIDATE_SYNC_EVERY):
            _batch_input(
                conn, "extract batches", lambda: _ingest_extracts(conn, campaigns, now, stats), stats
            )
            _batch_input(
                conn, "batch candidates", lambda: sync_candidates(conn, campaigns, now, stats), stats
            )
            _set_cursor(conn, "candidates.synced", now)
    for note in stats.notes:
        log.info(note)
    if stats.dead_letters:
        log.warning(
            "trigger ingest set aside %d rows in ops.dead_letters (`python -m campaigns dead-letters`)",
            stats.dead_letters,
        )
    return stats
