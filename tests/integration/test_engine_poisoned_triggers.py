"""One bad trigger never stops the others: a trigger whose payload or profile makes
reading, deciding or rendering it raise is set aside as a dead letter (stage
'engine'), done as `failed`, counted and logged, and the rest of its batch is sent.

The hostile rows are written straight into ops.campaign_triggers and raw.events,
as an older version or a bug could have left them: the engine must not rely on
the ingest's checks.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from campaigns import cli, timers
from campaigns.engine import Engine
from harness import fixtures
from harness.smtp_sink import read_index
from tests.integration import test_send_ledger_fencing as fencing

pytestmark = pytest.mark.integration

CAMPAIGNS, CART = fencing.CAMPAIGNS, fencing.CART
db = fencing.db  # the fixture: the ops and raw tables emptied, the catalogue in

# trigger payloads no version of the ingest writes, each making the engine raise
POISONED_PAYLOADS = [
    [1, 2],  # not an object: "reading its payload"
    {"items": [1, 2]},  # the cart's lines as a list, not an object: "deciding"
    {"items": {"3": {"quantity": 1}}},  # a line without its time: "deciding"
]


def identify(conn, customer_id: int, traits: dict) -> None:
    """A profile known only from identify traits (no shop row yet)."""
    conn.execute(
        """insert into raw.events (message_id, type, user_id, traits, occurred_at, received_at, source)
           values (%s, 'identify', %s, %s, now(), now(), 'fixtures')""",
        (f"fx-identify-{customer_id}", str(customer_id), Jsonb(traits)),
    )


def test_poisoned_triggers_are_set_aside_and_the_good_ones_sent_once(db, sink, caplog):
    good = fixtures.treated_customers(CART, 10, 6000)
    hostile_payloads = fixtures.treated_customers(CART, len(POISONED_PAYLOADS), 6100)
    address_not_a_string, name_not_a_string = fixtures.treated_customers(CART, 2, 6200)
    fixtures.insert_customers(db, good + hostile_payloads, timezone=fixtures.daytime_timezone())
    identify(db, address_not_a_string, {"email": ["someone@example.test"]})
    identify(
        db,
        name_not_a_string,
        {"email": "named@example.test", "first_name": {"x": 1}, "timezone": fixtures.daytime_timezone()},
    )
    # identify-only profiles need recorded consent to be mailed at all
    db.execute(
        "insert into ops.consent (customer_id, email_hash, granted, source) values (%s, 'h', true, 'test')",
        (name_not_a_string,),
    )
    everyone = good + hostile_payloads + [address_not_a_string, name_not_a_string]
    at = datetime.now(UTC) - timedelta(minutes=31)
    fixtures.insert_events(db, [fixtures.cart_event(i, at) for i in everyone])
    timers.ingest(db, CAMPAIGNS)
    for cid, payload in zip(hostile_payloads, POISONED_PAYLOADS, strict=True):
        db.execute(
            "update ops.campaign_triggers set payload = %s where customer_id = %s", (Jsonb(payload), cid)
        )
    poisoned = {
        cid: tid
        for cid, tid in db.execute("select customer_id, trigger_id from ops.campaign_triggers").fetchall()
        if cid not in good
    }
    assert len(poisoned) == 5

    with caplog.at_level(logging.WARNING, logger="campaigns"):
        stats = Engine(campaigns=CAMPAIGNS).run()
    assert stats.claimed == 15 and stats.batches == 1  # the poisoned ones shared the good ones' batch
    assert stats.sent == len(good) and stats.dead_letters == len(poisoned), stats.as_dict()

    index = read_index(sink.directory)
    assert Counter(m["rcpt"][0] for m in index) == {f"customer{i}@example.test": 1 for i in good}

    letters = dict(
        db.execute("select source_key, error from ops.dead_letters where stage = 'engine'").fetchall()
    )
    assert set(letters) == set(poisoned.values())
    stages = {cid: letters[tid].split(":")[0] for cid, tid in poisoned.items()}
    assert stages == {
        hostile_payloads[0]: "reading its payload",
        hostile_payloads[1]: "deciding",
        hostile_payloads[2]: "deciding",
        address_not_a_string: "reading the profile",
        name_not_a_string: "rendering",
    }
    assert all("@" not in error for error in letters.values())  # errors never carry an address
    triggers = dict(
        db.execute("select trigger_id, status || '/' || outcome from ops.campaign_triggers").fetchall()
    )
    assert {triggers[tid] for tid in poisoned.values()} == {"done/failed"}
    decisions = db.execute(
        "select trigger_id, detail from ops.decision_log where outcome = 'failed'"
    ).fetchall()
    assert {tid for tid, _ in decisions} == set(poisoned.values())
    assert all(detail["dead_letter"] and detail["error"] for _, detail in decisions)
    # in the task log, one line each
    assert sum("set aside a row of engine" in r.getMessage() for r in caplog.records) == len(poisoned)

    listing = CliRunner().invoke(cli.app, ["dead-letters", "--stage", "engine"])
    assert listing.exit_code == 0, listing.output
    assert all(tid in listing.output for tid in poisoned.values())

    # a rerun sends nothing again and sets nothing aside again
    again = Engine(campaigns=CAMPAIGNS).run()
    assert again.claimed == 0 and len(read_index(sink.directory)) == len(good)
