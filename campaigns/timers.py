"""Due triggers, maintained incrementally from raw tables (never waiting for dbt).

`ingest()` reads what arrived since its cursor and, in one transaction:

- moves or creates timers in ops.campaign_triggers for event campaigns (a cart
  event sets the cart timer to 30 minutes after the last cart activity; product
  views set a browse timer), updates their payload (cart lines, viewed
  products) and cancels them on `cancel_on` events (a purchase);
- turns provider bounces, complaints and unsubscribes (webhook track events in
  raw.events, rows of raw.esp_email_events) into suppressions;
- copies batch candidates from marts.trigger_candidates, or, without the mart,
  selects from ml.customer_segments by the campaign's fallback rule.

Every step is idempotent and order-independent, so the cursor re-reads a short
overlap window (OVERLAP) to catch rows committed slightly out of received_at
order: re-reading an event changes nothing, and a timer it leaves as it was is
not written back. Only the window's rows the previous ingest may not have seen
are read again (_READ_EVENTS): the next wake after a burst does not ingest it twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from campaigns import suppressions
from campaigns.schema import Campaign, CandidateTrigger, EventTrigger

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


@dataclass
class IngestStats:
    events: int = 0
    timers_touched: int = 0
    cancelled: int = 0
    suppressions: int = 0
    candidates: int = 0
    notes: list[str] = field(default_factory=list)


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


def relation_exists(conn: psycopg.Connection, qualified: str) -> bool:
    return conn.execute("select to_regclass(%s) is not null", (qualified,)).fetchone()[0]


def columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
            " order by ordinal_position",
            (schema, table),
        )
    ]


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _product(props: dict, at: datetime) -> dict:
    return {
        "product_id": props.get("product_id"),
        "sku": props.get("sku"),
        "name": props.get("name"),
        "price": _num(props.get("price")),
        "quantity": int(_num(props.get("quantity")) or 1),
        "image_url": props.get("image_url"),
        "category": props.get("category"),
        "at": _iso(at),
    }


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


def _merge_payload(payload: dict, event: str, props: dict, at: datetime) -> None:
    """Order-independent merge: each product line keeps the state of its latest event."""
    at_iso = _iso(at)
    if event == "Product Viewed":
        viewed = payload.setdefault("viewed", {})
        pid = str(props.get("product_id") or props.get("sku") or "")
        if pid and (pid not in viewed or viewed[pid]["at"] <= at_iso):
            viewed[pid] = _product(props, at)
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
            if isinstance(p, dict):
                pid = str(p.get("product_id") or p.get("sku") or "")
                seen.add(pid)
                if pid and (pid not in items or items[pid]["at"] <= at_iso):
                    items[pid] = _product(p, at)
        for pid, line in items.items():
            if pid not in seen and line["at"] < at_iso:
                line.update(removed=True, at=at_iso)
        for key in ("value", "total", "revenue"):
            if _num(props.get(key)) is not None:
                payload["cart_total"] = _num(props.get(key))
                break
        return
    pid = str(props.get("product_id") or props.get("sku") or "")
    if not pid:
        return
    if pid in items and items[pid]["at"] > at_iso:
        return
    if event == "Product Removed":
        line = items.get(pid) or _product(props, at)
        line.update(removed=True, at=at_iso)
        items[pid] = line
    else:
        items[pid] = _product(props, at)
    payload.pop("cart_total", None)  # a line changed: recompute from lines


def render_payload(payload: dict) -> dict:
    """The stored payload as templates see it: live cart lines and viewed products as lists."""
    items = [
        {k: v for k, v in line.items() if k not in ("at", "removed")}
        for line in sorted((payload.get("items") or {}).values(), key=lambda x: x["at"])
        if not line.get("removed")
    ]
    viewed = [
        {k: v for k, v in p.items() if k != "at"}
        for p in sorted((payload.get("viewed") or {}).values(), key=lambda x: x["at"], reverse=True)
    ]
    out = {k: v for k, v in payload.items() if k not in ("items", "viewed")}
    if "items" in payload:
        out["items"] = items
    if "viewed" in payload:
        out["viewed"] = viewed
    return out


def _trigger_key(trig: EventTrigger, props: dict, at: datetime) -> str:
    if trig.key:
        value = props.get(trig.key)
        if value not in (None, ""):
            return f"{trig.key}-{value}"
    if trig.key_fallback == "day":
        return f"day-{at.astimezone(UTC).date().isoformat()}"
    return "customer"


def _resolve_customers(conn: psycopg.Connection, rows: list[dict]) -> None:
    """customer_id from user_id, or through raw.identity_links for anonymous events."""
    anon = {r["anonymous_id"] for r in rows if not _int(r["user_id"]) and r["anonymous_id"]}
    links: dict[str, int] = {}
    if anon:
        for a, u in conn.execute(
            "select distinct on (anonymous_id) anonymous_id, user_id from raw.identity_links"
            " where anonymous_id = any(%s) order by anonymous_id, linked_at desc",
            (list(anon),),
        ):
            if _int(u) is not None:
                links[a] = _int(u)
    for r in rows:
        r["customer_id"] = (
            _int(r["user_id"]) if _int(r["user_id"]) is not None else links.get(r["anonymous_id"])
        )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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


# Relevant track events after the cursor, and those in the OVERLAP before it that the
# previous ingest may not have seen: a collector transaction can commit after a
# later one and land behind the cursor. Rows whose transaction is older than the
# previous ingest's snapshot xmin had committed before it read, so they were read
# then and are skipped (a burst is not ingested twice). xmin is a 32-bit xid: its
# 64-bit value is the newest xid's minus their distance modulo 2^32.
_READ_EVENTS = """
    with s as (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as newest)
    select message_id, event, user_id, anonymous_id, properties, traits,
           context -> 'traits' as context_traits, occurred_at, received_at
    from raw.events, s
    where (received_at, message_id) > (%(after_at)s, %(after_id)s) and type = 'track' and event = any(%(names)s)
      and (received_at > %(cursor)s or %(seen_xmin)s::bigint is null
           or s.newest - ((s.newest - xmin::text::bigint) & 4294967295) >= %(seen_xmin)s::bigint)
    order by received_at, message_id limit %(limit)s
