"""timers.ingest against real Postgres: a burst is read once and a late commit behind the
cursor is not lost; hostile rows are set aside and the rest goes on; clients cannot speak
for the email provider or the shop; batch candidates are read by the mart's contract."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from campaigns import cli, suppressions, timers
from campaigns.engine import Engine
from campaigns.schema import load_campaigns
from harness import fixtures
from harness.smtp_sink import read_index
from warehouse import settings

pytestmark = pytest.mark.integration

CAMPAIGNS = load_campaigns()


def test_a_burst_is_read_once_and_a_late_commit_behind_the_cursor_is_read_next(
    warehouse_conn, test_databases
):
    db = warehouse_conn
    db.execute("truncate ops.campaign_triggers, ops.campaign_cursors, ops.decision_log, raw.events")
    abandoned = datetime.now(UTC) - timedelta(minutes=40)
    fixtures.insert_events(db, [fixtures.cart_event(cid, abandoned) for cid in range(1, 201)])
    assert timers.ingest(db, CAMPAIGNS).events == 200
    # the burst is inside the OVERLAP before the cursor, but it had committed before that read
    assert timers.ingest(db, CAMPAIGNS).events == 0

    # a second collector's batch: received before the cursor, committed after the next ingest
    # (written in a savepoint, so its rows carry a subtransaction's xid)
    cursor = db.execute("select position from ops.campaign_cursors where name = 'raw.events'").fetchone()[0]
    with psycopg.connect(test_databases["warehouse"]) as late:
        late.execute("select 1")  # its transaction is open: insert_events writes in a savepoint
        fixtures.insert_events(
            late,
            [(*fixtures.cart_event(500, abandoned, cart_id="late")[:-1], cursor - timedelta(seconds=1))],
            notify=False,
        )  # fmt: skip
        assert timers.ingest(db, CAMPAIGNS).events == 0  # not committed yet: nothing to read
        late.commit()
    assert timers.ingest(db, CAMPAIGNS).events == 1
    assert (
        db.execute(
            "select count(*) from ops.campaign_triggers where campaign = 'cart_abandonment' and customer_id = 500"
        ).fetchone()[0]
        == 1
    )


# --- hostile rows: set aside with their error, everything else goes on ----------------------

RAW_AND_OPS = (
    "ops.campaign_triggers, ops.campaign_cursors, ops.decision_log, ops.dead_letters, ops.suppressions,"
    " ops.consent, raw.events, raw.identity_links"
)


@pytest.fixture
def db(warehouse_conn):
    warehouse_conn.execute(f"truncate {RAW_AND_OPS}")
    return warehouse_conn


def insert_raw(
    db,
    message_id: str,
    *,
    event: str = "Product Added",
    user_id: str | None = "7",
    properties: dict | str | None = None,
    occurred_at: str | None = None,
    source: str = "web",
) -> None:
    """One row straight into raw.events (`properties` a dict, or JSON text such as 1e400
    that Python cannot write): what a collector without validation, or an older one,
    could have stored. By default a cart event of 40 minutes ago, catalogue product 3."""
    if properties is None:
        properties = {"product_id": "3", "price": 79.0, "quantity": 1, "cart_id": f"c-{message_id}"}
    db.execute(
        """insert into raw.events (message_id, type, event, user_id, anonymous_id, properties,
               occurred_at, received_at, source)
           values (%s, 'track', %s, %s, %s, %s::jsonb,
                   coalesce(%s::timestamptz, now() - interval '40 minutes'), now(), %s)""",
        (
            message_id,
            event,
            user_id,
            f"anon-{message_id}",
            properties if isinstance(properties, str) else json.dumps(properties),
            occurred_at,
            source,
        ),
    )


def too_long_for_an_index(seed: int) -> str:
    """10,000 characters that do not compress below the btree limit (about 2,700 bytes)."""
    return "".join(f"{i * seed % 65521:05x}" for i in range(2000))


def dead(db) -> dict[str, str]:
    return dict(
        db.execute("select source_key, error from ops.dead_letters where stage = 'raw.events'").fetchall()
    )


def cart_timers(db) -> dict[int, dict]:
    return {
        cid: payload
        for cid, payload in db.execute(
            "select customer_id, payload from ops.campaign_triggers where campaign = 'cart_abandonment'"
        )
    }


# each of these failed every run of trigger_campaigns before (issue 12): the ingest
# raised, its transaction rolled back, and the cursor never moved past the event
KILLERS = {
    "year 10000": ({"occurred_at": "9999-12-31T23:59:59-01:00"}, "timestamp 10000-01-01"),
    "-infinity": ({"occurred_at": "-infinity"}, "timestamp -infinity"),
    "nan quantity": (
        {"properties": {"product_id": "3", "price": 79, "quantity": "nan", "cart_id": "x"}},
        "properties.quantity 'nan' is not a number",
    ),
    "1e400 quantity": (
        {"properties": '{"product_id": "3", "price": 79, "quantity": 1e400, "cart_id": "x"}'},
        "properties.quantity 1000000000",
    ),
    "20-digit userId": ({"user_id": "12345678901234567890"}, "userId has 20 digits"),
    "superscript product id": (
        {"properties": {"product_id": "²", "price": 79, "quantity": 1, "cart_id": "x"}},
        "properties.product_id '²' is not a catalogue product id",
    ),
    "products not objects": (
        {"event": "Checkout Started", "properties": {"value": 5, "products": [3, "x"]}},
        "properties.products[0] is not an object",
    ),
    "properties an array": ({"properties": "[1, 2]"}, "properties is a JSON list, not an object"),
    # nothing checks this one: the unique index on the trigger key refuses it, and
    # halving the page finds the row (dead_letters.apply_rows)
    "cart id too long for the index": (
        {
            "properties": {
                "product_id": "3",
                "price": 79,
                "quantity": 1,
                "cart_id": too_long_for_an_index(7919),
            }
        },
        "ProgramLimitExceeded",
    ),
}


@pytest.mark.parametrize("killer", sorted(KILLERS))
def test_a_hostile_event_is_set_aside_and_the_others_are_ingested(db, killer):
    fields, error = KILLERS[killer]
    insert_raw(db, "good-before", user_id="5")
    insert_raw(db, "hostile", **fields)
    insert_raw(db, "good-after", user_id="6")
    stats = timers.ingest(db, CAMPAIGNS)
    assert stats.dead_letters == 1 and stats.events == 3
    ((key, message),) = dead(db).items()
    assert key == "hostile" and error in message, message
    assert set(cart_timers(db)) >= {5, 6}
    # the cursor moved past it: nothing is read again, nothing fails again
    again = timers.ingest(db, CAMPAIGNS)
    assert again.events == 0 and again.dead_letters == 0


def test_many_hostile_events_in_one_page_leave_every_good_one(db):
    goods = list(range(100, 160))
    for cid in goods:
        insert_raw(db, f"good-{cid}", user_id=str(cid))
        if cid % 6 == 0:  # an unchecked failure every few rows: the page is halved around each
            insert_raw(
                db,
                f"bad-{cid}",
                properties={"product_id": 3, "price": 1, "cart_id": too_long_for_an_index(cid)},
            )
    stats = timers.ingest(db, CAMPAIGNS)
    assert stats.dead_letters == 10
    assert set(cart_timers(db)) == set(goods)
    assert all(e.startswith("ProgramLimitExceeded") for e in dead(db).values())


def test_events_stored_in_a_payload_name_products_and_quantities_only(db):
    insert_raw(
        db,
        "forged",
        user_id="8",
        properties={
            "product_id": "3",
            "name": "FREE PHONE",
            "price": 0.01,
            "image_url": "https://evil.example/x.png",
            "quantity": "2",
            "cart_id": "c8",
        },
    )
    timers.ingest(db, CAMPAIGNS)
    assert cart_timers(db)[8]["items"]["3"].keys() == {"quantity", "at"}
    assert cart_timers(db)[8]["items"]["3"]["quantity"] == 2


# --- who may speak for the email provider and the shop ----------------------------------------


def test_suppressions_come_only_from_signed_webhooks(db):
    fixtures.insert_customers(db, [21, 22, 23, 24])
    # clients: an unsubscribe naming an address, a complaint naming only a user id
    insert_raw(
        db, "c1", event="Unsubscribed", user_id="21", properties='{"email": "customer21@example.test"}'
    )
    insert_raw(db, "c2", event="Marked as Spam", user_id="22", properties={})
    # signed webhooks: the provider's bounce with the address, its complaint by user id
    insert_raw(
        db, "webhook:esp:1", event="Email Bounced", user_id="23", source="webhook:esp",
        properties={"email": "customer23@example.test", "bounce_type": "hard"},
    )  # fmt: skip
    insert_raw(db, "webhook:esp:2", event="Marked as Spam", user_id="24", source="webhook:esp", properties={})
    stats = timers.ingest(db, CAMPAIGNS)
    assert stats.untrusted == 2 and stats.suppressions == 2
    suppressed = {h for (h,) in db.execute("select email_hash from ops.suppressions")}
    assert suppressed == {suppressions.hash_email(f"customer{i}@example.test") for i in (23, 24)}
    assert db.execute("select count(*) from ops.consent").fetchone()[0] == 0


def test_only_a_signed_purchase_cancels_a_timer(db):
    insert_raw(db, "cart-31", user_id="31")
    insert_raw(db, "cart-32", user_id="32")
    bought = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    insert_raw(db, "forged-order", event="Order Completed", user_id="31", properties={}, occurred_at=bought)
    insert_raw(
        db, "webhook:shop:9", event="Order Completed", user_id="32", properties={}, occurred_at=bought,
        source="webhook:shop",
    )  # fmt: skip
    stats = timers.ingest(db, CAMPAIGNS)
    assert stats.untrusted == 1 and stats.cancelled == 1
    status = dict(db.execute("select customer_id, status from ops.campaign_triggers").fetchall())
    assert status == {31: "pending", 32: "cancelled"}


# --- batch candidates: the mart's contract -----------------------------------------------------


def contract() -> dict:
    models = yaml.safe_load(
        (settings.PROJECT_ROOT / "dbt_project/models/marts/_marts__models.yml").read_text()
    )
    (model,) = [m for m in models["models"] if m["name"] == "trigger_candidates"]
    return model


def test_timers_read_the_columns_the_marts_contract_enforces():
    model = contract()
    assert model["config"]["contract"] == {"enforced": True}
    assert {c["name"]: c["data_type"] for c in model["columns"]} == timers.CANDIDATE_COLUMNS


def test_candidates_from_the_contracted_mart_and_bad_rows_set_aside(db):
    columns = ", ".join(f"{name} {kind}" for name, kind in timers.CANDIDATE_COLUMNS.items())
    db.execute("create schema if not exists marts")
    db.execute(
        f"drop table if exists marts.trigger_candidates; create table marts.trigger_candidates ({columns})"
    )
    now = datetime.now(UTC)
    rows = [
        ("t-ok", 41, "lapsed_vip", now - timedelta(days=90), now - timedelta(hours=1), '{"fm_score": 5}'),
        ("t-stale", 42, "lapsed_vip", now - timedelta(days=90), now - timedelta(days=30), "{}"),
        ("t-array", 43, "lapsed_vip", now - timedelta(days=90), now - timedelta(hours=1), "[1]"),
        ("t-far", 44, "lapsed_vip", now - timedelta(days=90), "infinity", "{}"),
        ("t-other", 45, "cart_abandoned", now - timedelta(days=90), now - timedelta(hours=1), "{}"),
    ]
    for r in rows:
        db.execute(
            "insert into marts.trigger_candidates values (%s, %s, %s, %s, %s::timestamptz, %s::jsonb, now())",
            r,
        )
    stats = timers.ingest(db, CAMPAIGNS, candidates=True)
    triggers = db.execute(
        "select campaign, customer_id, trigger_key, payload from ops.campaign_triggers where campaign = 'vip_offer'"
    ).fetchall()
    assert triggers == [("vip_offer", 41, "candidate-t-ok", {"fm_score": 5})]
    letters = dict(
        db.execute("select source_key, error from ops.dead_letters where stage = 'marts.trigger_candidates'")
    )
    assert letters.keys() == {"t-array", "t-far"} and stats.dead_letters == 2
    assert "not an object" in letters["t-array"] and "infinity" in letters["t-far"]


def test_a_mart_that_breaks_its_contract_stops_only_the_batch_candidates(db):
    db.execute("create schema if not exists marts")
    db.execute(
        "drop table if exists marts.trigger_candidates; create table marts.trigger_candidates (id int)"
    )
    insert_raw(db, "cart-51", user_id="51")
    stats = timers.ingest(db, CAMPAIGNS, candidates=True)
    assert any("batch candidates skipped" in n and "trigger_type" in n for n in stats.notes), stats.notes
    assert set(cart_timers(db)) == {51}  # the real-time path went on
    db.execute("drop table marts.trigger_candidates")


def test_dead_letters_command_lists_them(db):
    insert_raw(db, "hostile-cli", user_id="12345678901234567890")
    timers.ingest(db, CAMPAIGNS)
    result = CliRunner().invoke(cli.app, ["dead-letters", "--stage", "raw.events"])
    assert result.exit_code == 0, result.output
    assert "raw.events  hostile-cli  userId has 20 digits" in result.stdout


# --- carts seen only in the batch extracts -----------------------------------------------------


def shop_world(shop, now: datetime, customers: list[int]) -> None:
    """The shop's database: customers (consenting, where it is daytime) and the sample catalogue."""
    for table in ("cart_items", "carts", "order_items", "orders", "customers", "products"):
        shop.execute(f"delete from shop.{table}")
    shop.execute("delete from web.events")
    for cid in customers:
        shop.execute(
            """insert into shop.customers values (%s, %s, 'Ada', 'Tester', true, %s, %s, 'GB', %s, %s, %s)""",
            (cid, f"customer{cid}@example.test", now, fixtures.daytime_timezone(), now, now, now),
        )
    for pid, sku, name, category, price in fixtures.SAMPLE_PRODUCTS:
        shop.execute(
            "insert into shop.products values (%s, %s, %s, %s, %s, %s, 100, true, %s, %s)",
            (pid, sku, name, category, price, fixtures.image_url(sku), now, now),
        )


