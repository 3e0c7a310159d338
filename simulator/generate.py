"""The seeded generator: a whole shop history, generated and loaded in one pass.

Same seed and arguments give byte-identical tables: every random draw comes from numpy
Generators spawned from the seed (one per stage, so a change in one stage leaves the
others' draws alone), and the wall clock is read only for the default end date.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from simulator import catalog, customers, email, load, orders, web
from simulator.behaviour import calendar

log = logging.getLogger(__name__)


def today_utc() -> dt.datetime:
    """UTC midnight today: the default end, so demo data is always fresh."""
    now = dt.datetime.now(dt.UTC)
    return dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Spec:
    customers: int = 20_000
    days: int = 365
    seed: int = 42
    end: dt.datetime = field(default_factory=today_utc)

    def __post_init__(self) -> None:
        if self.customers < 1 or self.days < 1:
            raise ValueError("customers and days must be positive")
        if self.end.tzinfo is None:
            object.__setattr__(self, "end", self.end.replace(tzinfo=dt.UTC))

    @property
    def products(self) -> int:
        return int(np.clip(500 + self.customers // 50, 500, 2000))


def tables(spec: Spec) -> Iterator[load.Table]:
    """Every source table, in an order that lets loading start early."""
    cal = calendar(spec.end, spec.days)
    seeds = np.random.SeedSequence(spec.seed).spawn(7)
    rng = [np.random.default_rng(s) for s in seeds[:6]]
    cat, products = catalog.build(rng[0], spec.products, cal)
    yield products
    people = customers.build(rng[1], spec.customers, cal)
    placed = orders.build(rng[2], people, cat, cal)
    yield from orders.tables(rng[3], placed, people, cal.end_epoch)
    esp, clicks, unsubscribed_at = email.build(rng[4], people, cat, cal)
    yield esp
    yield from customers.tables(people, cat, unsubscribed_at, cal.end_epoch)
    # Web activity in parts of customers, so loading one part overlaps building the next.
    parts = web.parts(people, cal)
    part_rngs = [np.random.default_rng(s) for s in seeds[6].spawn(len(parts))]
    cart_id, cart_item_id, event = 1, 1, 0
    for i, (part, part_rng) in enumerate(zip(parts, part_rngs, strict=True)):
        part = replace(part, first_cart_id=cart_id, first_cart_item_id=cart_item_id, first_event=event)
        built = web.build(part_rng, people, cat, placed, clicks, cal, part)
        for table in built.tables:
            table.last_part = i == len(parts) - 1
            yield table
        cart_id, cart_item_id, event = (
            cart_id + built.carts,
            cart_item_id + built.cart_items,
            event + built.events,
        )


@dataclass
class Result:
    rows: dict[str, int]
    seconds: float


def run(spec: Spec, url: str, workers: int = 2) -> Result:
    """Truncate the source tables and fill them with a fresh simulation."""
    started = time.perf_counter()
    load.prepare(url)
    loader = load.Loader(url, workers=workers)
    try:
        for table in tables(spec):
            log.info(
                "generated %s (%s rows) at %.1f s",
                table.name,
                f"{table.rows:,}",
                time.perf_counter() - started,
            )
            loader.submit(table)
    finally:
        rows = loader.wait()
        load.finish(url)
    return Result(rows=rows, seconds=time.perf_counter() - started)
