"""Who gets which email: one decision, with its reason, for every due trigger.

Checks run in this order, the first that applies decides:
expired -> no_profile -> unsubscribed / suppressed -> no_consent ->
purchased_since / cancelled -> audience_mismatch -> nothing_to_show ->
quiet_hours (rescheduled to the end of the customer's quiet hours) ->
frequency_capped (caps hold across all campaigns) -> held_out -> sent.

Pure functions over data fetched in bulk (see campaigns.batch), so they are
unit-tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaigns import assignment
from campaigns.schema import Campaign, EventTrigger, Policy
from campaigns.suppressions import hash_email

# outcomes that say the customer may not be mailed at all (not: not now, not this)
NOT_MAILABLE = frozenset({"no_profile", "unsubscribed", "suppressed", "no_consent"})


@dataclass
class Decision:
    outcome: str
    send: bool = False
    variant: str | None = None
    bucket: float | None = None
    reschedule_to: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class CustomerFacts:
    """What the checks need about one customer, fetched in bulk per batch."""

    profile: dict[str, Any] | None
    suppression: str | None = None  # reason
    consent: bool | None = None  # ops.consent override
    recent_sends: list[tuple[datetime, str]] = field(default_factory=list)  # (time, trigger_id)
    last_event_at: dict[str, datetime] = field(default_factory=dict)  # event name -> latest occurred_at
    last_order_at: datetime | None = None
    segment_labels: set[str] = field(default_factory=set)
    has_segment_data: bool = False
    # vip_score / churn_score and the model versions behind them: scored at
    # send time by the champions (source "realtime"), else the batch scores
    # of ml.customer_segments (source "batch"); None without either.
    score: dict[str, Any] | None = None


def zone(name: Any) -> ZoneInfo:
    """The customer's zone, UTC when it is not one: "America" is a folder of the tzdata
    package (IsADirectoryError), identify traits may hold any JSON."""
    return _zone(name) if isinstance(name, str) else ZoneInfo("UTC")


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return ZoneInfo("UTC")


def _hm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


def quiet_until(at: datetime, tz_name: str | None, start: str, end: str) -> datetime | None:
    """When quiet hours end, if `at` falls inside them in the customer's zone; else None."""
    local = at.astimezone(zone(tz_name))
    s, e, t = _hm(start), _hm(end), local.time()
    inside = (s <= t < e) if s < e else (t >= s or t < e)
    if not inside:
        return None
    candidate = local.replace(hour=e.hour, minute=e.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate = (local + timedelta(days=1)).replace(hour=e.hour, minute=e.minute, second=0, microsecond=0)
    return candidate.astimezone(UTC)


def cap_reached(
    policy: Policy, sends: list[tuple[datetime, str]], now: datetime, own_trigger: str
) -> str | None:
    times = [at for at, trig in sends if trig != own_trigger]
    for cap in policy.frequency_caps:
        if sum(1 for at in times if at > now - cap.per) >= cap.max:
            return f"{cap.max} per {cap.per}"
    return None


def live_content(campaign: Campaign, payload: dict[str, Any]) -> bool:
    trig = campaign.trigger
    if not isinstance(trig, EventTrigger):
        return True
    if "items" in payload:
        return bool(payload["items"])
    if "viewed" in payload:
        return bool(payload["viewed"])
    return True


def decide(
    trigger: dict[str, Any],
    campaign: Campaign,
    policy: Policy,
    facts: CustomerFacts,
    now: datetime,
    payload: dict[str, Any],
) -> Decision:
    """The decision for one due trigger (`payload` as templates see it)."""
    if trigger.get("expires_at") and now > trigger["expires_at"]:
        return Decision("expired", detail={"expired_at": trigger["expires_at"].isoformat()})
    profile = facts.profile
    if not profile or not profile.get("email"):
        return Decision("no_profile")
    if facts.suppression:
        return refused(facts.suppression)
    consent = facts.consent if facts.consent is not None else bool(profile.get("accepts_email_marketing"))
    if not consent:
        return refused("no_consent")
    trig = campaign.trigger
    if isinstance(trig, EventTrigger):
        last_activity = trigger["last_activity_at"]
        if "Order Completed" in trig.cancel_on:
            ordered = [t for t in (facts.last_order_at, facts.last_event_at.get("Order Completed")) if t]
            if ordered and max(ordered) > last_activity:
                return Decision("purchased_since", detail={"purchased_at": max(ordered).isoformat()})
        later = [
            facts.last_event_at[e]
            for e in trig.cancel_on
            if facts.last_event_at.get(e, last_activity) > last_activity
        ]
        if later:
            return Decision("cancelled", detail={"cancel_event_at": max(later).isoformat()})
    audience = campaign.audience
    if audience.segments and not (facts.segment_labels & set(audience.segments)):
        detail = (
            {"needs": audience.segments}
            if facts.has_segment_data
            else {"needs": audience.segments, "no_segment_data": True}
        )
        return Decision("audience_mismatch", detail=detail)
    if facts.segment_labels & set(audience.exclude_segments):
        return Decision(
            "audience_mismatch",
            detail={"excluded": sorted(facts.segment_labels & set(audience.exclude_segments))},
        )
    if not live_content(campaign, payload):
        return Decision("nothing_to_show")
    if campaign.respect_quiet_hours and policy.quiet_hours:
        until = quiet_until(now, profile.get("timezone"), policy.quiet_hours.start, policy.quiet_hours.end)
        if until is not None:
            if trigger.get("expires_at") and until > trigger["expires_at"]:
                return Decision("expired", detail={"quiet_hours_until": until.isoformat()})
            return Decision("quiet_hours", reschedule_to=until, detail={"rescheduled_to": until.isoformat()})
    cap = cap_reached(policy, facts.recent_sends, now, trigger["trigger_id"])
    if cap:
        return Decision("frequency_capped", detail={"cap": cap})
    variant, bucket = assignment.assign(campaign, trigger["customer_id"])
    if variant == assignment.HOLDOUT:
        return Decision("held_out", variant=variant, bucket=bucket)
    return Decision("sent", send=True, variant=variant, bucket=bucket)


def refused(reason: str) -> Decision:
    """The decision not to mail: `reason` is a suppression's ('unsubscribe', 'hard_bounce',
    ...) or 'no_consent'. Also for one recorded after the decision, which stops the send
    (campaigns.ledger.mark_group)."""
    if reason == "unsubscribe":
        return Decision("unsubscribed")
    if reason == "no_consent":
        return Decision("no_consent")
    return Decision("suppressed", detail={"reason": reason})


def email_hash_of(profile: dict[str, Any] | None) -> str | None:
    if not profile or not profile.get("email"):
        return None
    return hash_email(profile["email"])
