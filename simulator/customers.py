"""Customers: who they are (shop.customers) and who they secretly are (customer_truth)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simulator import strings as s
from simulator.behaviour import (
    CATEGORIES,
    CATEGORY_POPULARITY,
    CHURNING,
    LOCATION_SHARES,
    LOCATIONS,
    ONE_TIME,
    PARAMS,
    TYPE_SHARES,
    TYPES,
    Calendar,
    sample_times,
)
from simulator.catalog import PRICE_PICK_SHARE, Catalog
from simulator.load import Table

FIRST_NAMES = (
    "Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Kate", "Liam",
    "Maria", "Noah", "Olivia", "Pablo", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Yuki",
    "Zoe", "Aiden", "Chloe", "Diego", "Elena", "Finn", "Hana", "Isaac", "Julia", "Kenji", "Lena", "Mateo",
    "Nora", "Oscar", "Priya", "Ravi", "Sofia", "Theo", "Amelie", "Lucas", "Mia", "Leon", "Sara", "Omar",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Brown", "Garcia", "Miller", "Davis", "Martin", "Muller", "Schmidt", "Schneider",
    "Fischer", "Weber", "Dubois", "Bernard", "Moreau", "Jansen", "de Vries", "Bakker", "Lopez", "Sanchez",
    "Tanaka", "Suzuki", "Sato", "Wilson", "Taylor", "Anderson", "Thomas", "Moore", "Jackson", "White",
    "Harris", "Clark", "Lewis", "Walker", "Young", "King", "Wright", "Scott", "Green", "Baker",
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")


@dataclass(frozen=True)
class Customers:
    """Per customer (index i is customer_id i + 1, ids in signup order)."""

    behaviour: np.ndarray
    favourite: np.ndarray
    signup: np.ndarray  # epoch seconds
    active_from: np.ndarray  # max(window start, signup)
    buying_until: np.ndarray  # churned_at for churners, else window end
    churned_at: np.ndarray  # -1 when not churning
    utc_offset: np.ndarray  # hours
    location: np.ndarray
    price_level: np.ndarray  # 0..1: where in a category's price range they buy
    order_rate: np.ndarray  # orders per year while active
    engagement: np.ndarray  # individual multiplier on email open/click rates
    consents: np.ndarray
    consent_at: np.ndarray  # -1 when no consent
    invalid_email: np.ndarray  # hard-bounces
    email: pa.Array
    first_name: pa.Array
    last_name: pa.Array
    has_name: np.ndarray

    @property
    def size(self) -> int:
        return len(self.behaviour)


def build(rng: np.random.Generator, n: int, cal: Calendar) -> Customers:
    start, end = cal.start_epoch, cal.end_epoch
    behaviour = rng.choice(len(TYPES), size=n, p=TYPE_SHARES)
    favourite = rng.choice(len(CATEGORIES), size=n, p=CATEGORY_POPULARITY)
    location = rng.choice(len(LOCATIONS), size=n, p=LOCATION_SHARES)
    utc_offset = np.array([loc[2] for loc in LOCATIONS])[location]

    # Over half signed up before the window; the rest sign up inside it, more in busy weeks.
    before = rng.random(n) < 0.55
    signup = np.where(
        before,
        start - rng.integers(3600, 3 * 365 * 86400, n),
        sample_times(rng, cal.ordinary, cal, np.full(n, start), np.full(n, end - 3 * 86400), utc_offset),
    )
    # customer_id follows signup order, as an autoincrement key would.
    order = np.argsort(signup, kind="stable")
    behaviour, favourite, location, utc_offset, signup = (
        behaviour[order],
        favourite[order],
        location[order],
        utc_offset[order],
        signup[order],
    )
    active_from = np.maximum(signup, start)

    churning = behaviour == CHURNING
    span = end - active_from
    churned_at = np.where(churning, active_from + (span * rng.uniform(0.25, 0.8, n)).astype(np.int64), -1)
    buying_until = np.where(churning, churned_at, end)

    a, b = PARAMS.price_pref[behaviour, 0], PARAMS.price_pref[behaviour, 1]
    price_level = rng.beta(a, b)
    order_rate = PARAMS.orders_per_year[behaviour] * rng.gamma(4.0, 0.25, n)
    order_rate = np.where(behaviour == ONE_TIME, 1.0, order_rate)
    engagement = rng.gamma(5.0, 0.2, n)

    consents = rng.random(n) < 0.70
    late_consent = rng.random(n) < 0.15
    consent_at = np.where(late_consent, signup + rng.exponential(60 * 86400, n).astype(np.int64), signup)
    consents &= consent_at < end
    consent_at = np.where(consents, consent_at, -1)
    invalid_email = rng.random(n) < 0.012

    has_name = rng.random(n) >= 0.08
    first = s.pick(FIRST_NAMES, rng.integers(0, len(FIRST_NAMES), n))
    last = s.pick(LAST_NAMES, rng.integers(0, len(LAST_NAMES), n))
    cid = s.ints(np.arange(1, n + 1))
    domain = s.pick(EMAIL_DOMAINS, rng.integers(0, len(EMAIL_DOMAINS), n))
    local_named = pc.utf8_lower(pc.replace_substring(s.concat(first, ".", last, "."), " ", ""))
    local = pc.if_else(pa.array(has_name), local_named, "customer.")
    email = s.concat(local, cid, "@", domain)
    return Customers(
        behaviour=behaviour,
        favourite=favourite,
        signup=signup,
        active_from=active_from,
        buying_until=buying_until,
        churned_at=churned_at,
        utc_offset=utc_offset,
        location=location,
        price_level=price_level,
        order_rate=order_rate,
        engagement=engagement,
        consents=consents,
        consent_at=consent_at,
        invalid_email=invalid_email,
        email=email,
        first_name=s.with_nulls(first, ~has_name),
        last_name=s.with_nulls(last, ~has_name & (rng.random(n) < 0.8)),
        has_name=has_name,
    )


def expected_order_value_cents(c: Customers, catalog: Catalog) -> np.ndarray:
    """What an average order of each customer is worth under the generating model."""
    n_cat = len(CATEGORIES)
    # Mean price per category at each customer's price level, and popularity-weighted.
    level_price = np.empty((c.size, n_cat))
    popular_price = np.empty(n_cat)
    for k in range(n_cat):
        a, b = catalog.category_start[k], catalog.category_start[k + 1]
        prices = catalog.price_cents[catalog.by_category_price[a:b]]
        idx = np.minimum((c.price_level * (b - a)).astype(np.int64), b - a - 1)
        level_price[:, k] = prices[idx]
        weights = np.diff(np.concatenate([[k], catalog.popularity_cum[a:b]]))
        popular_price[k] = (prices * weights).sum()
    per_category = PRICE_PICK_SHARE * level_price + (1 - PRICE_PICK_SHARE) * popular_price[None, :]
    share = PARAMS.favourite_share[c.behaviour]
    fav_price = per_category[np.arange(c.size), c.favourite]
    other_price = per_category @ CATEGORY_POPULARITY
    unit = share * fav_price + (1 - share) * other_price
    items = 1 + PARAMS.extra_items[c.behaviour]
    quantity = 1.25  # 80% one, 15% two, 5% three
    discount = PARAMS.discount_use[c.behaviour] * 0.13
    return unit * items * quantity * (1 - discount)


def tables(c: Customers, catalog: Catalog, unsubscribed_at: np.ndarray, end: int) -> list[Table]:
    """shop.customers (with unsubscribes synced back from the ESP) and customer_truth."""
    n = c.size
    cid = s.ints(np.arange(1, n + 1))
    unsubscribed = unsubscribed_at >= 0
    accepts = c.consents & ~unsubscribed
    updated = np.maximum.reduce([c.signup, c.consent_at, unsubscribed_at])
    customers = Table(
        "shop.customers",
        {
            "customer_id": cid,
            "email": c.email,
            "first_name": c.first_name,
            "last_name": c.last_name,
            "accepts_email_marketing": s.pick(["f", "t"], accepts.astype(np.int32)),
            "email_consent_at": s.with_nulls(s.timestamps(np.maximum(c.consent_at, 0)), ~c.consents),
            "timezone": s.pick([loc[1] for loc in LOCATIONS], c.location),
            "country": s.pick([loc[0] for loc in LOCATIONS], c.location),
            "signup_at": s.timestamps(c.signup),
            "created_at": s.timestamps(c.signup),
            "updated_at": s.timestamps(updated),
        },
    )
    churned = c.churned_at >= 0
    value = expected_order_value_cents(c, catalog) / 100
    truth = Table(
        "simulator.customer_truth",
        {
            "customer_id": cid,
            "behaviour_type": s.pick(TYPES, c.behaviour),
            "favourite_category": s.pick(CATEGORIES, c.favourite),
            "churned_at": s.with_nulls(s.timestamps(np.maximum(c.churned_at, 0)), ~churned),
            "expected_orders_per_year": pc.cast(pa.array(np.round(c.order_rate, 4)), pa.string()),
            "expected_order_value": pc.cast(pa.array(np.round(value, 2)), pa.string()),
        },
    )
    return [customers, truth]
