"""The product catalogue and how customers pick products from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simulator import strings as s
from simulator.behaviour import (
    ADJECTIVES,
    CATEGORIES,
    CATEGORY_MEDIAN_PRICE,
    CATEGORY_NOUNS,
    CATEGORY_POPULARITY,
    CATEGORY_SKU_PREFIX,
    COLOURS,
    Calendar,
)
from simulator.load import Table

IMAGE_BASE = "https://cdn.example-shop.test/p/"
PRICE_PICK_SHARE = 0.55  # picks driven by a customer's price level; the rest by popularity


@dataclass(frozen=True)
class Catalog:
    category: np.ndarray  # per product (product_id = index + 1)
    price_cents: np.ndarray
    sku: pa.Array
    by_category_price: np.ndarray  # product indexes sorted by (category, price)
    category_start: np.ndarray  # offsets into by_category_price, len = categories + 1
    popularity_cum: np.ndarray  # cumulative popularity over by_category_price, per category 0..1
    in_stock: np.ndarray
    json_fields: pa.Array  # '"product_id":"1","sku":..,"category":..,"price":..' for events
    page_json: pa.Array  # properties of the product page view
    viewed_json: pa.Array  # properties of `Product Viewed`

    @property
    def size(self) -> int:
        return len(self.category)

    def pick_categories(
        self, rng: np.random.Generator, favourite: np.ndarray, share: np.ndarray
    ) -> np.ndarray:
        """The favourite category with probability `share`, else by overall popularity."""
        other = rng.choice(len(CATEGORIES), size=len(favourite), p=CATEGORY_POPULARITY)
        return np.where(rng.random(len(favourite)) < share, favourite, other)

    def pick_products(
        self, rng: np.random.Generator, category: np.ndarray, price_level: np.ndarray
    ) -> np.ndarray:
        """A product of each category: near the customer's price level, or a popular one."""
        n = len(category)
        start = self.category_start[category]
        count = self.category_start[category + 1] - start
        level = np.clip(price_level + rng.normal(0, 0.15, n), 0, 0.9999)
        by_price = start + (level * count).astype(np.int64)
        # Popularity: inverse CDF within the category's slice of the cumulative weights.
        u = category + rng.random(n)
        by_popularity = np.minimum(np.searchsorted(self.popularity_cum, u, side="right"), start + count - 1)
        chosen = np.where(rng.random(n) < PRICE_PICK_SHARE, by_price, by_popularity)
        return self.by_category_price[chosen]


def build(rng: np.random.Generator, n_products: int, cal: Calendar) -> tuple[Catalog, Table]:
    n_cat = len(CATEGORIES)
    category = rng.choice(n_cat, size=n_products, p=CATEGORY_POPULARITY)
    category[:n_cat] = np.arange(n_cat)  # every category has products
    rng.shuffle(category)
    price = CATEGORY_MEDIAN_PRICE[category] * rng.lognormal(0, 0.55, n_products)
    price_cents = np.maximum(np.round(price) * 100 - 1, 99).astype(np.int64)  # 24.99 style
    product_id = np.arange(1, n_products + 1)

    prefix = s.pick(CATEGORY_SKU_PREFIX, category)
    sku = s.concat(prefix, "-", s.pick([f"{i:05d}" for i in range(n_products + 1)], product_id))
    noun_count = np.array([len(n) for n in CATEGORY_NOUNS])
    noun_start = np.concatenate([[0], np.cumsum(noun_count)])
    noun = noun_start[category] + (rng.random(n_products) * noun_count[category]).astype(np.int64)
    flat_nouns = [n for nouns in CATEGORY_NOUNS for n in nouns]
    name = s.concat(
        s.pick(ADJECTIVES, rng.integers(0, len(ADJECTIVES), n_products)),
        " ",
        s.pick(flat_nouns, noun),
        s.optional(
            rng.random(n_products) < 0.5, " - ", s.pick(COLOURS, rng.integers(0, len(COLOURS), n_products))
        ),
    )
    stock = np.where(rng.random(n_products) < 0.08, 0, np.minimum(rng.lognormal(3.5, 1.0, n_products), 999))
    stock = stock.astype(np.int64)
    is_active = rng.random(n_products) >= 0.03
    # The catalogue predates the window; some products get a price or stock update inside it.
    start = cal.start_epoch
    created = start - rng.integers(86400, 2 * 365 * 86400, n_products)
    created.sort()  # product ids follow creation order, like an autoincrement key
    updated = np.where(
        rng.random(n_products) < 0.4, start + rng.integers(0, cal.days * 86400, n_products), created
    )

    order = np.lexsort((price_cents, category))
    cat_start = np.searchsorted(category[order], np.arange(n_cat + 1))
    popularity = 1.0 / (1.0 + rng.permutation(n_products)) ** 0.9
    pop = popularity[order]
    pop_cum = np.empty(n_products)
    for c in range(n_cat):
        a, b = cat_start[c], cat_start[c + 1]
        pop_cum[a:b] = c + np.cumsum(pop[a:b]) / pop[a:b].sum()

    pid = s.ints(product_id)
    price_text = s.money(price_cents)
    json_fields = s.concat(
        '"product_id":"',
        pid,
        '","sku":"',
        sku,
        '","category":"',
        s.pick(CATEGORIES, category),
        '","price":',
        price_text,
    )
    catalog = Catalog(
        category=category,
        price_cents=price_cents,
        sku=sku,
        by_category_price=order,
        category_start=cat_start,
        popularity_cum=pop_cum,
        in_stock=(stock > 0) & is_active,
        json_fields=json_fields,
        page_json=s.concat('{"name":"Product","path":"/p/', sku, '"}'),
        viewed_json=s.concat("{", json_fields, "}"),
    )
    table = Table(
        "shop.products",
        {
            "product_id": pid,
            "sku": sku,
            "name": name,
            "category": s.pick(CATEGORIES, category),
            "price": price_text,
            "image_url": s.concat(IMAGE_BASE, sku, ".jpg"),
            "stock": s.ints(stock),
            "is_active": s.pick(["f", "t"], is_active.astype(np.int32)),
            "created_at": s.timestamps(created),
            "updated_at": s.timestamps(updated),
        },
    )
    return catalog, table
