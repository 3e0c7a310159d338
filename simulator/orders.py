"""Orders and order items, with their status history up to the end of the window.

An order moves placed -> paid -> shipped -> delivered over days (some are cancelled or
refunded later); the row shows the status as of the window's end and `updated_at` is
the time of that last change, so incremental extraction sees late updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator import strings as s
from simulator.behaviour import BARGAIN, ONE_TIME, PARAMS, Calendar, expected_activity, sample_times
from simulator.catalog import Catalog
from simulator.customers import Customers
from simulator.load import Table

STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled", "refunded")
PLACED, PAID, SHIPPED, DELIVERED, CANCELLED, REFUNDED = range(6)
CURRENCY = "USD"
# Everyday codes: (code, percent, weight)
EVERYDAY_CODES = (("SAVE10", 10, 0.4), ("WELCOME15", 15, 0.2), ("FLASH20", 20, 0.15), ("NEWS10", 10, 0.25))
CANCEL_RATE = 0.03
DAY = 86400


@dataclass(frozen=True)
class Orders:
    """Per order (order_id = index + 1, in placed_at order) and per item."""

    customer: np.ndarray
    placed_at: np.ndarray  # epoch seconds
    item_start: np.ndarray  # offsets into the item arrays, len = orders + 1
    item_product: np.ndarray
    item_quantity: np.ndarray
    item_price: np.ndarray  # cents
    item_discount: np.ndarray  # cents
    subtotal: np.ndarray  # cents
    discount: np.ndarray  # cents
    coupon: np.ndarray  # index into coupon names, -1 for none
    coupon_names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.customer)

    @property
    def items_per_order(self) -> np.ndarray:
        return np.diff(self.item_start)


def _order_times(rng: np.random.Generator, c: Customers, cal: Calendar) -> tuple[np.ndarray, np.ndarray]:
    """How many orders each customer places, and when."""
    lo = c.active_from + 3600
    hi = c.buying_until
    bargain = c.behaviour == BARGAIN
    mass = np.where(
        bargain, expected_activity(cal.sale_hungry, cal, lo, hi), expected_activity(cal.ordinary, cal, lo, hi)
    )
    count = rng.poisson(c.order_rate * mass / 365.0)
    one_time = c.behaviour == ONE_TIME
    count = np.where(one_time & (hi > lo), 1, count)
    customer = np.repeat(np.arange(c.size), count)
    o_lo, o_hi = lo[customer], hi[customer]
    # A one-time buyer who signs up inside the window buys within days of signing up.
    new_one_time = one_time[customer] & (c.signup[customer] >= cal.start_epoch)
    o_hi = np.where(new_one_time, np.minimum(o_hi, o_lo + 14 * DAY), o_hi)
    placed = np.empty(len(customer), dtype=np.int64)
    is_bargain = bargain[customer]
    off = c.utc_offset[customer]
    for mask, curve in ((is_bargain, cal.sale_hungry), (~is_bargain, cal.ordinary)):
        placed[mask] = sample_times(rng, curve, cal, o_lo[mask], o_hi[mask], off[mask])
    order = np.lexsort((customer, placed))
    return customer[order], placed[order]


def build(rng: np.random.Generator, c: Customers, catalog: Catalog, cal: Calendar) -> Orders:
    customer, placed = _order_times(rng, c, cal)
    n = len(customer)
    kind = c.behaviour[customer]
    n_items = 1 + rng.poisson(PARAMS.extra_items[kind])
    item_start = np.concatenate([[0], np.cumsum(n_items)])
    item_order = np.repeat(np.arange(n), n_items)
    item_customer = customer[item_order]
    share = PARAMS.favourite_share[c.behaviour[item_customer]]
    category = catalog.pick_categories(rng, c.favourite[item_customer], share)
    product = catalog.pick_products(rng, category, c.price_level[item_customer])
    quantity = rng.choice([1, 2, 3], size=len(product), p=[0.80, 0.15, 0.05])
    price = catalog.price_cents[product]

    # Discount codes: shop-wide sale codes on sale days, everyday codes otherwise.
    day = np.clip((placed - cal.start_epoch) // DAY, 0, cal.days - 1)
    sale_codes = sorted({code for code in cal.sale_code if code})
    coupon_names = tuple(sale_codes) + tuple(code for code, _, _ in EVERYDAY_CODES)
    sale_index = np.array([sale_codes.index(code) if code else -1 for code in cal.sale_code] or [-1])
    on_sale = cal.sale_percent[day] > 0
    uses_sale = on_sale & (rng.random(n) < PARAMS.sale_use[kind])
    weights = np.array([w for _, _, w in EVERYDAY_CODES])
    everyday = rng.choice(len(EVERYDAY_CODES), size=n, p=weights / weights.sum())
    uses_everyday = ~uses_sale & (rng.random(n) < PARAMS.discount_use[kind])
    coupon = np.where(uses_sale, sale_index[day], np.where(uses_everyday, len(sale_codes) + everyday, -1))
    everyday_pct = np.array([p for _, p, _ in EVERYDAY_CODES])[everyday]
    percent = np.where(uses_sale, cal.sale_percent[day], np.where(uses_everyday, everyday_pct, 0))

    line = quantity * price
    item_discount = np.round(line * percent[item_order] / 100).astype(np.int64)
    subtotal = np.add.reduceat(line, item_start[:-1]) if n else np.zeros(0, dtype=np.int64)
    discount = np.add.reduceat(item_discount, item_start[:-1]) if n else np.zeros(0, dtype=np.int64)
    return Orders(
        customer=customer,
        placed_at=placed,
        item_start=item_start,
        item_product=product,
        item_quantity=quantity,
        item_price=price,
        item_discount=item_discount,
        subtotal=subtotal,
        discount=discount,
        coupon=coupon,
        coupon_names=coupon_names,
    )


def status_history(
    rng: np.random.Generator, o: Orders, c: Customers, end: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each order's status at `end` and the time of its latest change."""
    n = o.size
    placed = o.placed_at
    paid = placed + rng.integers(30, 1800, n)
    cancelled = rng.random(n) < CANCEL_RATE
    cancel_at = paid + rng.integers(600, 36 * 3600, n)
    shipped = paid + rng.integers(DAY // 2, 3 * DAY, n)
    delivered = shipped + rng.integers(DAY, 6 * DAY, n)
    refunded = ~cancelled & (rng.random(n) < PARAMS.refund_rate[c.behaviour[o.customer]])
    refund_at = delivered + rng.integers(2 * DAY, 25 * DAY, n)
    never = np.iinfo(np.int64).max
    # Candidate (time, status) per step; the latest one before `end` wins.
    steps = np.stack(
        [
            placed,
            paid,
            np.where(cancelled, never, shipped),
            np.where(cancelled, never, delivered),
            np.where(cancelled, cancel_at, never),
            np.where(refunded, refund_at, never),
        ],
        axis=1,
    )
    steps = np.where(steps < end, steps, -1)
    last = steps.argmax(axis=1)
    return last, steps[np.arange(n), last]


def tables(rng: np.random.Generator, o: Orders, c: Customers, end: int) -> list[Table]:
    status, updated = status_history(rng, o, c, end)
    n = o.size
    oid = s.ints(np.arange(1, n + 1))
    placed = s.timestamps(o.placed_at)
    coupon = s.pick(o.coupon_names + ("",), np.where(o.coupon < 0, len(o.coupon_names), o.coupon))
    orders = Table(
        "shop.orders",
        {
            "order_id": oid,
            "customer_id": s.ints(o.customer + 1),
            "status": s.pick(STATUSES, status),
            "currency": s.constant(CURRENCY, n),
            "subtotal": s.money(o.subtotal),
            "discount": s.money(o.discount),
            "total": s.money(o.subtotal - o.discount),
            "discount_code": s.with_nulls(coupon, o.coupon < 0),
            "placed_at": placed,
            "updated_at": s.timestamps(updated),
        },
    )
    item_order = np.repeat(np.arange(n), o.items_per_order)
    item_placed = placed.take(item_order)
    items = Table(
        "shop.order_items",
        {
            "order_item_id": s.ints(np.arange(1, len(item_order) + 1)),
            "order_id": s.ints(item_order + 1),
            "product_id": s.ints(o.item_product + 1),
            "quantity": s.ints(o.item_quantity),
            "unit_price": s.money(o.item_price),
            "discount": s.money(o.item_discount),
            "created_at": item_placed,
            "updated_at": item_placed,
        },
    )
    return [orders, items]