def extract_everything(window_end: datetime) -> None:
    from extract.load import SOURCE_TABLES, extract_table

    for source in SOURCE_TABLES:
        extract_table(source.raw_table, window_end)


def test_carts_and_views_seen_only_in_the_extracts_get_their_emails(db, shop_conn, sink):
    db.execute("truncate ops.extract_batches, ops.send_ledger, ops.experiment_assignments")
    now = datetime.now(UTC)
    carter, buyer = fixtures.treated_customers(CAMPAIGNS["cart_abandonment"], 2, 600)
    (browser,) = fixtures.treated_customers(CAMPAIGNS["browse_abandonment"], 1, 700)
    shop_world(shop_conn, now, [carter, buyer, browser])
    left, bought = now - timedelta(hours=2), now - timedelta(hours=3)
    # a cart left two hours ago: the lamp stays, the mug was removed; and a cart that was bought
    shop_conn.execute(
        "insert into shop.carts values (901, %s, 'anon-901', 'abandoned', null, %s, %s),"
        " (902, %s, 'anon-902', 'converted', 77, %s, %s)",
        (carter, left, left, buyer, bought, bought),
    )
    shop_conn.execute(
        "insert into shop.cart_items values (1, 901, 3, 1, 79.00, %s, null, %s), (2, 901, 1, 2, 14.00, %s, %s, %s),"
        " (3, 902, 5, 1, 18.00, %s, null, %s)",
        (left, left, left, left, left, bought, bought),
    )
    # the web export: a product view two hours ago that the collector never saw
    shop_conn.execute(
        """insert into web.events values ('w-view', 'track', 'Product Viewed', 'anon-w', %s,
               '{"product_id": "6", "name": "forged"}', '{}', %s, %s)""",
        (str(browser), left, left),
    )
    extract_everything(now + timedelta(seconds=1))

    stats = timers.ingest(db, CAMPAIGNS, candidates=True)
    assert stats.extract_rows == 4 and stats.dead_letters == 0  # lamp, mug added and removed; the view
    triggers = {
        (campaign, cid): (key, payload)
        for campaign, cid, key, payload in db.execute(
            "select campaign, customer_id, trigger_key, payload from ops.campaign_triggers"
        )
    }
    assert set(triggers) == {("cart_abandonment", carter), ("browse_abandonment", browser)}
    key, cart = triggers[("cart_abandonment", carter)]
    assert key == "cart_id-901" and cart["items"]["1"]["removed"] and not cart["items"]["3"].get("removed")
    # extract batches are read once
    assert timers.ingest(db, CAMPAIGNS, candidates=True).extract_rows == 0

    assert Engine(campaigns=CAMPAIGNS, senders=1).run().sent == 2
    mail = {m["To"]: m for m in sent_mail(sink)}
    cart = part_of(mail[f"customer{carter}@example.test"], "text/plain")
    assert "- Oak desk lamp: 1 x $79.00\r\nTotal: $79.00" in cart and "mug: 2 x" not in cart
    browse = part_of(mail[f"customer{browser}@example.test"], "text/html")
    assert "Fig &amp; cedar scented candle" in browse and "forged" not in browse


