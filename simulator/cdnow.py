"""The real CDNOW purchase history (Fader & Hardie's benchmark) loaded into the shop schema.

The `lifetimes` wheel ships the data. Its own loader imports pkg_resources (and the
package imports pandas and autograd), so the files are found through importlib's
module spec, without importing the package. The two files differ:

- CDNOW_master.txt: a header line, then `customer_id date number_of_cds dollar_value`
  (69,659 transactions by 23,570 customers);
- CDNOW_sample.txt: no header, `master_id sample_id date number_of_cds dollar_value`
  (6,919 transactions by 2,357 customers).

Customers keep their master id in both, so the sample is a subset of the master.
Only customers and orders are filled; the other source tables are emptied.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from simulator import load
from simulator import strings as s

MASTER = "CDNOW_master.txt"
SAMPLE = "CDNOW_sample.txt"
TIMEZONE = "America/New_York"


def _datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the lifetimes package (which ships the CDNOW files) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


def read(sample: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(customer_id, date as datetime64[D], number of CDs, dollar value in cents) per transaction."""
    text = (_datasets() / (SAMPLE if sample else MASTER)).read_text()
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if lines and not lines[0][0].isdigit():
        lines = lines[1:]  # the master file's header
    width = len(lines[0])
    if width not in (4, 5) or any(len(line) != width for line in lines):
        raise ValueError("unexpected CDNOW file layout")
    cols = list(zip(*lines, strict=True))
    customer = np.array(cols[0], dtype=np.int64)
    date = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in cols[-3]], dtype="datetime64[D]")
    cds = np.array(cols[-2], dtype=np.int64)
    cents = np.round(np.array(cols[-1], dtype=float) * 100).astype(np.int64)
    return customer, date, cds, cents


def tables(sample: bool = False) -> list[load.Table]:
    customer, date, _cds, cents = read(sample)
    order = np.lexsort((cents, date, customer))  # a stable, documented order for order ids
    customer, date, cents = customer[order], date[order], cents[order]
    placed = date.astype("datetime64[s]") + np.timedelta64(12 * 3600, "s")  # noon UTC
    epoch = placed.astype(np.int64)
    ids, first = np.unique(customer, return_index=True)
    signup = epoch[first]  # first purchase (rows are sorted by customer, then date)
    n, m = len(ids), len(customer)
    cid = s.ints(ids)
    signup_text = s.timestamps(signup)
    customers = load.Table(
        "shop.customers",
        {
            "customer_id": cid,
            "email": s.concat("customer-", cid, "@cdnow.example"),
            "first_name": s.constant(None, n),
            "last_name": s.constant(None, n),
            "accepts_email_marketing": s.constant("t", n),
            "email_consent_at": signup_text,
            "timezone": s.constant(TIMEZONE, n),
            "country": s.constant("US", n),
            "signup_at": signup_text,
            "created_at": signup_text,
            "updated_at": signup_text,
        },
    )
    placed_text = s.timestamps(epoch)
    zero = s.money(np.zeros(m, dtype=np.int64))
    orders = load.Table(
        "shop.orders",
        {
            "order_id": s.ints(np.arange(1, m + 1)),
            "customer_id": s.ints(customer),
            "status": s.constant("delivered", m),
            "currency": s.constant("USD", m),
            "subtotal": s.money(cents),
            "discount": zero,
            "total": s.money(cents),
            "discount_code": s.constant(None, m),
            "placed_at": placed_text,
            "updated_at": placed_text,
        },
    )
    return [customers, orders]


def load_cdnow(url: str, sample: bool = False) -> dict[str, int]:
    """Replace the source tables' contents with CDNOW (customers and orders only)."""
    load.prepare(url)
    loader = load.Loader(url, workers=1)
    try:
        for table in tables(sample):
            loader.submit(table)
    finally:
        rows = loader.wait()
        load.finish(url)
    return rows
