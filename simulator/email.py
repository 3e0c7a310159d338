"""The email provider's event export: newsletters and sale campaigns to consenting customers.

Campaigns are few (tens a year), recipients many, so the loop runs over campaigns and
each campaign is vectorised over its recipients. Suppression (hard bounces,
unsubscribes, complaints) carries from one campaign to the next, as at a real ESP.

Events reach the export after they happen (`received_at`): most within minutes, but
an asynchronous bounce (a delivery status notification sent back after the receiving
server first accepted the message) hours or days later, so its `occurred_at` lies in
a window an hourly extraction has already read. The export holds what has arrived by
the end of the simulated window.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from simulator import strings as s
from simulator.behaviour import (
    BARGAIN,
    CHURNED_ENGAGEMENT,
    CHURNED_UNSUBSCRIBE_RATE,
    PARAMS,
    Calendar,
    black_friday,
)
from simulator.catalog import Catalog
from simulator.customers import Customers
from simulator.load import Table

EVENT_TYPES = ("send", "delivery", "open", "click", "bounce", "complaint", "unsubscribe")
SEND, DELIVERY, OPEN, CLICK, BOUNCE, COMPLAINT, UNSUBSCRIBE = range(7)
SHOP_URL = "https://shop.example-shop.test"
SOFT_BOUNCE_RATE = 0.007
COMPLAINT_RATE = 0.0004
PROMO_BARGAIN_LIFT = 1.4
EXPORT_DELAY_S = (1, 300)  # from an event to its row in the export
LATE_BOUNCE_SHARE = 0.3  # bounces reported asynchronously, hours later
LATE_BOUNCE_DELAY_S = (3600, 3 * 86400)


@dataclass(frozen=True)
class Campaign:
    name: str
    send_at: int  # epoch seconds
    promo: bool


@dataclass(frozen=True)
class Clicks:
    """Email clicks, which bring the customer to the site (the web stage makes sessions of them)."""

    customer: np.ndarray
    at: np.ndarray  # epoch seconds
    campaign: np.ndarray
    product: np.ndarray
    names: tuple[str, ...]


def campaigns(cal: Calendar) -> list[Campaign]:
    """A monthly newsletter (first Tuesday) and the seasonal sale announcements."""
    start, end = cal.start_epoch, cal.end_epoch
    out: list[Campaign] = []

    def at(day: dt.date, hour: int) -> int:
        return int(dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC).timestamp())

    first = cal.start.date().replace(day=1)
    last = (cal.start + dt.timedelta(days=cal.days)).date()
    month = first
    while month <= last:
        tuesday = month + dt.timedelta(days=(1 - month.weekday()) % 7)
        out.append(Campaign(f"newsletter-{month:%Y-%m}", at(tuesday, 15), False))
        month = (month + dt.timedelta(days=32)).replace(day=1)
    for year in range(first.year, last.year + 1):
        bf = black_friday(year)
        out += [
            Campaign(f"spring-sale-{year}", at(dt.date(year, 3, 20), 10), True),
            Campaign(f"summer-sale-{year}", at(dt.date(year, 7, 1), 10), True),
            Campaign(f"black-friday-{year}", at(bf, 8), True),
            Campaign(f"cyber-monday-{year}", at(bf + dt.timedelta(days=3), 8), True),
            Campaign(f"gift-guide-{year}", at(dt.date(year, 12, 3), 15), True),
            Campaign(f"year-end-sale-{year}", at(dt.date(year, 12, 26), 10), True),
        ]
    out = [c for c in out if start <= c.send_at < end]
    return sorted(out, key=lambda c: (c.send_at, c.name))


def build(
    rng: np.random.Generator, c: Customers, catalog: Catalog, cal: Calendar
) -> tuple[Table, Clicks, np.ndarray]:
    """The export, the clicks, and each customer's unsubscribe time (-1 if none)."""
    end = cal.end_epoch
    plan = campaigns(cal)
    suppressed = np.zeros(c.size, dtype=bool)
    unsubscribed_at = np.full(c.size, -1, dtype=np.int64)
    ev_type, ev_customer, ev_campaign, ev_send, ev_time, ev_extra = [], [], [], [], [], []
    sends = 0

    def emit(kind: int, who: np.ndarray, k: int, send_ids: np.ndarray, when: np.ndarray, extra=None) -> None:
        ev_type.append(np.full(len(who), kind, dtype=np.int8))
        ev_customer.append(who)
        ev_campaign.append(np.full(len(who), k, dtype=np.int32))
        ev_send.append(send_ids)
        ev_time.append(when)
        ev_extra.append(np.full(len(who), -1, dtype=np.int64) if extra is None else extra)

    for k, camp in enumerate(plan):
        who = np.flatnonzero(c.consents & (c.consent_at <= camp.send_at) & ~suppressed)
        if not len(who):
            continue
        m = len(who)
        send_ids = sends + np.arange(m)
        sends += m
        sent = camp.send_at + rng.integers(0, 3600, m)
        emit(SEND, who, k, send_ids, sent)
        hard = c.invalid_email[who]
        soft = ~hard & (rng.random(m) < SOFT_BOUNCE_RATE)
        bounced = hard | soft
        emit(
            BOUNCE,
            who[bounced],
            k,
            send_ids[bounced],
            sent[bounced] + rng.integers(1, 60, bounced.sum()),
            hard[bounced].astype(np.int64),
        )
        suppressed[who[hard]] = True

        ok = ~bounced
        who, send_ids = who[ok], send_ids[ok]
        delivered = sent[ok] + rng.integers(1, 120, len(who))
        emit(DELIVERY, who, k, send_ids, delivered)
        kind = c.behaviour[who]
        churned = (c.churned_at[who] >= 0) & (c.churned_at[who] <= camp.send_at)
        lift = np.where(churned, CHURNED_ENGAGEMENT, 1.0) * c.engagement[who]
        if camp.promo:
            lift = lift * np.where(kind == BARGAIN, PROMO_BARGAIN_LIFT, 1.0)
        opened = rng.random(len(who)) < np.minimum(PARAMS.open_rate[kind] * lift, 0.95)
        open_at = delivered + rng.lognormal(np.log(2 * 3600), 1.3, len(who)).astype(np.int64)
        emit(OPEN, who[opened], k, send_ids[opened], open_at[opened])
        again = opened & (rng.random(len(who)) < 0.25)
        emit(
            OPEN,
            who[again],
            k,
            send_ids[again],
            open_at[again] + rng.lognormal(np.log(6 * 3600), 1.0, again.sum()).astype(np.int64),
        )
        clicked = opened & (rng.random(len(who)) < np.minimum(PARAMS.click_rate[kind] * lift, 0.9))
        click_at = open_at + rng.integers(5, 900, len(who))
        # The email shows products from the customer's favourite category.
        product = catalog.pick_products(rng, c.favourite[who], c.price_level[who])
        emit(CLICK, who[clicked], k, send_ids[clicked], click_at[clicked], product[clicked])
        complained = rng.random(len(who)) < COMPLAINT_RATE
        emit(
            COMPLAINT,
            who[complained],
            k,
            send_ids[complained],
            delivered[complained] + rng.integers(600, 2 * 86400, complained.sum()),
        )
        unsub_rate = np.where(churned, CHURNED_UNSUBSCRIBE_RATE, PARAMS.unsubscribe_rate[kind])
        unsub = ~complained & (rng.random(len(who)) < unsub_rate)
        unsub_at = np.where(
            opened,
            open_at + rng.integers(10, 300, len(who)),
            delivered + rng.integers(3600, 3 * 86400, len(who)),
        )
        emit(UNSUBSCRIBE, who[unsub], k, send_ids[unsub], unsub_at[unsub])
        keep = unsub & (unsub_at < end)
        unsubscribed_at[who[keep]] = unsub_at[keep]
        suppressed[who[unsub | complained]] = True

    types = np.concatenate(ev_type) if ev_type else np.zeros(0, dtype=np.int8)
    customer = np.concatenate(ev_customer) if ev_customer else np.zeros(0, dtype=np.int64)
    campaign = np.concatenate(ev_campaign) if ev_campaign else np.zeros(0, dtype=np.int32)
    send = np.concatenate(ev_send) if ev_send else np.zeros(0, dtype=np.int64)
    when = np.concatenate(ev_time) if ev_time else np.zeros(0, dtype=np.int64)
    extra = np.concatenate(ev_extra) if ev_extra else np.zeros(0, dtype=np.int64)
    keep = when < end
    types, customer, campaign, send, when, extra = (
        a[keep] for a in (types, customer, campaign, send, when, extra)
    )
    order = np.lexsort((types, send, when))
    types, customer, campaign, send, when, extra = (
        a[order] for a in (types, customer, campaign, send, when, extra)
    )

    message_salt = int(rng.integers(0, 1 << 52))
    names = tuple(camp.name for camp in plan) or ("none",)
    # every click opened a web session, whether or not its row has reached the export
    clicked = types == CLICK
    clicks = Clicks(
        customer=customer[clicked],
        at=when[clicked],
        campaign=campaign[clicked],
        product=extra[clicked],
        names=names,
    )
    received = when + _export_delay(rng, types)
    arrived = received < end
    types, customer, campaign, send, when, extra, received = (
        a[arrived] for a in (types, customer, campaign, send, when, extra, received)
    )
    campaign_name = s.pick(names, campaign)
    is_click = types == CLICK
    is_bounce = types == BOUNCE
    url = s.concat(
        SHOP_URL + "/p/",
        catalog.sku.take(np.where(is_click, extra, 0)),
        "?utm_source=email&utm_medium=email&utm_campaign=",
        campaign_name,
    )
    table = Table(
        "esp.email_events",
        {
            "event_id": s.ordered_uuids(rng, len(when)),
            "message_id": s.concat("msg-", s.fixed_width(s.hex_digits(s.mix52(send, salt=message_salt), 13))),
            "campaign": campaign_name,
            "email": c.email.take(customer),
            "event_type": s.pick(EVENT_TYPES, types),
            "url": s.with_nulls(url, ~is_click),
            "bounce_type": s.with_nulls(s.pick(["soft", "hard"], np.where(is_bounce, extra, 0)), ~is_bounce),
            "occurred_at": when.astype("datetime64[s]"),
            "received_at": received.astype("datetime64[s]"),
        },
        binary=True,
    )
    return table, clicks, unsubscribed_at


def _export_delay(rng: np.random.Generator, types: np.ndarray) -> np.ndarray:
    """Seconds from each event to its arrival in the export."""
    delay = rng.integers(*EXPORT_DELAY_S, len(types))
    late = (types == BOUNCE) & (rng.random(len(types)) < LATE_BOUNCE_SHARE)
    return np.where(late, rng.integers(*LATE_BOUNCE_DELAY_S, len(types)), delay)