def sent_mail(sink) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes((sink.directory / m["file"]).read_bytes(), policy=email.policy.default)
        for m in read_index(sink.directory)
    ]


def part_of(message: email.message.EmailMessage, content_type: str) -> str:
    return next(p for p in message.walk() if p.get_content_type() == content_type).get_content()


def test_provider_export_rows_that_are_not_addresses_are_set_aside(db):
    db.execute("truncate raw.esp_email_events")
    db.execute(
        """insert into raw.esp_email_events (event_id, message_id, campaign, email, event_type, bounce_type,
               occurred_at, _batch_id, _loaded_at)
           values ('e-1', 'm-1', 'cart_abandonment', 'customer91@example.test', 'bounce', 'hard', now(), 'b', now()),
                  ('e-2', 'm-2', 'cart_abandonment', 'no address at all', 'complaint', null, now(), 'b', now()),
                  ('e-3', 'm-3', 'cart_abandonment', 'customer93@example.test', 'unsubscribe', null, now(), 'b', now())"""
    )
    stats = timers.ingest(db, CAMPAIGNS)
    assert stats.suppressions == 2 and stats.dead_letters == 1
    assert dict(db.execute("select source_key, error from ops.dead_letters")) == {
        "e-2": "email is not an address"
    }
    assert timers.ingest(db, CAMPAIGNS).dead_letters == 0  # read again in the overlap: recorded once
    assert db.execute("select count(*) from ops.dead_letters").fetchone()[0] == 1
