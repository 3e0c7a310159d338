"""The triggerer side: CampaignWakeTrigger wakes on NOTIFY, at the due time, and on its initial query."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from airflow.triggers.base import TaskSuccessEvent

from harness import fixtures
from orchestration.campaign_tasks import CampaignWakeTrigger, relevant_events
from warehouse.settings import RAW_EVENTS_CHANNEL

pytestmark = pytest.mark.integration


@pytest.fixture
def db(warehouse_conn):
    warehouse_conn.execute(
        "truncate ops.campaign_triggers, ops.campaign_cursors, raw.events, raw.esp_email_events"
    )
    return warehouse_conn


def first_event(trigger: CampaignWakeTrigger, timeout: float = 10.0):
    async def go():
        gen = trigger.run()
        return await asyncio.wait_for(gen.__anext__(), timeout)

    return asyncio.run(go())


def add_timer(conn, due: datetime) -> None:
    conn.execute(
        """insert into ops.campaign_triggers (trigger_id, campaign, customer_id, trigger_key, first_activity_at,
               last_activity_at, original_due_at, due_at) values ('t1', 'cart_abandonment', 1, 'k', %s, %s, %s, %s)""",
        (due, due, due, due),
    )


def test_initial_query_fires_at_once_for_what_is_already_due(db):
    add_timer(db, datetime.now(UTC) - timedelta(seconds=5))
    t0 = time.monotonic()
    event = first_event(CampaignWakeTrigger(events=relevant_events(), poll_interval=30))
    assert isinstance(event, TaskSuccessEvent)  # the sensor ends in the triggerer, not on a worker
    assert event.xcoms["return_value"]["reason"] == "due"
    assert time.monotonic() - t0 < 2


def test_wakes_at_the_next_due_time(db):
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    add_timer(db, due)
    event = first_event(CampaignWakeTrigger(events=relevant_events(), poll_interval=30))
    late = (datetime.now(UTC) - due).total_seconds()
    assert event.xcoms["return_value"]["reason"] == "due"
    assert 0 <= late < 0.5, late


def test_wakes_on_notify_with_relevant_events_only(db, test_databases):
    async def go():
        trigger = CampaignWakeTrigger(events=relevant_events(), poll_interval=30)
        task = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(0.5)
        async with await psycopg.AsyncConnection.connect(
            test_databases["warehouse"], autocommit=True
        ) as conn:
            # an irrelevant event (a page) with a NOTIFY does not wake it
            await conn.execute(
                "insert into raw.events (message_id, type, name, user_id, occurred_at, received_at, source)"
                " values ('p1', 'page', 'Home', '1', now(), now(), 't')"
            )
            await conn.execute(f"notify {RAW_EVENTS_CHANNEL}")
            await asyncio.sleep(0.5)
            assert not task.done()
            sent = time.monotonic()
            await conn.execute(
                "insert into raw.events (message_id, type, event, user_id, properties, occurred_at, received_at, source)"
                " values ('e1', 'track', 'Product Added', '1', '{\"price\": 5}', now(), now(), 't')"
            )
            await conn.execute(f"notify {RAW_EVENTS_CHANNEL}")
            event = await asyncio.wait_for(task, 5)
            return event, time.monotonic() - sent

    event, latency = asyncio.run(go())
    assert event.xcoms["return_value"]["reason"] == "events" and event.xcoms["return_value"]["notifies"] >= 1
    assert latency < 0.5, latency


def test_polling_fallback(db):
    t0 = time.monotonic()
    event = first_event(CampaignWakeTrigger(events=relevant_events(), poll_interval=1))
    assert event.xcoms["return_value"]["reason"] == "poll"
    assert 0.9 < time.monotonic() - t0 < 3


def test_serialises_for_the_triggerer():
    path, kwargs = CampaignWakeTrigger(events=["Product Added"], poll_interval=5).serialize()
    assert path == "orchestration.campaign_tasks.CampaignWakeTrigger"
    assert CampaignWakeTrigger(**kwargs).serialize() == (path, kwargs)


def test_fixture_events_carry_a_notify(db, test_databases):
    with psycopg.connect(test_databases["warehouse"], autocommit=True) as listener:
        listener.execute(f"listen {RAW_EVENTS_CHANNEL}")
        fixtures.insert_events(db, [fixtures.cart_event(1, datetime.now(UTC))])
        got = list(listener.notifies(timeout=2, stop_after=1))
    assert got and got[0].channel == RAW_EVENTS_CHANNEL


def test_wakes_lead_seconds_before_the_due_time(db):
    due = datetime.now(UTC) + timedelta(seconds=3)
    add_timer(db, due)
    event = first_event(CampaignWakeTrigger(events=relevant_events(), poll_interval=30, lead_s=2))
    early = (due - datetime.now(UTC)).total_seconds()
    assert event.xcoms["return_value"]["reason"] == "due_soon"
    assert 1.5 < early <= 2.1, early
