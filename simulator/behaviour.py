"""Latent customer behaviour and the shop's calendar.

Every simulated customer has one hidden behaviour type. The type sets how often they
visit and buy, how much they spend, how much they use discounts, how concentrated
their purchases are on one favourite category and how they react to email, so VIP,
churn and product-affinity models have a real signal to find (the truth is kept in
simulator.customer_truth for evaluation). A calendar with weekly and yearly
seasonality (Q4 peak, Black Friday, Cyber Monday, summer sale) shapes all activity.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

TYPES = ("loyal_high_spender", "regular", "bargain_hunter", "one_time", "churning")
LOYAL, REGULAR, BARGAIN, ONE_TIME, CHURNING = range(5)
TYPE_SHARES = np.array([0.08, 0.37, 0.20, 0.22, 0.13])


@dataclass(frozen=True)
class TypeParams:
    """One value per behaviour type, in TYPES order."""

    orders_per_year: np.ndarray  # while active (churners: before churned_at)
    browse_sessions_per_year: np.ndarray
    favourite_share: np.ndarray  # share of picks from the favourite category
    price_pref: np.ndarray  # Beta(a, b) of where in a category's price range they buy
    extra_items: np.ndarray  # items per order = 1 + Poisson(extra_items)
    discount_use: np.ndarray  # chance an ordinary order uses a code
    sale_use: np.ndarray  # chance an order on a sale day uses the sale code
    sale_sensitivity: np.ndarray  # exponent on sale-day boosts of their activity
    views_per_session: np.ndarray  # 1 + Poisson(.)
    search_rate: np.ndarray
    add_rate: np.ndarray  # chance a browse session adds to cart
    open_rate: np.ndarray
    click_rate: np.ndarray  # given an open
    unsubscribe_rate: np.ndarray  # per delivered email
    refund_rate: np.ndarray


PARAMS = TypeParams(
    orders_per_year=np.array([11.0, 4.0, 3.0, 1.0, 5.0]),
    browse_sessions_per_year=np.array([10.0, 4.0, 7.0, 1.0, 4.0]),
    favourite_share=np.array([0.70, 0.60, 0.45, 0.55, 0.60]),
    price_pref=np.array([[5.0, 2.0], [2.0, 2.0], [1.3, 4.0], [2.0, 2.5], [2.0, 2.2]]),
    extra_items=np.array([1.6, 0.8, 0.9, 0.5, 0.8]),
    discount_use=np.array([0.10, 0.15, 0.70, 0.20, 0.15]),
    sale_use=np.array([0.40, 0.50, 0.95, 0.50, 0.50]),
    sale_sensitivity=np.array([1.0, 1.0, 2.5, 1.0, 1.0]),
    views_per_session=np.array([1.2, 0.8, 1.4, 0.6, 0.8]),
    search_rate=np.array([0.35, 0.30, 0.50, 0.25, 0.30]),
    add_rate=np.array([0.55, 0.45, 0.60, 0.35, 0.45]),
    open_rate=np.array([0.55, 0.28, 0.33, 0.10, 0.30]),
    click_rate=np.array([0.30, 0.15, 0.25, 0.08, 0.14]),
    unsubscribe_rate=np.array([0.0005, 0.002, 0.002, 0.006, 0.003]),
    refund_rate=np.array([0.02, 0.04, 0.08, 0.05, 0.05]),
)
# After churned_at a churner still visits now and then but never buys.
CHURNED_SESSIONS_PER_YEAR = 0.6
CHURNED_ENGAGEMENT = 0.12  # multiplier on open and click rates after churn
CHURNED_UNSUBSCRIBE_RATE = 0.012

CATEGORIES = (
    "apparel",
    "shoes",
    "beauty",
    "home",
    "kitchen",
    "electronics",
    "books",
    "toys",
    "sports",
    "garden",
)
CATEGORY_SKU_PREFIX = ("APP", "SHO", "BEA", "HOM", "KIT", "ELE", "BOO", "TOY", "SPO", "GAR")
CATEGORY_POPULARITY = np.array([0.18, 0.11, 0.10, 0.09, 0.08, 0.12, 0.09, 0.07, 0.09, 0.07])
CATEGORY_MEDIAN_PRICE = np.array([35.0, 75.0, 24.0, 45.0, 38.0, 140.0, 16.0, 28.0, 55.0, 32.0])
CATEGORY_NOUNS = (
    ("T-Shirt", "Hoodie", "Jeans", "Jacket", "Dress", "Sweater", "Shorts", "Scarf"),
    ("Sneakers", "Running Shoes", "Boots", "Sandals", "Loafers", "Trail Shoes"),
    ("Face Cream", "Shampoo", "Lip Balm", "Serum", "Perfume", "Body Lotion"),
    ("Throw Pillow", "Lamp", "Rug", "Candle", "Vase", "Blanket", "Mirror"),
    ("Chef Knife", "Skillet", "Coffee Grinder", "Mixing Bowl", "Teapot", "Cutting Board"),
    ("Headphones", "Smart Speaker", "Tablet", "Smartwatch", "Charger", "Keyboard", "Camera"),
    ("Cookbook", "Novel", "Travel Guide", "Notebook", "Biography", "Comic"),
    ("Puzzle", "Board Game", "Plush Bear", "Building Blocks", "Kite", "Toy Car"),
    ("Yoga Mat", "Dumbbells", "Water Bottle", "Backpack", "Tennis Racket", "Bike Helmet"),
    ("Planter", "Garden Hose", "Seed Kit", "Pruning Shears", "Bird Feeder", "Watering Can"),
)
ADJECTIVES = (
    "Classic", "Organic", "Urban", "Vintage", "Essential", "Premium", "Everyday", "Nordic",
    "Compact", "Deluxe", "Eco", "Pro", "Soft", "Bold", "Modern", "Rustic",
)  # fmt: skip
COLOURS = ("Black", "White", "Navy", "Olive", "Sand", "Red", "Grey", "Teal")

# Where customers live: (country, IANA zone, standard UTC offset in hours, share)
LOCATIONS = (
    ("US", "America/New_York", -5, 0.17),
    ("US", "America/Chicago", -6, 0.10),
    ("US", "America/Denver", -7, 0.04),
    ("US", "America/Los_Angeles", -8, 0.10),
    ("CA", "America/Toronto", -5, 0.06),
    ("GB", "Europe/London", 0, 0.15),
    ("DE", "Europe/Berlin", 1, 0.13),
    ("FR", "Europe/Paris", 1, 0.08),
    ("NL", "Europe/Amsterdam", 1, 0.04),
    ("ES", "Europe/Madrid", 1, 0.04),
    ("AU", "Australia/Sydney", 10, 0.05),
    ("JP", "Asia/Tokyo", 9, 0.04),
)
LOCATION_SHARES = np.array([loc[3] for loc in LOCATIONS]) / sum(loc[3] for loc in LOCATIONS)

# Local hour of day of site visits and purchases: lunch and evening peaks.
HOUR_WEIGHTS = np.array(
    [
        0.5,
        0.3,
        0.2,
        0.15,
        0.15,
        0.3,
        0.7,
        1.3,
        1.8,
        2.0,
        2.1,
        2.3,
        2.8,
        2.6,
        2.3,
        2.2,
        2.3,
        2.6,
        3.1,
        3.7,
        4.0,
        3.6,
        2.5,
        1.2,
    ]
)
HOUR_WEIGHTS = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
# Monday .. Sunday
WEEKDAY_WEIGHTS = np.array([1.00, 0.95, 0.95, 1.00, 1.05, 0.97, 1.15])


@dataclass(frozen=True)
class Sale:
    code: str
    percent: int
    boost: float


def black_friday(year: int) -> dt.date:
    """The day after the fourth Thursday of November."""
    first = dt.date(year, 11, 1)
    first_thursday = first + dt.timedelta(days=(3 - first.weekday()) % 7)
    return first_thursday + dt.timedelta(days=22)


def sale_on(day: dt.date) -> Sale | None:
    """The shop-wide sale running on a day, if any."""
    bf = black_friday(day.year)
    if bf <= day <= bf + dt.timedelta(days=2):
        return Sale("BLACKFRIDAY25", 25, 3.0)
    if day == bf + dt.timedelta(days=3):
        return Sale("CYBER20", 20, 2.6)
    if day.month == 12 and day.day >= 26:
        return Sale("YEAREND15", 15, 1.3)
    if day.month == 7 and day.day <= 7:
        return Sale("SUMMER15", 15, 1.4)
    return None


@dataclass(frozen=True)
class Calendar:
    """Daily activity weights over the simulated window (mean 1 for the ordinary curve)."""

    start: dt.datetime  # UTC midnight of the first day
    days: int
    ordinary: np.ndarray  # weekly x yearly seasonality x sale boosts
    sale_hungry: np.ndarray  # the same with sale boosts raised to a bargain hunter's power
    sale_code: tuple[str | None, ...]  # per day
    sale_percent: np.ndarray  # per day, 0 on ordinary days

    @property
    def start_epoch(self) -> int:
        return int(self.start.timestamp())

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + self.days * 86400


def calendar(end: dt.datetime, days: int) -> Calendar:
    start = end - dt.timedelta(days=days)
    dates = [start.date() + dt.timedelta(days=i) for i in range(days)]
    doy = np.array([d.timetuple().tm_yday for d in dates], dtype=float)
    weekday = np.array([d.weekday() for d in dates])
    # Yearly: peak mid-December, trough mid-June, extra pre-Christmas shopping.
    yearly = 1.0 + 0.22 * np.cos(2 * np.pi * (doy - 350) / 365.25)
    pre_christmas = np.array(
        [(d.month == 11 and d.day >= 15) or (d.month == 12 and d.day <= 22) for d in dates]
    )
    yearly = yearly * np.where(pre_christmas, 1.3, 1.0)
    base = WEEKDAY_WEIGHTS[weekday] * yearly
    sales = [sale_on(d) for d in dates]
    boost = np.array([s.boost if s else 1.0 for s in sales])
    ordinary = base * boost
    hungry = base * boost ** PARAMS.sale_sensitivity[BARGAIN]
    return Calendar(
        start=start,
        days=days,
        ordinary=ordinary / ordinary.mean(),
        sale_hungry=hungry / hungry.mean(),
        sale_code=tuple(s.code if s else None for s in sales),
        sale_percent=np.array([s.percent if s else 0 for s in sales]),
    )


def sample_times(
    rng: np.random.Generator,
    weights: np.ndarray,
    cal: Calendar,
    lo: np.ndarray,
    hi: np.ndarray,
    utc_offset_hours: np.ndarray,
) -> np.ndarray:
    """One epoch second per row in [lo, hi): day by seasonal weight, hour by local habits.

    Inverse-CDF sampling over the cumulative daily weight, so it is a handful of
    vector operations however many rows there are.
    """
    start = cal.start_epoch
    cum = np.concatenate([[0.0], np.cumsum(weights)])
    lo_day = np.clip((lo - start) / 86400.0, 0, cal.days)
    hi_day = np.clip((hi - start) / 86400.0, 0, cal.days)
    c_lo = np.interp(lo_day, np.arange(cal.days + 1), cum)
    c_hi = np.interp(hi_day, np.arange(cal.days + 1), cum)
    u = c_lo + rng.random(len(lo)) * (c_hi - c_lo)
    day = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, cal.days - 1)
    hour = rng.choice(24, size=len(lo), p=HOUR_WEIGHTS)
    local = day * 86400 + hour * 3600 + rng.integers(0, 3600, size=len(lo))
    t = start + local - (utc_offset_hours * 3600).astype(np.int64)
    return np.clip(t, lo, np.maximum(hi - 1, lo)).astype(np.int64)


def expected_activity(weights: np.ndarray, cal: Calendar, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Seasonal weight mass between lo and hi, in 'average days' (divide by 365 for years)."""
    cum = np.concatenate([[0.0], np.cumsum(weights)])
    grid = np.arange(cal.days + 1)
    lo_day = np.clip((lo - cal.start_epoch) / 86400.0, 0, cal.days)
    hi_day = np.clip((hi - cal.start_epoch) / 86400.0, 0, cal.days)
    return np.maximum(np.interp(hi_day, grid, cum) - np.interp(lo_day, grid, cum), 0.0)
