"""Erasure removes a customer from every place their address and data live, and stays erased.

The pipeline fixture runs the product for real on a small simulated shop: the
simulator's source database, extract_load, the collector process (identify
traits, context traits, an anonymous visit, a provider webhook naming the
recipient, a form field nested deep in properties, a tracked URL carrying the
address), a dbt build (staging, intermediate, marts, snapshot), ML training,
scoring with its CRM export and recommendations (MLflow in a throwaway store),
a preview and a real send through the engine to an SMTP sink. Then
`python -m campaigns erase` runs, and every place is checked: each had the
customer's rows before, none after, and no table of the warehouse holds the
address anywhere in any row. A neighbour's data stays.

The concurrency tests race the erasure against a trigger ingest and an engine
batch that are in flight (holding their locks) when it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import psycopg
import pytest

from campaigns import assignment, deliver, suppressions, timers
from campaigns.engine import Engine
from campaigns.schema import load_campaigns
from harness import fixtures
from harness.smtp_sink import SmtpSink, free_port, read_index
from tests.integration.dbt_support import run_dbt
from tests.integration.test_collector_api import ESP_SECRET, WRITE_KEY, CollectorProcess, basic, sign_webhook
from warehouse import env, settings

pytestmark = pytest.mark.integration

CAMPAIGNS = load_campaigns()
CART = CAMPAIGNS["cart_abandonment"]

# Every place the subject's rows must be found before the erasure and not after
# (the migrations, the dbt project, ml/ and the collector name them), by
# %(id)s, %(text_id)s, %(email)s, %(anon)s, %(orders)s, %(carts)s.
PLACES = {
    "raw.shop_customers": "customer_id = %(id)s",
    "raw.shop_orders": "customer_id = %(id)s",
    "raw.shop_order_items": "order_id = any(%(orders)s)",
    "raw.shop_carts": "customer_id = %(id)s",
    "raw.shop_cart_items": "cart_id = any(%(carts)s)",
    "raw.web_events": "user_id = %(text_id)s",
    "raw.esp_email_events": "lower(email) = %(email)s",
    "raw.identity_links": "user_id = %(text_id)s",
    "raw.events": "user_id = %(text_id)s",
    "raw.events (anonymous visit)": "anonymous_id = %(anon)s and user_id is null",
    "raw.events (webhook recipient)": "lower(properties->'message'->>'recipient') = %(email)s",
    "raw.events (nested form field)": "lower(properties#>>'{form,fields,0,email_address}') = %(email)s",
    "raw.events (tracked url)": "context->'page'->>'url' ilike '%%' || replace(%(email)s, '@', '%%40')",
    "ops.campaign_triggers": "customer_id = %(id)s",
    "ops.send_ledger": "customer_id = %(id)s",
    "ops.decision_log": "customer_id = %(id)s",
    "ops.experiment_assignments": "customer_id = %(id)s",
    "ops.consent": "customer_id = %(id)s",
    "intermediate.int_events_stitched": "user_customer_id = %(id)s or customer_id = %(id)s",
    "intermediate.int_identities_resolved": "customer_id = %(id)s",
    "intermediate.int_sessions_inferred": "customer_id = %(id)s",
    "intermediate.int_order_lines_enriched": "customer_id = %(id)s",
    "intermediate.int_email_messages_unioned": "customer_id = %(id)s or lower(email) = %(email)s",
    "marts.customer_features": "customer_id = %(id)s",
    "marts.customer_rfm": "customer_id = %(id)s",
    "marts.customer_category_affinity": "customer_id = %(id)s",
    "marts.campaign_facts": "customer_id = %(id)s",
    "snapshots.customer_rfm_snapshot": "customer_id = %(id)s",
    "ml.customer_segments": "customer_id = %(id)s",
    "ml.customer_segment_history": "customer_id = %(id)s",
    "ml.crm_segment_sync": "customer_id = %(id)s",
    "ml.recommendations": "customer_id = %(id)s",
}


def count(conn: psycopg.Connection, place: str, params: dict) -> int:
    relation = place.split(" ")[0]
    return conn.execute(f"select count(*) from {relation} where {PLACES[place]}", params).fetchone()[0]


def base_tables(conn: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            """select quote_ident(table_schema) || '.' || quote_ident(table_name) from information_schema.tables
               where table_type = 'BASE TABLE' and table_schema not in ('pg_catalog', 'information_schema')"""
        )
    ]


def tables_with_column(conn: psycopg.Connection, column: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            """select format('%%I.%%I', c.table_schema, c.table_name) from information_schema.columns c
               join information_schema.tables t using (table_schema, table_name)
               where t.table_type = 'BASE TABLE' and c.column_name = %s""",
            (column,),
        )
    ]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=True)


def wait_blocked_or_done(conn: psycopg.Connection, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the erasure process waits on a lock or has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if conn.execute(
            """select exists (select from pg_stat_activity where application_name = 'emailp-erasure'
                              and wait_event_type = 'Lock')"""
        ).fetchone()[0]:
            return
        time.sleep(0.05)
    assert process.poll() is not None or time.monotonic() < deadline, (
        "the erasure neither waited nor finished"
    )


def erase_process(customer_id: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "campaigns", "erase", "--customer-id", str(customer_id), "--yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


# ---- the whole product, then the erasure ------------------------------------------------------


def _pick_customers(db: psycopg.Connection) -> tuple[int, int]:
    """Two mailable customers with orders, carts, web visits and provider events (no bounce,
    complaint or unsubscribe), whom the cart campaign does not hold out."""
    candidates = [
        r[0]
        for r in db.execute(
            """select c.customer_id from raw.shop_customers c
               where exists (select from raw.shop_orders o where o.customer_id = c.customer_id)
                 and exists (select from raw.shop_carts k where k.customer_id = c.customer_id)
                 and exists (select from raw.web_events w where w.user_id = c.customer_id::text)
                 and exists (select from raw.esp_email_events e where e.email = c.email)
                 and not exists (select from raw.esp_email_events e where e.email = c.email
                                 and e.event_type in ('bounce', 'complaint', 'unsubscribe'))
               order by c.customer_id"""
        )
    ]
    treated = [c for c in candidates if assignment.assign(CART, c)[0] != assignment.HOLDOUT]
    return treated[0], treated[1]


def _collector_calls(log: Path, subject: dict, neighbour: dict, product: tuple, now: datetime) -> None:
    """What the shop's site and the email provider send about the two customers."""
    process = CollectorProcess(os.environ["WAREHOUSE_URL"], log).start()
    try:
        with httpx.Client(base_url=process.url, timeout=10) as http:
            anon = subject["anon"]
            cart_at = (now - timedelta(minutes=35)).isoformat()
            batch = [
                {"type": "track", "event": "Product Viewed", "anonymousId": anon, "properties": {}},
                {
                    "type": "identify",
                    "userId": str(subject["id"]),
                    "anonymousId": anon,
                    "traits": {"email": subject["email"].upper(), "first_name": "Erin"},
                },
                {
                    "type": "page",
                    "anonymousId": anon,
                    "context": {
                        "page": {
                            "url": f"https://shop.example/welcome?email={quote(subject['email'], safe='')}"
                        }
                    },
                },
                {
                    "type": "track",
                    "event": "Form Submitted",
                    "anonymousId": f"anon-form-{uuid.uuid4()}",
                    "properties": {"form": {"fields": [{"email_address": subject["email"]}]}},
                },
            ]
            for who in (subject, neighbour):
                call = fixtures.cart_call(
                    who["id"], now - timedelta(minutes=35), product=product, cart_id=who["cart"]
                )
                call["context"] = {"traits": {"email": who["email"]}}
                call["timestamp"] = cart_at
                batch.append(call)
            for call in batch:
                call.setdefault("messageId", f"erasure-{uuid.uuid4()}")
            response = http.post("/v1/batch", json={"batch": batch}, headers=basic(WRITE_KEY))
            assert response.status_code == 200, response.text
            webhook_id = f"msg_{uuid.uuid4()}"
            body = orjson.dumps(
                {
                    "type": "email.opened",
                    "timestamp": now.isoformat(),
                    "data": {"campaign": "newsletter", "message": {"recipient": subject["email"]}},
                }
            )
            response = http.post(
                "/webhooks/esp", content=body, headers=sign_webhook(ESP_SECRET, body, webhook_id)
            )
            assert response.status_code == 200, response.text
    finally:
        process.stop()


