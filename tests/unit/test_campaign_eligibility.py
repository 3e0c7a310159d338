"""Eligibility decisions, as pure functions: one reason for every candidate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from campaigns import assignment
from campaigns.eligibility import CustomerFacts, decide, quiet_until
from campaigns.schema import load_campaigns, load_policy

CAMPAIGNS = load_campaigns()
POLICY = load_policy()
NOW = datetime(2026, 11, 29, 14, 0, tzinfo=UTC)
CART = CAMPAIGNS["cart_abandonment"]
CID = next(i for i in range(100) if assignment.assign(CART, i)[0] != "holdout")


def trigger(**kw):
    t = {
        "trigger_id": f"cart_abandonment:{CID}:cart-1",
        "customer_id": CID,
        "last_activity_at": NOW - timedelta(minutes=31),
        "expires_at": NOW + timedelta(hours=23),
    }
    t.update(kw)
    return t


def facts(**kw):
    f = dict(
        profile={"email": "a@example.test", "accepts_email_marketing": True, "timezone": "Europe/London"}
    )
    f.update(kw)
    return CustomerFacts(**f)


PAYLOAD = {"items": [{"product_id": 1}]}


def outcome(t=None, f=None, payload=PAYLOAD, campaign=CART, now=NOW):
    return decide(t or trigger(), campaign, POLICY, f or facts(), now, payload)


def test_sent():
    d = outcome()
    assert d.send and d.outcome == "sent" and d.variant in {"reminder", "urgency"}


def test_each_reason():
    assert outcome(trigger(expires_at=NOW - timedelta(seconds=1))).outcome == "expired"
    assert outcome(f=facts(profile=None)).outcome == "no_profile"
    assert outcome(f=facts(suppression="unsubscribe")).outcome == "unsubscribed"
    assert outcome(f=facts(suppression="hard_bounce")).outcome == "suppressed"
    no_consent = facts(profile={"email": "a@x.test", "accepts_email_marketing": False, "timezone": "UTC"})
    assert outcome(f=no_consent).outcome == "no_consent"
    assert outcome(f=facts(consent=False)).outcome == "no_consent"  # ops.consent overrides the shop's flag
    assert outcome(f=facts(last_order_at=NOW - timedelta(minutes=5))).outcome == "purchased_since"
    assert (
        outcome(f=facts(last_order_at=NOW - timedelta(hours=5))).outcome == "sent"
    )  # bought before the cart
    assert outcome(payload={"items": []}).outcome == "nothing_to_show"
    capped = facts(recent_sends=[(NOW - timedelta(hours=3), "browse_abandonment:1:day")])
    assert outcome(f=capped).outcome == "frequency_capped"
    own = facts(recent_sends=[(NOW - timedelta(hours=3), trigger()["trigger_id"])])
    assert outcome(f=own).outcome == "sent"  # an in-doubt resend does not cap itself
    week = facts(recent_sends=[(NOW - timedelta(days=d), f"x{d}") for d in (2, 3, 4)])
    assert outcome(f=week).outcome == "frequency_capped"
    held = next(i for i in range(1000) if assignment.assign(CART, i)[0] == "holdout")
    assert outcome(trigger(customer_id=held)).outcome == "held_out"


def test_quiet_hours_reschedule_in_local_time():
    tokyo = facts(profile={"email": "a@x.test", "accepts_email_marketing": True, "timezone": "Asia/Tokyo"})
    d = outcome(f=tokyo)  # 14:00 UTC is 23:00 in Tokyo
    assert d.outcome == "quiet_hours" and not d.send
    assert d.reschedule_to == datetime(2026, 11, 29, 23, 0, tzinfo=UTC)  # 08:00 Tokyo
    assert quiet_until(NOW, "America/New_York", "21:00", "08:00") is None  # 09:00 there
    assert quiet_until(NOW, "Not/AZone", "21:00", "08:00") is None  # unknown zone: UTC, 14:00


def test_audience_segments():
    vip = CAMPAIGNS["vip_offer"]
    t = trigger(
        trigger_id="vip_offer:1:m",
        customer_id=next(i for i in range(100) if assignment.assign(vip, i)[0] != "holdout"),
    )
    assert (
        outcome(t, facts(segment_labels={"churned"}), payload={}, campaign=vip).outcome == "audience_mismatch"
    )
    assert outcome(t, facts(segment_labels={"vip"}), payload={}, campaign=vip).outcome == "sent"
