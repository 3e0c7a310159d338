"""customer_rfm on the real CDNOW data equals an independent pandas computation.

CDNOW (Fader & Hardie): 69,659 purchases by 23,570 customers of an online CD
store, January 1997 to June 1998, shipped with the `lifetimes` package. Each
purchase is loaded into raw.shop_orders as one order; the RFM is computed as of
1998-07-01. The pandas side below is written from the definitions in
dbt_project/DECISIONS.md, not from the SQL: recency in days to the as-of date,
frequency in orders, monetary in total spend (exact, in cents), scores
1 + floor(5 (rank - 1) / (n - 1)) capped at 5 with tied values sharing the lowest
rank, and the segment from the R x FM grid.
"""

from __future__ import annotations

import importlib.util
import io
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from tests.integration import dbt_support
from tests.integration.dbt_support import run_dbt

dbt_warehouse = dbt_support.dbt_warehouse  # the module's own warehouse (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AS_OF = date(1998, 7, 1)

# R score (rows 5..1) x FM score (columns 1..5), as DECISIONS.md draws it.
GRID = {
    5: ["New", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
    4: ["Promising", "Potential Loyalists", "Loyal", "Loyal", "Champions"],
    3: ["About to Sleep", "About to Sleep", "Need Attention", "Loyal", "Loyal"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Cannot Lose Them"],
    1: ["Lost", "Lost", "At Risk", "At Risk", "Cannot Lose Them"],
}


def read_cdnow() -> pd.DataFrame:
    # located without importing lifetimes (its import is slow and noisy)
    package_dir = Path(importlib.util.find_spec("lifetimes").submodule_search_locations[0])
    text = (package_dir / "datasets" / "CDNOW_master.txt").read_text()
    df = pd.read_csv(
        io.StringIO(text),
        sep=r"\s+",
        header=0,
        names=["customer_id", "date", "cds", "dollars"],
        dtype={"customer_id": "int64", "date": "str", "cds": "int64", "dollars": "str"},
    )
    df["placed_on"] = pd.to_datetime(df["date"], format="%Y%m%d")
    # dollars to integer cents, so sums (and ties between sums) are exact
    df["cents"] = df["dollars"].map(lambda s: int(round(float(s) * 100)))
    return df


def quintile_score(values: pd.Series, higher_is_better: bool) -> pd.Series:
    rank = values.rank(method="min", ascending=higher_is_better).astype("int64")
    n = len(values)
    return (1 + (5 * (rank - 1)) // max(n - 1, 1)).clip(upper=5)


def expected_rfm(df: pd.DataFrame) -> pd.DataFrame:
    by_customer = df.groupby("customer_id")
    rfm = pd.DataFrame(
        {
            "recency_days": (pd.Timestamp(AS_OF) - by_customer["placed_on"].max()).dt.days,
            "frequency": by_customer.size(),
            "monetary_cents": by_customer["cents"].sum(),
        }
    )
    rfm["r_score"] = quintile_score(rfm["recency_days"], higher_is_better=False)
    rfm["f_score"] = quintile_score(rfm["frequency"], higher_is_better=True)
    rfm["m_score"] = quintile_score(rfm["monetary_cents"], higher_is_better=True)
    fm = (rfm["f_score"] + rfm["m_score"] + 1) // 2
    rfm["rfm_segment"] = [GRID[r][f - 1] for r, f in zip(rfm["r_score"], fm, strict=True)]
    return rfm


def load_into_raw(url: str, df: pd.DataFrame) -> None:
    """One raw.shop_orders row per purchase, one raw.shop_customers row per customer."""
    first = df.groupby("customer_id")["placed_on"].min()
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "copy raw.shop_customers (customer_id, email, accepts_email_marketing, timezone, country, "
            "signup_at, created_at, updated_at, _batch_id, _loaded_at) from stdin"
        ) as copy:
            for customer_id, signup in first.items():
                ts = f"{signup:%Y-%m-%d} 00:00:00+00"
                copy.write_row(
                    (
                        customer_id,
                        f"cdnow{customer_id}@example.com",
                        True,
                        "UTC",
                        "US",
                        ts,
                        ts,
                        ts,
                        "cdnow",
                        "1998-07-01 00:00:00+00",
                    )
                )
        with conn.cursor().copy(
            "copy raw.shop_orders (order_id, customer_id, status, currency, subtotal, discount, total, "
            "placed_at, updated_at, _batch_id, _loaded_at) from stdin"
        ) as copy:
            for order_id, row in enumerate(df.itertuples(index=False), start=1):
                ts = f"{row.placed_on:%Y-%m-%d} 00:00:00+00"
                amount = f"{row.cents / 100:.2f}"
                copy.write_row(
                    (
                        order_id,
                        row.customer_id,
                        "delivered",
                        "USD",
                        amount,
                        "0",
                        amount,
                        ts,
                        ts,
                        "cdnow",
                        "1998-07-01 00:00:00+00",
                    )
                )


def test_customer_rfm_on_cdnow_equals_pandas(dbt_warehouse):
    df = read_cdnow()
    assert len(df) == 69_659 and df["customer_id"].nunique() == 23_570
    load_into_raw(dbt_warehouse["url"], df)

    run_dbt(
        dbt_warehouse,
        "build",
        "--select",
        "+customer_rfm",
        "--indirect-selection",
        "cautious",  # only tests whose every parent is built
        vars={"as_of": f"{AS_OF} 00:00:00+00"},
    )

    with psycopg.connect(dbt_warehouse["url"]) as conn:
        actual = (
            pd.DataFrame(
                conn.execute(
                    "select customer_id, recency_days, frequency, (monetary * 100)::bigint, "
                    "r_score, f_score, m_score, rfm_segment from marts.customer_rfm"
                ).fetchall(),
                columns=[
                    "customer_id",
                    "recency_days",
                    "frequency",
                    "monetary_cents",
                    "r_score",
                    "f_score",
                    "m_score",
                    "rfm_segment",
                ],
            )
            .set_index("customer_id")
            .sort_index()
        )
    expected = expected_rfm(df).sort_index()

    assert len(actual) == 23_570
    for column in [
        "recency_days",
        "frequency",
        "monetary_cents",
        "r_score",
        "f_score",
        "m_score",
        "rfm_segment",
    ]:
        mismatched = (actual[column].astype(str) != expected[column].astype(str)).sum()
        assert mismatched == 0, f"{column}: {mismatched} customers differ"
    # CDNOW is one cohort (first purchases in early 1997): a recent buyer has
    # bought more than once, so New and Promising stay empty; the rest is populated
    assert set(actual["rfm_segment"]) == {name for row in GRID.values() for name in row} - {
        "New",
        "Promising",
    }
    assert sorted(actual["r_score"].unique()) == [1, 2, 3, 4, 5]
