"""Incremental, idempotent extraction of source tables into raw.*.

Each source table is read by its cursor column (`updated_at`, or for the
append-only exports the time a row arrived, `received_at`) over a window that
ends at the run's data interval end.
A batch is one (raw table, window end) pair, recorded in ops.extract_batches
with the window it covered:

- the first batch of a table starts from the beginning (window_start null);
- later batches start where the latest earlier batch ended, so a paused DAG
  loses nothing and a backfilled interval that is already covered reuses it;
- rerunning a batch re-extracts exactly its recorded window, deleting the rows
  it wrote before, in one transaction: the same rows again, never twice.

raw.* is append-only history: an order whose status changes is extracted again
in the window of its new `updated_at`, and staging keeps the latest version.
Exports whose events have their own id (`key`) load each event once: an event
already in raw from another batch is skipped (batches of the ESP export were
windowed by event time before they were by arrival, so the first window by
arrival re-reads events an earlier one loaded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from warehouse import settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceTable:
    schema: str
    table: str
    cursor: str  # rows with cursor in [window_start, window_end) belong to a batch
    raw_table: str
    key: str | None = None  # an event id: rows whose key is in raw already are skipped


SOURCE_TABLES: tuple[SourceTable, ...] = (
    SourceTable("shop", "customers", "updated_at", "shop_customers"),
    SourceTable("shop", "products", "updated_at", "shop_products"),
    SourceTable("shop", "orders", "updated_at", "shop_orders"),
    SourceTable("shop", "order_items", "updated_at", "shop_order_items"),
    SourceTable("shop", "carts", "updated_at", "shop_carts"),
    SourceTable("shop", "cart_items", "updated_at", "shop_cart_items"),
    # received_at, not occurred_at: a bounce reported hours late, or an event
    # stamped late on the client, falls in a window already extracted by event time.
    SourceTable("esp", "email_events", "received_at", "esp_email_events", key="event_id"),
    SourceTable("web", "events", "received_at", "web_events"),
)
BY_RAW_TABLE = {s.raw_table: s for s in SOURCE_TABLES}


@dataclass(frozen=True)
class BatchResult:
    batch_id: str
    raw_table: str
    window_start: datetime | None
    window_end: datetime
    row_count: int


def batch_id_for(raw_table: str, window_end: datetime) -> str:
    return f"{raw_table}/{window_end.astimezone(UTC).isoformat()}"


def _raw_columns(conn: psycopg.Connection, raw_table: str) -> list[str]:
    rows = conn.execute(
        """
        select column_name from information_schema.columns
        where table_schema = 'raw' and table_name = %s and column_name not like '\\_%%'
        order by ordinal_position
        """,
        (raw_table,),
    ).fetchall()
    if not rows:
        raise LookupError(f"raw.{raw_table} does not exist: run the warehouse migrations")
    return [r[0] for r in rows]


def _window_start(conn: psycopg.Connection, batch_id: str, raw_table: str, window_end: datetime):
    """The recorded start of this batch, else the end of the latest earlier batch."""
    recorded = conn.execute(
        "select window_start from ops.extract_batches where batch_id = %s", (batch_id,)
    ).fetchone()
    if recorded:
        return recorded[0]
    previous = conn.execute(
        "select max(window_end) from ops.extract_batches where source_table = %s and window_end < %s",
        (raw_table, window_end),
    ).fetchone()
    return previous[0]


def extract_table(raw_table: str, window_end: datetime, loaded_at: datetime | None = None) -> BatchResult:
    """Extract one source table's batch ending at `window_end` into raw.<raw_table>."""
    if window_end.tzinfo is None:
        raise ValueError(f"window_end must be timezone-aware, got {window_end!r}")
    source = BY_RAW_TABLE[raw_table]
    batch_id = batch_id_for(raw_table, window_end)
    loaded_at = loaded_at or datetime.now(UTC)
    with psycopg.connect(settings.warehouse_url()) as dst, psycopg.connect(settings.shop_url()) as src:
        # Serialise batches of one table (a rerun racing a scheduled run).
        dst.execute("select pg_advisory_xact_lock(hashtext(%s))", (raw_table,))
        columns = _raw_columns(dst, raw_table)
        window_start = _window_start(dst, batch_id, raw_table, window_end)
        raw = sql.Identifier("raw", raw_table)
        dst.execute(sql.SQL("delete from {} where _batch_id = %s").format(raw), (batch_id,))
        cursor = sql.Identifier(source.cursor)
        where = sql.SQL("{} < {}").format(cursor, sql.Literal(window_end))
        if window_start is not None:
            where = sql.SQL("{} >= {} and ").format(cursor, sql.Literal(window_start)) + where
        select = sql.SQL("copy (select {cols}, {batch}, {loaded} from {src} where {where}) to stdout").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            batch=sql.Literal(batch_id),
            loaded=sql.Literal(loaded_at),
            src=sql.Identifier(source.schema, source.table),
            where=where,
        )
        target = raw
        if source.key:  # through a temporary table, to skip the events raw already has
            dst.execute(sql.SQL("create temporary table incoming (like {}) on commit drop").format(raw))
            target = sql.Identifier("incoming")
        all_columns = sql.SQL(", ").join(map(sql.Identifier, [*columns, "_batch_id", "_loaded_at"]))
        insert = sql.SQL("copy {} ({}) from stdin").format(target, all_columns)
        with src.cursor().copy(select) as copy_out, dst.cursor().copy(insert) as copy_in:
            for chunk in copy_out:
                copy_in.write(chunk)
        if source.key:
            dst.execute(
                sql.SQL(
                    "insert into {} ({cols}) select {cols} from incoming on conflict ({}) do nothing"
                ).format(raw, sql.Identifier(source.key), cols=all_columns)
            )
        row_count = dst.execute(
            sql.SQL("select count(*) from {} where _batch_id = %s").format(raw), (batch_id,)
        ).fetchone()[0]
        dst.execute(
            """
            insert into ops.extract_batches
                (batch_id, source_table, window_start, window_end, row_count, loaded_at)
            values (%s, %s, %s, %s, %s, %s)
            on conflict (batch_id) do update
                set row_count = excluded.row_count, loaded_at = excluded.loaded_at
            """,
            (batch_id, raw_table, window_start, window_end, row_count, loaded_at),
        )
    log.info("extracted %s rows into raw.%s (batch %s)", row_count, raw_table, batch_id)
    return BatchResult(batch_id, raw_table, window_start, window_end, row_count)


def extract_all(window_end: datetime) -> list[BatchResult]:
    return [extract_table(s.raw_table, window_end) for s in SOURCE_TABLES]
