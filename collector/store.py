"""Writing events to the warehouse: one transaction per request, NOTIFY after commit.

How a request's events are written (measured on the 2-core machine, 20,000
events of ~700 bytes into raw.events, batches of 100, see bench/collector.py):

- a single event: one `insert ... on conflict (message_id) do nothing`
  statement in autocommit, one round trip;
- several: COPY straight into raw.events (what a raw COPY costs: ~11k/s one
  batch at a time), falling back to `executemany` of the insert-on-conflict
  statement (~8k/s) only when the COPY meets a messageId already stored, i.e. a
  client's retry. COPY into a temp table + insert-select on conflict do nothing
  (~6k/s) always pays the double write, so the optimistic COPY wins while
  retries are rare. Rows are sorted by messageId so that concurrent retries of
  overlapping batches take their locks in one order and cannot deadlock.

Identity links (identify: anonymousId -> userId; alias: previousId -> userId)
are upserted in the same transaction, keeping the earliest link.

The response goes out only after COMMIT returns. A NOTIFY on `raw_events`
follows the commit from a separate task that coalesces bursts (one NOTIFY in
flight at a time): NOTIFY inside the writing transaction would hold
PostgreSQL's notify-queue lock through every commit's WAL flush and serialise
all writers. The NOTIFY is a wake-up hint only; its listener must still query
for what arrived (it may also have missed a NOTIFY while not listening).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from collector.errors import ApiError, StoreUnavailable
from collector.segment import COLUMNS, Link, Row

log = logging.getLogger("collector.store")

NOTIFY_CHANNEL = "raw_events"
_COLUMN_LIST = ", ".join(COLUMNS)
_PLACEHOLDERS = ", ".join("%s::jsonb" if c in ("properties", "traits", "context") else "%s" for c in COLUMNS)
INSERT_EVENT = (
    f"insert into raw.events ({_COLUMN_LIST}) values ({_PLACEHOLDERS}) on conflict (message_id) do nothing"
)
COPY_EVENTS = f"copy raw.events ({_COLUMN_LIST}) from stdin"
UPSERT_LINK = """
    insert into raw.identity_links (anonymous_id, user_id, message_id, linked_at)
    values (%s, %s, %s, %s)
    on conflict (anonymous_id, user_id) do update
        set message_id = excluded.message_id, linked_at = excluded.linked_at
        where excluded.linked_at < raw.identity_links.linked_at
"""
# SQLSTATE classes: 08 connection, 53 resources, 57 operator intervention (shutdown), 40 rollback
# (deadlock, serialization): worth a retry. 22 data and 23 integrity: the request's content.
_RETRYABLE_CLASSES = ("08", "53", "57", "40", "58")
_CONTENT_CLASSES = ("22", "23")
_ATTEMPTS = 3


class EventStore:
    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 3.0, retry_after: int = 1):
        self.retry_after = retry_after
        self.pool = AsyncConnectionPool(
            url,
            min_size=pool_size,
            max_size=pool_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True},
            reconnect_timeout=24 * 3600,  # keep trying through an outage, however long
            name="collector",
        )
        self._pending_events = 0
        self._latest_received_at: datetime | None = None
        self._wake = asyncio.Event()
        self._notifier: asyncio.Task | None = None

    async def open(self) -> None:
        # wait=False: the collector starts (and answers 503, /ready says no) while the DB is down.
        await self.pool.open(wait=False)
        self._notifier = asyncio.create_task(self._notify_loop(), name="collector-notify")

    async def close(self) -> None:
        if self._notifier is not None:
            self._notifier.cancel()
            try:
                await self._notifier
            except asyncio.CancelledError:
                pass
        await self.pool.close(timeout=5)

    async def ready(self) -> bool:
        try:
            async with self.pool.connection(timeout=1.0) as conn:
                await conn.execute("select 1 from raw.events limit 0")
            return True
        except (psycopg.Error, PoolTimeout, OSError):
            return False

    async def write(self, rows: list[Row], links: list[Link]) -> None:
        """Commit the rows (already deduplicated and sorted) and links, or raise.

        Raises StoreUnavailable when the warehouse cannot take them now (the
        client gets a 503 and retries: the messageIds make the retry safe, even
        when the lost connection had in fact committed), ApiError(400) when the
        database refuses the content.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self.pool.connection() as conn:
                    await self._write(conn, rows, links)
                break
            except PoolTimeout as exc:
                raise StoreUnavailable("no warehouse connection within the timeout") from exc
            except psycopg.Error as exc:
                sqlstate = exc.sqlstate or ""
                if sqlstate[:2] in _CONTENT_CLASSES:
                    log.warning("the warehouse refused a request's content (SQLSTATE %s)", sqlstate)
                    raise ApiError(
                        400,
                        "rejected_by_warehouse",
                        f"an event was refused by the warehouse (SQLSTATE {sqlstate})",
                    ) from exc
                if sqlstate.startswith("40") and attempt < _ATTEMPTS:
                    continue
                # Never a silent drop, never a 5xx the client would not retry: anything else
                # (an outage, a schema not migrated yet) is a 503 and the client keeps the events.
                level = (
                    logging.WARNING if not sqlstate or sqlstate[:2] in _RETRYABLE_CLASSES else logging.ERROR
                )
                log.log(level, "warehouse unavailable (%s: SQLSTATE %s)", type(exc).__name__, sqlstate or "-")
                raise StoreUnavailable(type(exc).__name__) from exc
            except OSError as exc:
                raise StoreUnavailable(type(exc).__name__) from exc
        self._pending_events += len(rows)
        self._latest_received_at = rows[0][13] if rows else None
        self._wake.set()

    async def _write(self, conn: psycopg.AsyncConnection, rows: list[Row], links: list[Link]) -> None:
        if len(rows) == 1 and not links:
            await conn.execute(INSERT_EVENT, rows[0])
            return
        try:
            async with conn.transaction():
                async with conn.cursor().copy(COPY_EVENTS) as copy:
                    for row in rows:
                        await copy.write_row(row)
                if links:
                    await conn.cursor().executemany(UPSERT_LINK, links)
        except pg_errors.UniqueViolation:
            # A retry of events already stored (or in flight on another connection).
            async with conn.transaction():
                await conn.cursor().executemany(INSERT_EVENT, rows)
                if links:
                    await conn.cursor().executemany(UPSERT_LINK, links)

    async def _notify_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            count, self._pending_events = self._pending_events, 0
            received_at = self._latest_received_at or datetime.now(UTC)
            payload = orjson.dumps({"events": count, "received_at": received_at.isoformat()}).decode()
            try:
                async with self.pool.connection() as conn:
                    await conn.execute("select pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                # The events are committed; only the wake-up is late. Try again shortly.
                log.warning("NOTIFY %s failed (%s); retrying", NOTIFY_CHANNEL, type(exc).__name__)
                self._pending_events += count
                await asyncio.sleep(1)
                self._wake.set()