@pytest.fixture(scope="module")
def pipeline(test_databases, mlflow_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("erasure")
    outbox = tmp / "outbox"
    port = free_port()
    previews = settings.LOCAL_DIR / "previews"
    with (
        env.overridden(
            {"AIRFLOW_CONN_SMTP_CAMPAIGNS": f"smtp://127.0.0.1:{port}", "SMTP_SINK_DIR": str(outbox)}
        ),
        SmtpSink(outbox, port),
        psycopg.connect(test_databases["warehouse"], autocommit=True) as db,
    ):
        cli("simulator", "generate", "--customers", "800", "--days", "240", "--seed", "3")
        cli("extract")
        subject_id, neighbour_id = _pick_customers(db)
        now = datetime.now(UTC)
        people = {}
        for key, cid in (("subject", subject_id), ("neighbour", neighbour_id)):
            email = db.execute(
                "select lower(email) from raw.shop_customers where customer_id = %s", (cid,)
            ).fetchone()[0]
            cart = db.execute(
                "select cart_id::text from raw.shop_carts where customer_id = %s order by updated_at desc limit 1",
                (cid,),
            ).fetchone()[0]  # a cart the shop knows
            people[key] = {"id": cid, "email": email, "anon": f"anon-erasure-{cid}", "cart": cart}
            # the shop's next extract: the customer moved to a time zone where it is day now
            db.execute(
                """insert into raw.shop_customers select customer_id, email, first_name, last_name, true, %s,
                          %s, country, signup_at, created_at, %s, 'profile-update', %s
                   from raw.shop_customers where customer_id = %s order by updated_at desc limit 1""",
                (now, fixtures.daytime_timezone(now), now, now, cid),
            )
            db.execute(
                "insert into ops.consent (customer_id, email_hash, granted, source) values (%s, %s, true, 'preferences')",
                (cid, suppressions.hash_email(email)),
            )
        product = db.execute(
            "select product_id, sku, name, price::float from raw.shop_products where is_active order by product_id limit 1"
        ).fetchone()
        _collector_calls(tmp / "collector.log", people["subject"], people["neighbour"], product, now)
        run_dbt({"target": tmp / "dbt_target"}, "build")
        cli("ml", "train", "--target", "all", "--folds", "2")
        cli("ml", "score")
        cli("ml", "recommend")
        try:
            cli(
                "campaigns",
                "preview",
                "cart_abandonment",
                "--customer-id",
                str(subject_id),
                "--out",
                str(previews),
            )
            timers.ingest(db, CAMPAIGNS)
            stats = Engine(campaigns=CAMPAIGNS, senders=1).run()
            sent_to = {r["rcpt"][0].lower() for r in read_index(outbox)}
            assert {people["subject"]["email"], people["neighbour"]["email"]} <= sent_to, stats.as_dict()
            yield {**people, "db": db, "outbox": outbox, "previews": previews, "mlflow": mlflow_store}
        finally:
            for path in previews.glob(f"*.{subject_id}.*"):
                path.unlink()


def params_of(db: psycopg.Connection, person: dict) -> dict:
    cid = person["id"]
    return {
        "id": cid,
        "text_id": str(cid),
        "email": person["email"],
        "anon": person["anon"],
        "orders": [
            r[0] for r in db.execute("select order_id from raw.shop_orders where customer_id = %s", (cid,))
        ],
        "carts": [
            r[0] for r in db.execute("select cart_id from raw.shop_carts where customer_id = %s", (cid,))
        ],
    }


@pytest.fixture(scope="module")
def erased(pipeline):
    db, subject, neighbour = pipeline["db"], pipeline["subject"], pipeline["neighbour"]
    subject_params = params_of(db, subject)
    neighbour_params = params_of(db, neighbour)
    before = {place: count(db, place, subject_params) for place in PLACES}
    neighbour_before = {place: count(db, place, neighbour_params) for place in PLACES}
    index_lines = len(read_index(pipeline["outbox"]))
    out = cli("campaigns", "erase", "--customer-id", str(subject["id"]), "--yes").stdout
    return {
        **pipeline,
        "report": json.loads(out),
        "params": subject_params,
        "before": before,
        "neighbour_params": neighbour_params,
        "neighbour_before": neighbour_before,
        "index_lines": index_lines,
    }


@pytest.mark.slow
def test_erasure_removes_the_customer_from_every_table(erased):
    db, params = erased["db"], erased["params"]
    email = params["email"]
    missing = [place for place, n in erased["before"].items() if n == 0]
    assert not missing, f"the scenario left these places empty before the erasure: {missing}"
    after = {place: count(db, place, params) for place in PLACES}
    assert after == dict.fromkeys(PLACES, 0)
    # nowhere in any row of any table, in any column, at any depth, also percent-encoded
    for table in base_tables(db):
        for needle in (email, quote(email, safe="").lower()):
            n = db.execute(f"select count(*) from {table} t where strpos(lower(t::text), %s) > 0", (needle,))
            assert n.fetchone()[0] == 0, (table, needle)
    for column, value in (("customer_id", params["id"]), ("user_customer_id", params["id"])):
        for table in tables_with_column(db, column):
            n = db.execute(f"select count(*) from {table} where {column}::text = %s", (str(value),))
            assert n.fetchone()[0] == 0, (table, column)
    for column in ("user_id", "anonymous_id"):
        for table in tables_with_column(db, column):
            n = db.execute(
                f"select count(*) from {table} where {column}::text = any(%s)",
                ([str(params["id"]), params["anon"]],),
            )
            assert n.fetchone()[0] == 0, (table, column)
    # the neighbour keeps every row
    assert {place: count(db, place, erased["neighbour_params"]) for place in PLACES} == erased[
        "neighbour_before"
    ]
    # what remains: hashes and counts
    h = suppressions.hash_email(email)
    assert db.execute("select reason from ops.suppressions where email_hash = %s", (h,)).fetchone() == (
        "erasure",
    )
    assert db.execute(
        "select count(*) from ops.erased_customers where customer_id_hash = ops.customer_id_hash(%s)",
        (params["id"],),
    ).fetchone() == (1,)
    log = db.execute("select email_hash, rows_deleted from ops.erasure_log").fetchall()
    assert [row[0] for row in log] == [h] and email not in json.dumps(log[0][1])
    assert erased["report"]["customers"] == 1 and erased["report"]["rows_deleted"]["raw.events"] >= 6


@pytest.mark.slow
def test_erasure_removes_the_customer_from_every_file(erased):
    email, cid = erased["params"]["email"], erased["params"]["id"]
    neighbour = erased["neighbour"]["email"]

    def recipients() -> list[str]:
        return [
            path.read_bytes().split(b"\r\n\r\n", 1)[0].decode().lower()
            for path in erased["outbox"].glob("*.eml")
        ]

    heads = recipients()
    assert not any(email in head for head in heads) and any(neighbour in head for head in heads)
    index = read_index(erased["outbox"])
    assert len(index) == erased["index_lines"] and email not in json.dumps(index).lower()
    assert any(neighbour in line["rcpt"] for line in index)
    assert not list(erased["previews"].glob(f"*.{cid}.*"))
    # the CRM export keeps everyone else
    (export,) = (erased["mlflow"] / "exports").glob("*.csv")
    ids = [line.split(",")[0] for line in export.read_text().splitlines()[1:]]
    assert str(cid) not in ids and str(erased["neighbour"]["id"]) in ids
    assert erased["report"]["rows_deleted"]["files:exports"] == 1
    # MLflow (tracking store and artifacts) holds nothing of the customer, and its input
    # examples no identifier of anyone
    examples = 0
    for path in erased["mlflow"].rglob("*"):
        if path.is_file() and path.parent.name != "exports":
            assert email.encode() not in path.read_bytes().lower(), path
        if path.name.endswith("input_example.json"):
            examples += 1
            columns = set(json.loads(path.read_text()).get("columns", []))
            assert not columns & {"customer_id", "user_id", "anonymous_id", "email"}, path
    assert examples


@pytest.mark.slow
def test_the_erased_customer_is_never_mailed_again(erased):
    db, cid, email = erased["db"], erased["params"]["id"], erased["params"]["email"]
    sent = len(read_index(erased["outbox"]))  # other customers' timers (from the extracts) may still send
    # the shop re-sends the profile, the customer's open browser tab sends a cart event
    fixtures.insert_customers(db, [cid], timezone=fixtures.daytime_timezone())
    db.execute("update raw.shop_customers set email = %s where customer_id = %s", (email, cid))
    fixtures.insert_events(db, [fixtures.cart_event(cid, datetime.now(UTC) - timedelta(minutes=40))])
    timers.ingest(db, CAMPAIGNS)
    Engine(campaigns=CAMPAIGNS, senders=1).run()
    new_recipients = [r for line in read_index(erased["outbox"])[sent:] for r in line["rcpt"]]
    assert email not in [r.lower() for r in new_recipients]
    for table in (
        "ops.campaign_triggers",
        "ops.decision_log",
        "ops.send_ledger",
        "ops.experiment_assignments",
    ):
        assert (
            db.execute(f"select count(*) from {table} where customer_id = %s", (cid,)).fetchone()[0] == 0
        ), table


# ---- concurrency ------------------------------------------------------------------------------


def _cart_customers(db: psycopg.Connection, start: int) -> tuple[int, int]:
    subject, neighbour = fixtures.treated_customers(CART, 2, start)
    if not db.execute("select exists (select from raw.shop_products)").fetchone()[0]:
        fixtures.insert_products(db)
    fixtures.insert_customers(db, [subject, neighbour], timezone=fixtures.daytime_timezone())
    at = datetime.now(UTC) - timedelta(minutes=40)
    fixtures.insert_events(db, [fixtures.cart_event(subject, at), fixtures.cart_event(neighbour, at)])
    return subject, neighbour


def test_an_ingest_in_flight_cannot_bring_the_customer_back(warehouse_conn, test_databases):
    db = warehouse_conn
    subject, neighbour = _cart_customers(db, 910_000)
    with psycopg.connect(test_databases["warehouse"]) as ingesting:
        ingesting.execute("select 1")  # the ingest's transaction stays open after it returns
        timers.ingest(ingesting, CAMPAIGNS)
        eraser = erase_process(subject)
        wait_blocked_or_done(db, eraser)
        ingesting.commit()  # the ingest commits the timers it wrote for the subject
    finished(eraser)
    triggers = dict(
        db.execute("select customer_id, count(*) from ops.campaign_triggers group by 1").fetchall()
    )
    assert subject not in triggers and triggers[neighbour] == 1
    # events the customer's open browser tab sends later create nothing either
    fixtures.insert_events(db, [fixtures.cart_event(subject, datetime.now(UTC) - timedelta(minutes=31))])
    timers.ingest(db, CAMPAIGNS)
    assert db.execute(
        "select count(*) from ops.campaign_triggers where customer_id = %s", (subject,)
    ).fetchone() == (0,)


class HeldRelay(deliver.SmtpAdapter):
    """The real SMTP adapter, holding each group until `released` is set: a batch in flight."""

    def __init__(self, released: threading.Event):
        super().__init__()
        self.released = released

    def send_many(self, messages):
        assert self.released.wait(60)
        return super().send_many(messages)


def test_an_engine_batch_in_flight_finishes_before_the_erasure(warehouse_conn, sink):
    db = warehouse_conn
    subject, neighbour = _cart_customers(db, 920_000)
    timers.ingest(db, CAMPAIGNS)
    released = threading.Event()
    engine = Engine(campaigns=CAMPAIGNS, senders=1, adapter_factory=lambda: HeldRelay(released))
    run = threading.Thread(target=engine.run)
    run.start()
    try:
        deadline = time.monotonic() + 30
        while not db.execute(
            "select exists (select from ops.send_ledger where customer_id = %s and state = 'sending')",
            (subject,),
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the batch never reached the relay"
            time.sleep(0.05)
        eraser = erase_process(subject)
        wait_blocked_or_done(db, eraser)
    finally:
        released.set()
        run.join(60)
    finished(eraser)
    for table in (
        "ops.campaign_triggers",
        "ops.send_ledger",
        "ops.decision_log",
        "ops.experiment_assignments",
    ):
        counts = dict(db.execute(f"select customer_id, count(*) from {table} group by 1").fetchall())
        assert subject not in counts and counts.get(neighbour), table
    recipients = [r["rcpt"][0] for r in read_index(sink.directory)]
    assert (
        f"customer{neighbour}@example.test" in recipients
        and f"customer{subject}@example.test" not in recipients
    )
    assert [p for p in sink.directory.glob("*.eml") if f"customer{subject}@".encode() in p.read_bytes()] == []
    # a trigger for the customer that slips in later (a batch candidate from a mart built before
    # the erasure) is never claimed: no decision, no send
    db.execute(
        """insert into ops.campaign_triggers (trigger_id, campaign, customer_id, trigger_key, first_activity_at,
               last_activity_at, original_due_at, due_at)
           values ('late', 'cart_abandonment', %s, 'late', now(), now(), now(), now() - interval '1 minute')""",
        (subject,),
    )
    Engine(campaigns=CAMPAIGNS, senders=1).run()
    assert db.execute(
        "select count(*) from ops.decision_log where customer_id = %s", (subject,)
    ).fetchone() == (0,)


def test_a_forged_identify_cannot_make_an_erasure_take_another_customer(warehouse_conn):
    from campaigns import erasure

    db = warehouse_conn
    subject, victim = 930_001, 930_002
    fixtures.insert_customers(db, [subject, victim])
    # anyone with the site's write key can say that customer A is B's address, and B is A's
    for user, address in ((subject, victim), (victim, subject)):
        db.execute(
            """insert into raw.events (message_id, type, user_id, traits, occurred_at, received_at, source)
               values (%s, 'identify', %s, %s, now(), now(), 'web')""",
            (
                f"forged-{user}",
                str(user),
                orjson.dumps({"email": f"customer{address}@example.test"}).decode(),
            ),
        )
    report = erasure.erase(customer_id=subject)
    assert report["customers"] == 1 and report["addresses_suppressed"] == 1
    assert db.execute(
        "select count(*) from raw.shop_customers where customer_id = %s", (victim,)
    ).fetchone() == (1,)
    victim_hash = suppressions.hash_email(f"customer{victim}@example.test")
    assert db.execute(
        "select count(*) from ops.suppressions where email_hash = %s", (victim_hash,)
    ).fetchone() == (0,)
    with pytest.raises(ValueError, match="not an email address"):
        erasure.erase(email="example")  # would match every row mentioning the word
