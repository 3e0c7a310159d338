"""The facts the ML stages count outcomes on, read from the dbt marts.

Features come from the mart `customer_features` (ml.features). Labels,
CLV holdouts and recommendations also need the orders themselves: one shape,
`ShopData`, holds the valid orders of `marts.fct_orders` (customer_id,
order_id, ordered_at, amount), the customers of `marts.dim_customers`
(customer_id, signed_up_at) and, for recommendations, the order lines of
`marts.fct_order_items` and the products of `marts.dim_products`.
Timestamps are tz-naive UTC. The marts are the only source: a warehouse dbt
has not built is an error that says so, not a fallback to staging.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

ORDERS = "marts.fct_orders"
CUSTOMERS = "marts.dim_customers"
ORDER_ITEMS = "marts.fct_order_items"
PRODUCTS = "marts.dim_products"


@dataclass
class ShopData:
    transactions: pd.DataFrame
    customers: pd.DataFrame | None = None
    order_items: pd.DataFrame | None = None  # customer_id, order_id, product_id, ordered_at
    products: pd.DataFrame | None = None  # product_id, category, price, stock, is_active
    name: str = "warehouse"  # the database it came from, tagged on MLflow runs

    @property
    def data_end(self) -> pd.Timestamp:
        """The last moment the data knows about (start of the day after the last order)."""
        return (self.transactions["ordered_at"].max() + pd.Timedelta(days=1)).floor("D")

    @property
    def data_start(self) -> pd.Timestamp:
        return self.transactions["ordered_at"].min().floor("D")


def naive_utc(s: pd.Series) -> pd.Series:
    s = pd.to_datetime(s, utc=True)
    return s.dt.tz_localize(None).astype("datetime64[us]")


def read_sql(conn, sql: str, params=None) -> pd.DataFrame:
    cur = conn.execute(sql, params)
    cols = [d.name for d in cur.description]
    return pd.DataFrame(cur.fetchall(), columns=cols)


def require(conn, *relations: str) -> None:
    """Raise LookupError naming the marts dbt has not built yet."""
    missing = [r for r in relations if conn.execute("select to_regclass(%s)", (r,)).fetchone()[0] is None]
    if missing:
        raise LookupError(
            f"{', '.join(missing)} not found: build the marts first (python -m warehouse.dbt build)"
        )


def from_warehouse(url: str | None = None, *, with_items: bool = False) -> ShopData:
    """Valid orders and customers (and with_items: order lines and products) from the marts."""
    import psycopg

    from warehouse import settings

    with psycopg.connect(url or settings.warehouse_url()) as conn:
        name = conn.info.dbname
        require(conn, ORDERS, CUSTOMERS, *((ORDER_ITEMS, PRODUCTS) if with_items else ()))
        tx = read_sql(
            conn,
            f"select customer_id, order_id, placed_at as ordered_at, total::float8 as amount "
            f"from {ORDERS} where is_valid",
        )
        customers = read_sql(conn, f"select customer_id, signed_up_at from {CUSTOMERS}")
        items = products = None
        if with_items:
            items = read_sql(
                conn,
                f"select customer_id, order_id, product_id, placed_at as ordered_at "
                f"from {ORDER_ITEMS} where is_valid_order",
            )
            products = read_sql(
                conn,
                "select product_id, category, price::float8 as price, stock_quantity as stock, is_active "
                f"from {PRODUCTS}",
            )
    if tx.empty:
        raise LookupError(f"{ORDERS} holds no valid order: nothing to learn from")
    return normalise(ShopData(tx, customers, items, products, name))


def normalise(data: ShopData) -> ShopData:
    tx = data.transactions.copy()
    tx["customer_id"] = tx["customer_id"].astype("int64")
    tx["ordered_at"] = naive_utc(tx["ordered_at"])
    tx["amount"] = tx["amount"].astype("float64")
    data.transactions = tx
    if data.customers is not None:
        c = data.customers.copy()
        c["customer_id"] = c["customer_id"].astype("int64")
        c["signed_up_at"] = naive_utc(c["signed_up_at"])
        data.customers = c
    if data.order_items is not None:
        i = data.order_items.copy()
        i["ordered_at"] = naive_utc(i["ordered_at"])
        for col in ("customer_id", "product_id"):
            i[col] = i[col].astype("int64")
        data.order_items = i
    return data
