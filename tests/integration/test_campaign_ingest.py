"""timers.ingest against real Postgres: a burst is read once, and a late commit behind the cursor is not lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from campaigns import timers
from campaigns.schema import load_campaigns
from harness import fixtures

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
