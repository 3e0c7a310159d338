"""A small, fast synthetic shop with known behaviour types, for tests and the benchmark.

The project's simulator (`python -m simulator generate`) is the realistic
source; this generator only needs to be quick (100k customers in seconds) and
to carry the same ground truth shape as `simulator.customer_truth`, so the
models have something learnable and the evaluation something to compare to.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.data import ShopData, normalise

# behaviour type: (share, orders per year, mean order value)
TYPES = {
    "loyal_high_spender": (0.08, 9.0, 140.0),
    "regular": (0.35, 3.5, 60.0),
    "bargain_hunter": (0.22, 2.5, 30.0),
    "one_time": (0.25, 0.0, 45.0),
    "churning": (0.10, 5.0, 55.0),
}
CATEGORIES = ("books", "music", "games", "kitchen", "garden", "fashion", "beauty", "toys")


def generate(
    customers: int = 5000, days: int = 730, seed: int = 7, products: int = 200, end: str = "2026-01-01"
) -> tuple[ShopData, pd.DataFrame]:
    """(shop data, ground truth) for `customers` customers over `days` days up to `end`."""
    rng = np.random.default_rng(seed)
    end_ts = pd.Timestamp(end)
    start_ts = end_ts - pd.Timedelta(days=days)
    names = list(TYPES)
    shares = np.array([TYPES[t][0] for t in names])
    kind = rng.choice(len(names), size=customers, p=shares / shares.sum())
    rate = np.array([TYPES[t][1] for t in names])[kind] * rng.gamma(4.0, 0.25, customers)
    aov = np.array([TYPES[t][2] for t in names])[kind] * rng.gamma(6.0, 1 / 6.0, customers)
    span = days * 86400.0
    signup = rng.uniform(0, span - 30 * 86400.0, customers)
    end_active = np.full(customers, span)
    is_churning = np.array(names)[kind] == "churning"
    churn_at = signup + rng.uniform(30, 400, customers) * 86400.0
    end_active[is_churning] = np.minimum(churn_at[is_churning], span)
    active_years = np.maximum(end_active - signup, 0) / (365.0 * 86400.0)
    n_orders = rng.poisson(rate * active_years)
    is_one_time = np.array(names)[kind] == "one_time"
    n_orders[is_one_time] = (rng.random(is_one_time.sum()) < 0.9).astype(int)
    # most customers who buy at all make a first order soon after signing up
    first_gap = rng.exponential(10 * 86400.0, customers)
    has_orders = n_orders > 0
    cust_idx = np.repeat(np.arange(customers), n_orders)
    lo = signup[cust_idx] + first_gap[cust_idx]
    hi = np.maximum(end_active[cust_idx], lo + 1)
    t = rng.uniform(lo, hi)
    # the first order of each customer sits at signup + first gap
    first_pos = np.cumsum(n_orders) - n_orders
    t[first_pos[has_orders]] = (signup + first_gap)[has_orders]
    keep = t < span
    cust_idx, t = cust_idx[keep], t[keep]
    amount = np.round(aov[cust_idx] * rng.gamma(3.0, 1 / 3.0, len(cust_idx)), 2) + 1.0
    ids = np.arange(1, customers + 1, dtype=np.int64)
    tx = pd.DataFrame(
        {
            "customer_id": ids[cust_idx],
            "order_id": np.arange(1, len(cust_idx) + 1, dtype=np.int64),
            "ordered_at": start_ts + pd.to_timedelta(t, unit="s"),
            "amount": amount,
        }
    ).sort_values("ordered_at", ignore_index=True)
    cust = pd.DataFrame({"customer_id": ids, "signed_up_at": start_ts + pd.to_timedelta(signup, unit="s")})

    # products and order items: customers favour one category, popular items more
    prod_ids = np.arange(1, products + 1, dtype=np.int64)
    prod_cat = rng.integers(0, len(CATEGORIES), products)
    popularity = 1.0 / np.arange(1, products + 1) ** 0.8
    rng.shuffle(popularity)
    prod = pd.DataFrame(
        {
            "product_id": prod_ids,
            "category": np.array(CATEGORIES)[prod_cat],
            "price": np.round(rng.gamma(3.0, 15.0, products) + 2, 2),
            "stock": np.where(rng.random(products) < 0.1, 0, rng.integers(1, 500, products)),
            "is_active": rng.random(products) > 0.02,
        }
    )
    fav = rng.integers(0, len(CATEGORIES), customers)
    n_items = rng.integers(1, 4, len(tx))
    item_order = np.repeat(np.arange(len(tx)), n_items)
    item_cust = tx["customer_id"].to_numpy()[item_order] - 1
    in_fav = rng.random(len(item_order)) < 0.7
    cat = np.where(in_fav, fav[item_cust], rng.integers(0, len(CATEGORIES), len(item_order)))
    chosen = np.empty(len(item_order), dtype=np.int64)
    for c in range(len(CATEGORIES)):
        members = np.flatnonzero(prod_cat == c)
        mask = cat == c
        if len(members) == 0 or not mask.any():
            chosen[mask] = rng.integers(0, products, mask.sum())
            continue
        p = popularity[members] / popularity[members].sum()
        chosen[mask] = rng.choice(members, size=mask.sum(), p=p)
    items = pd.DataFrame(
        {
            "customer_id": tx["customer_id"].to_numpy()[item_order],
            "order_id": tx["order_id"].to_numpy()[item_order],
            "product_id": prod_ids[chosen],
            "ordered_at": tx["ordered_at"].to_numpy()[item_order],
        }
    ).drop_duplicates(["order_id", "product_id"], ignore_index=True)

    truth = pd.DataFrame(
        {
            "customer_id": ids,
            "behaviour_type": np.array(names)[kind],
            "favourite_category": np.array(CATEGORIES)[fav],
            "churned_at": np.where(is_churning, start_ts + pd.to_timedelta(churn_at, unit="s"), pd.NaT),
            "expected_orders_per_year": rate,
            "expected_order_value": aov,
        }
    )
    data = ShopData(tx, cust, items, prod, name=f"synthetic-{customers}-{seed}")
    return normalise(data), truth