"""


def _ingest_events(
    conn: psycopg.Connection, campaigns: dict[str, Campaign], now: datetime, stats: IngestStats
) -> None:
    event_campaigns = _event_campaigns(campaigns)
    names = set(SUPPRESSION_EVENTS)
    for c in event_campaigns:
        t: EventTrigger = c.trigger  # type: ignore[assignment]
        names |= set(t.events) | set(t.cancel_on) | set(t.update_on)
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
        _apply_events(conn, event_campaigns, rows, stats)
        last = rows[-1]
        after = (last["received_at"], last["message_id"])
        max_seen = max(max_seen, last["received_at"])
        if len(rows) < PAGE:
            break
    _set_cursor(conn, "raw.events", max_seen)
    conn.execute(
        "update ops.campaign_cursors set snapshot_xmin = %s where name = 'raw.events'", (snapshot_xmin,)
    )


def _apply_events(
    conn: psycopg.Connection, event_campaigns: list[Campaign], rows: list[dict], stats: IngestStats
) -> None:
    _resolve_customers(conn, rows)
    suppressions.forget_erased(conn, rows)
    suppress = [r for r in rows if r["event"] in SUPPRESSION_EVENTS]
    if suppress:
        stats.suppressions += _suppress_from_events(conn, suppress)
    schedules: list[tuple[Campaign, str, dict, str, int, datetime]] = []
    cancels: list[tuple[Campaign, int, datetime, str]] = []
    for r in rows:
        cid = r["customer_id"]
        if cid is None:
            continue
        props = r["properties"] or {}
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
            if r["event"] in t.cancel_on:
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
    rows = conn.execute(
        """select email, event_type, bounce_type, _loaded_at from raw.esp_email_events
           where _loaded_at > %s and event_type = any(%s) order by _loaded_at""",
        (position - OVERLAP, list(ESP_SUPPRESSION_TYPES)),
    ).fetchall()
    newest = position
    for email, event_type, bounce_type, loaded_at in rows:
        newest = max(newest, loaded_at)
        if event_type == "bounce" and (bounce_type or "").lower() in SOFT_BOUNCES:
            continue
        h = suppressions.hash_email(email)
        stats.suppressions += suppressions.add(conn, h, ESP_SUPPRESSION_TYPES[event_type], "esp_export")
        if event_type == "unsubscribe":
            suppressions.revoke_consent(conn, h, None, "esp_export")
    if rows:
        _set_cursor(conn, "raw.esp_email_events", newest)


def _first(cols: list[str], *names: str) -> str | None:
    return next((n for n in names if n in cols), None)


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
    rows: list[tuple] = []
    from_mart = [c for c in batch if has_mart and c.trigger.candidate_type]  # type: ignore[union-attr]
    if from_mart:
        rows += _mart_candidates(conn, from_mart, now, stats)
    for c in batch:
        if c in from_mart:
            continue
        if not has_ml or c.trigger.fallback is None:  # type: ignore[union-attr]
            stats.notes.append(
                f"{c.name}: no marts.trigger_candidates and no ml.customer_segments: no triggers"
            )
            continue
        rows += _ml_candidates(conn, c, now, stats)
    if not rows:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """insert into ops.campaign_triggers (trigger_id, campaign, customer_id, trigger_key, priority,
                   first_activity_at, last_activity_at, original_due_at, due_at, expires_at, payload)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               on conflict (campaign, customer_id, trigger_key) do nothing""",
            [
                (
                    f"{c.name}:{cid}:{key}",
                    c.name,
                    cid,
                    key,
                    c.priority,
                    due,
                    due,
                    due,
                    due,
                    due + c.expiry,
                    Jsonb(p),
                )
                for c, cid, key, due, p in rows
            ],
        )
    stats.candidates += len(rows)


def _mart_candidates(
    conn: psycopg.Connection, batch: list[Campaign], now: datetime, stats: IngestStats
) -> list[tuple]:
    cols = columns(conn, "marts", "trigger_candidates")
    id_col = _first(cols, "trigger_id", "candidate_id", "trigger_candidate_id", "id")
    type_col = _first(cols, "trigger_type", "candidate_type", "campaign", "type")
    due_col = _first(cols, "due_at", "due_time", "trigger_at", "eligible_at")
    payload_col = _first(cols, "payload")
    if not (id_col and type_col and "customer_id" in cols):
        stats.notes.append(f"marts.trigger_candidates lacks id/type/customer_id columns ({cols}); skipped")
        return []
    types = {c.trigger.candidate_type: c for c in batch}  # type: ignore[union-attr]
    due_sql = f"{due_col}::timestamptz" if due_col else "now()"
    payload_sql = f"to_jsonb({payload_col})" if payload_col else "'{}'::jsonb"
    rows = []
    for cand_id, ctype, cid, due, payload in conn.execute(
        f"""select {id_col}::text, {type_col}::text, customer_id::bigint, {due_sql}, {payload_sql}
            from marts.trigger_candidates where {type_col}::text = any(%s)""",
        (list(types),),
    ):
        c = types[ctype]
        due = due or now
        if due + c.expiry < now:  # stale: the situation is older than the campaign's expiry
            continue
        if not isinstance(payload, dict):
            payload = {"value": payload}
        rows.append((c, cid, f"candidate-{cand_id}", due, payload))
    return rows


def _ml_candidates(conn: psycopg.Connection, c: Campaign, now: datetime, stats: IngestStats) -> list[tuple]:
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
        (c, cid, f"{fb.period}-{period}", now, {"source": "ml.customer_segments"})
        for (cid,) in conn.execute(query, params)
    ]


def ingest(
    conn: psycopg.Connection,
    campaigns: dict[str, Campaign],
    *,
    now: datetime | None = None,
    candidates: bool | None = None,
) -> IngestStats:
    """Bring ops.campaign_triggers and ops.suppressions up to date with the raw tables.

    `candidates=None` syncs batch candidates at most once a minute."""
    now = now or datetime.now(UTC)
    stats = IngestStats()
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (INGEST_LOCK,))
        _ingest_events(conn, campaigns, now, stats)
        _ingest_esp_events(conn, now, stats)
        last_sync = _cursor(conn, "candidates.synced", datetime(1970, 1, 1, tzinfo=UTC))
        if candidates or (candidates is None and now - last_sync >= CANDIDATE_SYNC_EVERY):
            sync_candidates(conn, campaigns, now, stats)
            _set_cursor(conn, "candidates.synced", now)
    for note in stats.notes:
        log.info(note)
    return stats
