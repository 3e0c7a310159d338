"""Writing events to the warehouse: group commit, COPY, NOTIFY after commit.

Group commit. Requests do not write themselves: they queue their rows and
wait; a few writer tasks (COLLECTOR_WRITERS, each with its own connection) take
everything queued at that moment, write it in one transaction and answer every
request in it once COMMIT has returned. Idle, a request is written at once
(a group of one); under load the groups grow by themselves, so PostgreSQL pays
one transaction, one COPY and one WAL flush for many requests. A group is all
or nothing, and so is each request in it.

How a group is written (measured on the 2-core machine: 20,000 events of ~700
bytes into raw.events, 100 a transaction, one at a time):

- up to 32 events (single calls grouped under load): one multi-row
  `insert ... on conflict (message_id) do nothing`, one round trip;
- more: COPY straight into raw.events (~11k events/s at 100 a transaction;
  a single COPY of everything: ~22-37k/s). When the COPY meets a messageId
  already stored (a client's retry), the stored ids are looked up and the rest
  is COPY'd again; only a race with a concurrent write of the same ids falls
  back to `executemany` of the insert-on-conflict statement (~8k/s). COPY into
  a temp table + insert-select on conflict do nothing (~6k/s) always pays the
  double write, so the optimistic COPY wins while retries are rare. The COPY
  data is one buffer formatted by segment.copy_text, not a write_row call per
  row. Each request's rows are sorted by messageId; a group only concatenates
  its requests (sorting every group again cost more than the rare deadlock of
  two writers meeting a retry and its original, which PostgreSQL detects and
  the writer retries).

Identity links (identify: anonymousId -> userId; alias: previousId -> userId)
are upserted in the same transaction, keeping the earliest link.

Bounded, so a stalled database gives 503s instead of hanging (COLLECTOR_DB_TIMEOUT):
- a request waits at most `timeout` for its commit (queue, connection and statement
  together), then gets StoreUnavailable (503 with Retry-After). Still queued, its
  rows are dropped from the queue; already being written, they may still commit,
  and the client's retry is deduplicated by messageId;
- every session has `statement_timeout` and `lock_timeout` = `timeout`, so a
  writer blocked by a lock (an ACCESS EXCLUSIVE on raw.events, a long
  migration) or a stalled server gives up and takes the next group;
- at most `max_pending_events` events queued or being written and at most
  `max_waiting_requests` requests waiting: past either, a request is answered
  503 at once (memory stays bounded while the database cannot keep up).

A NOTIFY on `raw_events` follows each commit, sent by a separate task that
coalesces bursts (at once when idle, at most one per 50 ms under load): NOTIFY inside the writing
transaction would hold PostgreSQL's notify-queue lock through the commit's WAL
flush and serialise the writers. The NOTIFY is a wake-up hint only: its
listener must still query for what arrived.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from datetime import UTC, datetime

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from collector.errors import ApiError, StoreUnavailable
from collector.segment import COLUMNS, Link, Row, copy_text, dedupe
from warehouse.settings import RAW_EVENTS_CHANNEL

log = logging.getLogger("collector.store")

NOTIFY_INTERVAL_S = 0.05
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
# SQLSTATE classes: 08 connection, 53 resources, 55 lock not available (lock_timeout), 57 operator
# intervention (shutdown, statement_timeout), 40 rollback (deadlock, serialization), 58 system: an
# outage. 22 data and 23 integrity: the request's content.
_RETRYABLE_CLASSES = ("08", "53", "55", "57", "40", "58")
_CONTENT_CLASSES = ("22", "23")
_ATTEMPTS = 3
MAX_GROUP_EVENTS = 5000


SMALL_GROUP = 32  # up to this many events (single calls grouped under load): a multi-row INSERT


@functools.lru_cache(maxsize=SMALL_GROUP)
def _insert_many(count: int) -> str:
    values = ", ".join([f"({_PLACEHOLDERS})"] * count)
    return f"insert into raw.events ({_COLUMN_LIST}) values {values} on conflict (message_id) do nothing"


class _Pending:
    __slots__ = ("rows", "links", "clean", "future")

    def __init__(self, rows: list[Row], links: list[Link], clean: bool, future: asyncio.Future):
        self.rows = rows
        self.links = links
        self.clean = clean
        self.future = future


class EventStore:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        writers: int = 2,
        timeout: float = 3.0,
        max_pending_events: int = 20_000,
        max_waiting_requests: int = 512,
    ):
        self.timeout = timeout
        self.max_pending_events = max_pending_events
        self.max_waiting_requests = max_waiting_requests
        self.writers = max(1, min(writers, pool_size - 1 if pool_size > 1 else 1))
        self.pool = AsyncConnectionPool(
            url,
            min_size=pool_size,
            max_size=pool_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True},
            configure=self._configure,
            reconnect_timeout=24 * 3600,  # keep trying through an outage, however long
            name="collector",
        )
        self._queue: deque[_Pending] = deque()
        self._held_events = 0  # queued or being written
        self._waiting_requests = 0
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._pending_events = 0
        self._latest_received_at: str | None = None
        self._wake = asyncio.Event()

    async def _configure(self, conn: psycopg.AsyncConnection) -> None:
        milliseconds = max(1, int(self.timeout * 1000))
        await conn.execute(
            "select set_config('statement_timeout', %(ms)s, false), set_config('lock_timeout', %(ms)s, false)",
            {"ms": str(milliseconds)},
        )

    async def open(self) -> None:
        # wait=False: the collector starts (and answers 503, /ready says no) while the DB is down.
        await self.pool.open(wait=False)
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"collector-writer-{i}") for i in range(self.writers)
        ]
        self._tasks.append(asyncio.create_task(self._notify_loop(), name="collector-notify"))

    async def close(self) -> None:
        for _ in range(100):  # requests still queued (a graceful stop waits for them): finish them
            if not self._queue:
                break
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close(timeout=5)

    async def ready(self) -> bool:
        try:
            async with self.pool.connection(timeout=1.0) as conn:
                await conn.execute("select 1 from raw.events limit 0")
            return True
        except (psycopg.Error, PoolTimeout, OSError):
            return False

    async def write(self, rows: list[Row], links: list[Link], *, clean: bool = False) -> None:
        """Return once the rows and links are committed, or raise.

        `rows` are deduplicated and sorted by messageId (segment.dedupe); `clean`: no value
        holds a character COPY must escape (segment.copy_text).

        Raises StoreUnavailable when the warehouse cannot take them now (the
        client gets a 503 and retries: the messageIds make the retry safe, even
        when the lost connection had in fact committed), ApiError(400) when the
        database refuses the content.
        """
        if (
            self._waiting_requests >= self.max_waiting_requests
            or self._held_events + len(rows) > self.max_pending_events
        ):
            raise StoreUnavailable("the collector holds as many events as it may; retry later")
        loop = asyncio.get_running_loop()
        item = _Pending(rows, links, clean, loop.create_future())
        self._queue.append(item)
        self._held_events += len(rows)
        self._waiting_requests += 1
        self._queued.set()
        deadline = loop.call_later(self.timeout, self._expire, item)
        try:
            await item.future
        finally:
            deadline.cancel()
            self._waiting_requests -= 1

    def _expire(self, item: _Pending) -> None:
        """No commit within the timeout: the request gets a 503 (the client retries)."""
        if item.future.done():
            return
        try:
            self._queue.remove(item)  # still queued: never written
        except ValueError:
            pass  # being written: it may still commit; the retry is deduplicated by messageId
        else:
            self._held_events -= len(item.rows)
        item.future.set_exception(StoreUnavailable("no commit within the timeout"))

    # ---- writers --------------------------------------------------------------------------------

    def _take_group(self) -> list[_Pending]:
        group = []
        events = 0
        while self._queue and (not group or events + len(self._queue[0].rows) <= MAX_GROUP_EVENTS):
            item = self._queue.popleft()
            group.append(item)
            events += len(item.rows)
        if not self._queue:
            self._queued.clear()
        return group

    async def _writer(self) -> None:
        while True:
            await self._queued.wait()
            group = self._take_group()
            if not group:
                continue
            try:
                await self._write_group(group)
            except Exception as exc:  # never let a writer die: the requests get the error
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)
            finally:
                self._held_events -= sum(len(item.rows) for item in group)

    async def _write_group(self, group: list[_Pending]) -> None:
        # Each request's rows come deduplicated and sorted; across requests they are only
        # concatenated (a retry racing its original is rare: the COPY's unique violation falls
        # back, and a deadlock between the writers is detected and retried).
        if len(group) == 1:
            rows, links = group[0].rows, group[0].links
        else:
            rows = [row for item in group for row in item.rows]
            _, links = dedupe([], [link for item in group for link in item.links])
        text = None
        if len(rows) > SMALL_GROUP or links:
            text = b"".join(copy_text(item.rows, item.clean) for item in group)
        try:
            await self._write_with_retries(rows, links, text)
        except ApiError:
            if len(group) == 1:
                raise
            # Some request's content was refused: write them one by one so only it fails.
            for item in group:
                try:
                    await self._write_with_retries(item.rows, item.links)
                    self._resolve(item, None)
                    self._committed(item.rows)
                except Exception as exc:
                    self._resolve(item, exc)
            return
        for item in group:
            self._resolve(item, None)
        self._committed(rows)

    @staticmethod
    def _resolve(item: _Pending, error: BaseException | None) -> None:
        if item.future.done():  # the request was cancelled; its rows are stored all the same
            return
        if error is None:
            item.future.set_result(None)
        else:
            item.future.set_exception(error)

    async def _write_with_retries(
        self, rows: list[Row], links: list[Link], text: bytes | None = None
    ) -> None:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self.pool.connection() as conn:
                    await self._write(conn, rows, links, text)
                return
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

    async def _write(
        self, conn: psycopg.AsyncConnection, rows: list[Row], links: list[Link], text: bytes | None
    ) -> None:
        """`text`: the rows' COPY text when already formatted."""
        if len(rows) <= SMALL_GROUP and not links:
            # One round trip, retries included; the statement per size is prepared after 5 uses.
            await conn.execute(_insert_many(len(rows)), [value for row in rows for value in row])
            return
        try:
            await self._copy_with_links(conn, rows, links, text)
            return
        except pg_errors.UniqueViolation:
            pass
        # Some events are stored already (a client's retry): leave them out and COPY the rest.
        cursor = await conn.execute(
            "select message_id from raw.events where message_id = any(%s)", ([row[0] for row in rows],)
        )
        stored = {found for (found,) in await cursor.fetchall()}
        try:
            await self._copy_with_links(conn, [row for row in rows if row[0] not in stored], links, None)
        except pg_errors.UniqueViolation:
            # Raced by a concurrent write of the same ids: the slow statement that cannot conflict.
            async with conn.transaction():
                await conn.cursor().executemany(INSERT_EVENT, rows)
                if links:
                    await conn.cursor().executemany(UPSERT_LINK, links)

    async def _copy_with_links(
        self, conn: psycopg.AsyncConnection, rows: list[Row], links: list[Link], text: bytes | None
    ) -> None:
        if links:
            async with conn.transaction():
                if rows:
                    await self._copy(conn, rows, text)
                await conn.cursor().executemany(UPSERT_LINK, links)
        elif rows:
            await self._copy(conn, rows, text)  # one statement in autocommit: its own transaction

    @staticmethod
    async def _copy(conn: psycopg.AsyncConnection, rows: list[Row], text: bytes | None) -> None:
        async with conn.cursor().copy(COPY_EVENTS) as copy:
            await copy.write(text if text is not None else copy_text(rows))

    # ---- NOTIFY -----------------------------------------------------------------------------------

    def _committed(self, rows: list[Row]) -> None:
        self._pending_events += len(rows)
        self._latest_received_at = max(row[13] for row in rows) if rows else None
        self._wake.set()

    async def _notify_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            await self._wake.wait()
            # At once when idle; under load at most one NOTIFY per interval (each costs a round trip).
            pause = last + NOTIFY_INTERVAL_S - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            last = loop.time()
            self._wake.clear()
            count, self._pending_events = self._pending_events, 0
            received_at = self._latest_received_at or datetime.now(UTC).isoformat()
            payload = orjson.dumps({"events": count, "received_at": received_at}).decode()
            try:
                async with self.pool.connection() as conn:
                    await conn.execute("select pg_notify(%s, %s)", (RAW_EVENTS_CHANNEL, payload))
            except Exception as exc:
                # The events are committed; only the wake-up is late. Try again shortly.
                log.warning("NOTIFY %s failed (%s); retrying", RAW_EVENTS_CHANNEL, type(exc).__name__)
                self._pending_events += count
                await asyncio.sleep(1)
                self._wake.set()
