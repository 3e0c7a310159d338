"""Where the ML stages get their facts: the warehouse (dbt models), CDNOW, or synthetic data.

Everything downstream works on one shape, `ShopData`: transactions (one row
per valid order: customer_id, order_id, ordered_at, amount), customers
(customer_id, signed_up_at), and for recommendations order items and products.
Timestamps are tz-naive UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import pandas as pd

# dbt relations, most preferred first: marts once they land, staging before.
ORDER_RELATIONS = ("marts.fct_orders", "staging.stg_shop__orders")
CUSTOMER_RELATIONS = ("marts.dim_customers", "staging.stg_shop__customers")
ORDER_ITEM_RELATIONS = ("marts.fct_order_items", "staging.stg_shop__order_items")
PRODUCT_RELATIONS = ("marts.dim_products", "staging.stg_shop__products")


@dataclass
class ShopData:
    transactions: pd.DataFrame
    customers: pd.DataFrame | None = None
    order_items: pd.DataFrame | None = None  # customer_id, order_id, product_id, ordered_at
    products: pd.DataFrame | None = None  # product_id, category, price, stock, is_active
    name: str = "warehouse"
    extra: dict = field(default_factory=dict)

    @property
    def data_end(self) -> pd.Timestamp:
        """The last moment the data knows about (start of the day after the last order)."""
        return (self.transactions["ordered_at"].max() + pd.Timedelta(days=1)).floor("D")

    @property
    def data_start(self) -> pd.Timestamp:
        return self.transactions["ordered_at"].min().floor("D")


def _naive_utc(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s)
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.astype("datetime64[us]")


def resolve(conn, candidates: tuple[str, ...]) -> str:
    """The first relation of `candidates` that exists in the database."""
    for name in candidates:
        if conn.execute("select to_regclass(%s)", (name,)).fetchone()[0] is not None:
            return name
    raise LookupError(f"none of {', '.join(candidates)} exists: run dbt first")


def read_sql(conn, sql: str, params=None) -> pd.DataFrame:
    cur = conn.execute(sql, params)
    cols = [d.name for d in cur.description]
    return pd.DataFrame(cur.fetchall(), columns=cols)


def from_warehouse(url: str | None = None, *, with_items: bool = False, before=None) -> ShopData:
    """Valid orders and customers from the dbt models in the warehouse."""
    import psycopg

    from warehouse import settings

    with psycopg.connect(url or settings.warehouse_url()) as conn:
        orders_rel = resolve(conn, ORDER_RELATIONS)
        where = "where is_valid" + (" and placed_at < %s" if before is not None else "")
        params = (before,) if before is not None else None
        tx = read_sql(
            conn,
            f"select customer_id, order_id, placed_at as ordered_at, total::float8 as amount "
            f"from {orders_rel} {where}",
            params,
        )
        customers = read_sql(
            conn, f"select customer_id, signed_up_at from {resolve(conn, CUSTOMER_RELATIONS)}"
        )
        items = products = None
        if with_items:
            items = read_sql(
                conn,
                f"select o.customer_id, i.order_id, i.product_id, o.placed_at as ordered_at "
                f"from {resolve(conn, ORDER_ITEM_RELATIONS)} i join {orders_rel} o using (order_id) "
                f"{where.replace('is_valid', 'o.is_valid').replace('placed_at', 'o.placed_at')}",
                params,
            )
            products = read_sql(
                conn,
                "select product_id, category, price::float8 as price, stock_quantity as stock, is_active "
                f"from {resolve(conn, PRODUCT_RELATIONS)}",
            )
    return normalise(ShopData(tx, customers, items, products, name="warehouse"))


def normalise(data: ShopData) -> ShopData:
    tx = data.transactions.copy()
    tx["customer_id"] = tx["customer_id"].astype("int64")
    tx["ordered_at"] = _naive_utc(tx["ordered_at"])
    tx["amount"] = tx["amount"].astype("float64")
    data.transactions = tx
    if data.customers is not None:
        c = data.customers.copy()
        c["customer_id"] = c["customer_id"].astype("int64")
        c["signed_up_at"] = _naive_utc(c["signed_up_at"])
        data.customers = c
    if data.order_items is not None:
        i = data.order_items.copy()
        i["ordered_at"] = _naive_utc(i["ordered_at"])
        for col in ("customer_id", "product_id"):
            i[col] = i[col].astype("int64")
        data.order_items = i
    return data


def read_cdnow(sample: bool = True) -> pd.DataFrame:
    """CDNOW transactions as shipped in the lifetimes wheel (read without pkg_resources).

    Columns: customer_id (the sample's 1..2357 id, or the master id), ordered_at,
    cds, amount. 1997-01-01 to 1998-06-30; every customer's first purchase is
    in the first quarter of 1997.
    """
    name = "CDNOW_sample.txt" if sample else "CDNOW_master.txt"
    path = resources.files("lifetimes") / "datasets" / name
    with path.open() as f:
        if sample:
            names = ["master_id", "customer_id", "date", "cds", "amount"]
        else:
            names = ["customer_id", "date", "cds", "amount"]
        df = pd.read_csv(f, sep=r"\s+", header=None, names=names, dtype={"date": str})
    df["ordered_at"] = pd.to_datetime(df["date"], format="%Y%m%d").astype("datetime64[us]")
    return df[["customer_id", "ordered_at", "cds", "amount"]]


def from_cdnow(sample: bool = True) -> ShopData:
    tx = read_cdnow(sample)
    tx = tx.assign(order_id=range(1, len(tx) + 1))
    return normalise(ShopData(tx[["customer_id", "order_id", "ordered_at", "amount"]], name="cdnow"))
