"""The generator against a real PostgreSQL: contents, integrity and the behaviour signal."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from simulator import generate, load, source

pytestmark = pytest.mark.integration

END = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SPEC = generate.Spec(customers=2000, days=240, seed=11, end=END)
START = END - dt.timedelta(days=SPEC.days)


def constraint_and_index_definitions(conn: psycopg.Connection) -> set[tuple[str, str]]:
    rows = conn.execute(
        """
        select conrelid::regclass::text, pg_get_constraintdef(oid) from pg_constraint
        where conrelid::regclass::text = any(%(t)s)
        union all
        select indrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index
        where indrelid::regclass::text = any(%(t)s)
        """,
        {"t": list(source.SOURCE_TABLES)},
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


@pytest.fixture(scope="module")
def generated(test_databases) -> dict:
    url = test_databases["shop"]
    with psycopg.connect(url) as conn:
        before = constraint_and_index_definitions(conn)
    result = generate.run(SPEC, url)
    return {"url": url, "result": result, "before": before}


@pytest.fixture
def db(generated) -> psycopg.Connection:
    with psycopg.connect(generated["url"], autocommit=True) as conn:
        conn.execute("set time zone 'UTC'")
        yield conn


def one(db: psycopg.Connection, sql: str, *args):
    return db.execute(sql, args or None).fetchone()[0]


def test_every_table_is_filled(generated, db):
    rows = generated["result"].rows
    for table in source.SOURCE_TABLES:
        assert rows[table] == one(db, f"select count(*) from {table}") > 0, table
    assert one(db, "select count(*) from shop.customers") == SPEC.customers
    assert 500 <= one(db, "select count(*) from shop.products") <= 2000
    # enough web activity for the benchmarks: about 50+ events per customer-year
    per_customer_year = rows["web.events"] / SPEC.customers / (SPEC.days / 365)
    assert per_customer_year > 45


def test_keys_indexes_and_foreign_keys_are_restored(generated, db):
    assert constraint_and_index_definitions(db) == generated["before"]
    assert one(db, f"select count(*) from {load.LEDGER}") == 0
    fks = one(
        db, "select count(*) from pg_constraint where contype = 'f' and connamespace = 'shop'::regnamespace"
    )
    assert fks == 6


def test_referential_integrity_beyond_foreign_keys(db):
    assert one(db, "select count(*) from shop.carts c left join shop.orders o on o.order_id = c.converted_order_id "
                   "where c.converted_order_id is not null and (o.order_id is null or o.customer_id <> c.customer_id)") == 0  # fmt: skip
    assert (
        one(
            db,
            "select count(*) from shop.carts where (status = 'converted') <> (converted_order_id is not null)",
        )
        == 0
    )
    assert one(db, "select count(*) from web.events where user_id is not null "
                   "and user_id::bigint not in (select customer_id from shop.customers)") == 0  # fmt: skip
    assert (
        one(db, "select count(*) from esp.email_events where email not in (select email from shop.customers)")
        == 0
    )
    assert one(db, "select count(*) from simulator.customer_truth t left join shop.customers c using (customer_id) "
                   "where c.customer_id is null") == 0  # fmt: skip
    # every order has its items and its totals add up
    assert one(db, "select count(*) from shop.orders o where not exists "
                   "(select 1 from shop.order_items i where i.order_id = o.order_id)") == 0  # fmt: skip
    assert one(db, """
        select count(*) from shop.orders o join (
            select order_id, sum(quantity * unit_price) as subtotal, sum(discount) as discount
            from shop.order_items group by order_id
        ) i using (order_id)
        where o.subtotal <> i.subtotal or o.discount <> i.discount or o.total <> o.subtotal - o.discount
    """) == 0  # fmt: skip
    # every Order Completed event is an order, at its placed_at
    assert one(db, """
        select count(*) from web.events e left join shop.orders o on o.order_id = (e.properties ->> 'order_id')::bigint
        where e.event = 'Order Completed' and (o.order_id is null or o.placed_at <> e.occurred_at
                                               or e.user_id <> o.customer_id::text)
    """) == 0  # fmt: skip
    assert one(db, "select count(*) from web.events where event = 'Order Completed'") == one(
        db, "select count(*) from shop.orders"
    )


def test_timestamps_stay_inside_the_window(db):
    lo, hi = START, END
    assert one(db, "select min(placed_at) from shop.orders") >= lo
    assert one(db, "select max(updated_at) from shop.orders") < hi
    assert one(db, "select max(occurred_at) from web.events") < hi
    assert one(db, "select max(occurred_at) from esp.email_events") < hi
    assert one(db, "select max(received_at) from esp.email_events") < hi
    assert one(db, "select count(*) from esp.email_events where received_at < occurred_at") == 0
    # asynchronous bounces reach the export after an hourly extraction has read their hour
    late = "event_type = 'bounce' and received_at >= date_trunc('hour', occurred_at) + interval '1 hour'"
    assert one(db, f"select count(*) from esp.email_events where {late}") > 0
    assert one(db, "select count(*) from web.events where received_at < occurred_at") == 0
    assert (
        one(db, "select count(*) from shop.customers where updated_at < created_at or signup_at >= %s", hi)
        == 0
    )
    assert (
        one(db, "select count(*) from shop.cart_items where removed_at < added_at or updated_at < added_at")
        == 0
    )


def test_orders_change_status_over_days(db):
    statuses = dict(db.execute("select status, count(*) from shop.orders group by 1").fetchall())
    assert set(statuses) == {"placed", "paid", "shipped", "delivered", "cancelled", "refunded"}
    assert statuses["delivered"] > sum(statuses.values()) / 2
    late = one(db, "select count(*) from shop.orders where updated_at > placed_at + interval '2 days'")
    assert late > 0.5 * one(db, "select count(*) from shop.orders")
    # orders placed in the last hours are still in progress
    assert one(db, "select count(*) from shop.orders where placed_at > %s and status in ('placed', 'paid')",
               END - dt.timedelta(days=1)) > 0  # fmt: skip


def test_customers_look_like_the_issue_says(db):
    n = SPEC.customers
    assert 0.04 * n < one(db, "select count(*) from shop.customers where first_name is null") < 0.12 * n
    consent = one(db, "select count(*) from shop.customers where email_consent_at is not null")
    assert 0.6 * n < consent < 0.75 * n
    assert (
        one(
            db,
            "select count(*) from shop.customers where accepts_email_marketing and email_consent_at is null",
        )
        == 0
    )
    zones = {r[0] for r in db.execute("select distinct timezone from shop.customers")}
    assert "America/New_York" in zones and all("/" in z for z in zones)
    assert (
        one(
            db, "select count(*) from shop.customers where email !~ '^[a-z.]+[0-9]+@example\\.(com|net|org)$'"
        )
        == 0
    )
    assert one(db, "select count(*) from shop.products where stock = 0") > 0
    assert one(db, "select count(*) from shop.products "
                   "where image_url <> 'https://cdn.example-shop.test/p/' || sku || '.jpg'") == 0  # fmt: skip
    assert one(db, "select count(distinct category) from shop.products") == 10


def test_behaviour_types_drive_spend(db):
    spend = dict(
        db.execute("""
            select t.behaviour_type, avg(coalesce(s.total, 0))
            from simulator.customer_truth t
            left join (select customer_id, sum(total) as total from shop.orders group by 1) s using (customer_id)
            group by 1
        """).fetchall()
    )  # fmt: skip
    assert spend["loyal_high_spender"] > 2 * spend["regular"] > 2 * spend["one_time"]
    discount_share = dict(
        db.execute("""
            select t.behaviour_type, avg((o.discount_code is not null)::int)
            from shop.orders o join simulator.customer_truth t using (customer_id) group by 1
        """).fetchall()
    )  # fmt: skip
    assert discount_share["bargain_hunter"] > 2 * discount_share["regular"]
    assert one(db, "select max(n) from (select count(*) as n from shop.orders o "
                   "join simulator.customer_truth t using (customer_id) "
                   "where t.behaviour_type = 'one_time' group by customer_id) x") == 1  # fmt: skip


def test_churners_stop_buying_at_churned_at(db):
    assert one(db, "select count(*) from simulator.customer_truth where (behaviour_type = 'churning') "
                   "<> (churned_at is not null)") == 0  # fmt: skip
    after = one(db, "select count(*) from shop.orders o join simulator.customer_truth t using (customer_id) "
                    "where t.churned_at is not null and o.placed_at >= t.churned_at")  # fmt: skip
    assert after == 0
    # and they mostly stop visiting too: events per day before and after churning
    before, after = db.execute("""
        with churners as (
            select t.customer_id, t.churned_at, greatest(c.signup_at, %(start)s) as active_from
            from simulator.customer_truth t join shop.customers c using (customer_id)
            where t.churned_at is not null
        ), visits as (
            select ch.customer_id,
                   count(e.*) filter (where e.occurred_at < ch.churned_at) as before,
                   count(e.*) filter (where e.occurred_at >= ch.churned_at) as after
            from churners ch left join web.events e on e.user_id = ch.customer_id::text
            group by 1
        )
        select (sum(v.before) / sum(extract(epoch from ch.churned_at - ch.active_from) / 86400))::float,
               (sum(v.after) / sum(extract(epoch from %(end)s - ch.churned_at) / 86400))::float
        from churners ch join visits v using (customer_id)
    """, {"start": START, "end": END}).fetchone()  # fmt: skip
    assert after < 0.2 * before


def test_favourite_category_is_the_top_category(db):
    share = one(db, """
        with per_category as (
            select o.customer_id, p.category, sum(i.quantity) as n
            from shop.order_items i join shop.orders o using (order_id) join shop.products p using (product_id)
            group by 1, 2
        ), ranked as (
            select customer_id, category, n, rank() over (partition by customer_id order by n desc) as r,
                   sum(n) over (partition by customer_id) as total
            from per_category
        )
        select avg((r.category = t.favourite_category)::int)
        from ranked r join simulator.customer_truth t using (customer_id)
        where r.r = 1 and r.total >= 5
    """)  # fmt: skip
    assert share > 0.6


def test_segment_web_events(db):
    events = {r[0] for r in db.execute("select distinct coalesce(event, type) from web.events")}
    assert events == {
        "page", "identify", "Product Viewed", "Products Searched", "Product Added",
        "Product Removed", "Checkout Started", "Order Completed",
    }  # fmt: skip
    assert {r[0] for r in db.execute("select distinct context ->> 'channel' from web.events")} == {
        "web",
        "app",
    }
    assert one(db, "select count(*) from web.events where type = 'track' and event = 'Product Viewed' and not "
                   "(properties ?& array['product_id', 'sku', 'category', 'price'])") == 0  # fmt: skip
    assert one(db, "select count(*) from web.events where event = 'Product Added' and not "
                   "(properties ?& array['cart_id', 'product_id', 'sku', 'price', 'quantity'])") == 0  # fmt: skip
    assert (
        one(
            db,
            "select count(*) from web.events where event = 'Products Searched' and properties ->> 'query' = ''",
        )
        == 0
    )
    assert one(db, "select count(*) from web.events where event = 'Order Completed' "
                   "and jsonb_array_length(properties -> 'products') < 1") == 0  # fmt: skip
    # identify links an anonymous id to a customer, and that device was anonymous before it
    assert one(db, "select count(*) from web.events where type = 'identify' and user_id is null") == 0
    anonymous_before_login = one(db, """
        select count(*) from web.events i
        where i.type = 'identify'
          and exists (select 1 from web.events e where e.anonymous_id = i.anonymous_id
                      and e.user_id is null and e.occurred_at < i.occurred_at)
    """)  # fmt: skip
    assert anonymous_before_login > 0
    # email clicks bring visits tagged with the campaign
    assert one(db, "select count(*) from web.events where context -> 'campaign' ->> 'source' = 'email'") > 0
    # carts of a session show up as its Product Added events
    assert one(
        db, "select count(distinct (properties ->> 'cart_id')) from web.events where event = 'Product Added'"
    ) == one(db, "select count(*) from shop.carts")


def test_carts(db):
    statuses = dict(db.execute("select status, count(*) from shop.carts group by 1").fetchall())
    assert set(statuses) == {"open", "converted", "abandoned"}
    assert one(db, "select count(*) from shop.carts where customer_id is null") > 0
    assert one(db, "select count(*) from shop.cart_items where removed_at is not null") > 0
    assert one(db, "select count(*) from shop.carts c where not exists "
                   "(select 1 from shop.cart_items i where i.cart_id = c.cart_id)") == 0  # fmt: skip


def test_email_events(db):
    types = dict(db.execute("select event_type, count(*) from esp.email_events group by 1").fetchall())
    assert set(types) == {"send", "delivery", "open", "click", "bounce", "complaint", "unsubscribe"} - (
        set() if types.get("complaint") else {"complaint"}
    )
    assert types["delivery"] < types["send"] and types["open"] > types["click"]
    assert (
        one(db, "select count(*) from esp.email_events where (event_type = 'click') <> (url is not null)")
        == 0
    )
    assert (
        one(
            db,
            "select count(*) from esp.email_events where (event_type = 'bounce') <> (bounce_type is not null)",
        )
        == 0
    )
    # nobody is mailed without consent, or after unsubscribing
    assert one(db, """
        select count(*) from esp.email_events e join shop.customers c using (email)
        where e.event_type = 'send' and (c.email_consent_at is null or e.occurred_at < c.email_consent_at)
    """) == 0  # fmt: skip
    assert one(db, """
        select count(*) from esp.email_events s join esp.email_events u
          on u.email = s.email and u.event_type = 'unsubscribe' and s.event_type = 'send' and s.occurred_at > u.occurred_at
    """) == 0  # fmt: skip
    # engagement follows behaviour: loyal customers open more than one-time buyers
    rates = dict(db.execute("""
        select t.behaviour_type, avg((e.event_type = 'open')::int) from esp.email_events e
        join shop.customers c using (email) join simulator.customer_truth t using (customer_id)
        where e.event_type in ('open', 'delivery') group by 1
    """).fetchall())  # fmt: skip
    assert rates["loyal_high_spender"] > 2 * rates["one_time"]
