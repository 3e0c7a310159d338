"""Bulk loading into the source database with COPY.

Millions of rows must load in seconds, so:
- rows are formatted as COPY text by vectorised arrow kernels, never row by row;
- keys, indexes and foreign keys are dropped for the load and rebuilt afterwards: a
  per-row foreign-key check costs more than the COPY itself (measured 29 s vs 7 s for
  1.5M order items), and one sorted index build beats millions of B-tree inserts; the
  dropped definitions are kept in a ledger table first, so a load that dies half way
  is repaired by the next run;
- tables load concurrently, each in one transaction with COPY FREEZE, while
  generation goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from simulator import source

log = logging.getLogger(__name__)

CHUNK_ROWS = 200_000
LEDGER = "simulator.load_ledger"


PG_EPOCH_MICROS = 946_684_800 * 1_000_000  # 2000-01-01, the zero of binary timestamps
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
BINARY_TRAILER = b"\xff\xff"


@dataclass
class Table:
    """A table's rows: per column either COPY text (arrow strings, null for SQL NULL) or
    numpy datetime64 values (timestamps, formatted while loading).

    `binary` tables load in COPY's binary format (text, jsonb and timestamp columns
    only), which saved about a fifth of PostgreSQL's parsing time on web events.
    """

    name: str
    columns: dict[str, pa.Array | np.ndarray]
    binary: bool = False
    jsonb: frozenset[str] = frozenset()
    last_part: bool = True  # no more rows of this table follow (its indexes can be built)
    streams: int = 1  # connections loading this table's parts at once
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"{self.name}: columns differ in length: {lengths}")
        self.rows = lengths.pop()

    def text(self, column: str) -> pa.Array:
        """One column as COPY text (for tests and for the text format)."""
        return _text(self.columns[column])

    def copy_chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterable[memoryview | bytes]:
        """The COPY payload, each chunk one contiguous buffer."""
        if self.binary:
            yield BINARY_HEADER
        for start in range(0, self.rows, chunk_rows):
            n = min(chunk_rows, self.rows - start)
            cols = {k: _slice(v, start, n) for k, v in self.columns.items()}
            lines = self._binary_rows(cols) if self.binary else self._text_rows(cols)
            yield _payload(lines)
        if self.binary:
            yield BINARY_TRAILER

    @staticmethod
    def _text_rows(cols: dict[str, pa.Array | np.ndarray]) -> pa.Array:
        parts: list[pa.Array | str] = []
        for i, col in enumerate(cols.values()):
            parts.append(_text(col))
            parts.append("\t" if i < len(cols) - 1 else "\n")
        return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="\\N")

    def _binary_rows(self, cols: dict[str, pa.Array | np.ndarray]) -> pa.Array:
        empty = pa.scalar(b"", pa.binary())
        parts: list[pa.Array | pa.Scalar] = [pa.scalar(len(cols).to_bytes(2, "big"), pa.binary())]
        for name, col in cols.items():
            if isinstance(col, np.ndarray):
                micros = col.astype("datetime64[us]").astype(np.int64) - PG_EPOCH_MICROS
                field_bytes = np.empty((len(col), 12), dtype=np.uint8)
                field_bytes[:, :4] = np.frombuffer((8).to_bytes(4, "big"), dtype=np.uint8)
                field_bytes[:, 4:] = micros.astype(">i8").view(np.uint8).reshape(-1, 8)
                parts.append(_fixed_binary(field_bytes))
                continue
            length = _lengths(col)
            if name in self.jsonb:
                if col.null_count:
                    raise ValueError(f"{self.name}.{name}: null jsonb in binary COPY")
                length = length + 1
            if col.null_count:
                length = np.where(pc.is_null(col).to_numpy(zero_copy_only=False), -1, length)
            length = length.astype(">i4")
            parts.append(_fixed_binary(length.view(np.uint8).reshape(-1, 4)))
            if name in self.jsonb:
                parts.append(pa.scalar(b"\x01", pa.binary()))
            parts.append(col.cast(pa.binary()))
        return pc.binary_join_element_wise(*parts, empty, null_handling="replace", null_replacement=b"")

    def sql_copy(self, freeze: bool = False) -> str:
        options = [o for o, on in (("format binary", self.binary), ("freeze", freeze)) if on]
        return f"copy {self.name} ({', '.join(self.columns)}) from stdin" + (
            f" with ({', '.join(options)})" if options else ""
        )


def _slice(values: pa.Array | np.ndarray, start: int, n: int) -> pa.Array | np.ndarray:
    return values[start : start + n] if isinstance(values, np.ndarray) else values.slice(start, n)


def _text(values: pa.Array | np.ndarray) -> pa.Array:
    if isinstance(values, np.ndarray):
        return pc.cast(pa.array(values), pa.string())
    return values


def _lengths(col: pa.Array) -> np.ndarray:
    """Byte length of each value, straight from the offsets buffer when it is a plain string array."""
    if isinstance(col, pa.StringArray):
        offsets = np.frombuffer(col.buffers()[1], dtype=np.int32, count=col.offset + len(col) + 1)
        return np.diff(offsets[col.offset :])
    return pc.binary_length(col).to_numpy(zero_copy_only=False).astype(np.int64)


def _fixed_binary(chars: np.ndarray) -> pa.Array:
    n, width = chars.shape
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.BinaryArray.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars))]
    )


def _payload(lines: pa.Array | pa.ChunkedArray) -> memoryview:
    """The bytes of all elements of a freshly built (unsliced) arrow string/binary array."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    n = len(lines)
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=lines.offset + n + 1)
    a, b = int(offsets[lines.offset]), int(offsets[lines.offset + n])
    return memoryview(lines.buffers()[2])[a:b]


def _session(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url)
    # Timestamps are written without a zone suffix: they are UTC. A lost commit on a
    # crash costs nothing here (the next run reloads everything).
    conn.execute("set time zone 'UTC'")
    conn.execute("set synchronous_commit = off")
    return conn


def _definitions(conn: psycopg.Connection) -> list[tuple[str, str, str, str, str | None]]:
    """(table, name, kind, definition, index definition) of every key, constraint and index.

    kind orders the rebuild: keys and unique constraints first (foreign keys need
    them), then plain indexes, then foreign keys. Keys also keep their index's
    definition, so the index can be built on its own connection and then attached.
    """
    tables = list(source.SOURCE_TABLES)
    constraints = conn.execute(
        """
        select c.conrelid::regclass::text, c.conname,
               case c.contype when 'f' then '3_foreign_key' else '1_key' end,
               pg_get_constraintdef(c.oid),
               case when c.contype in ('p', 'u') then pg_get_indexdef(c.conindid) end
        from pg_constraint c
        where c.contype in ('p', 'u', 'f') and c.conrelid::regclass::text = any(%s)
        """,
        (tables,),
    ).fetchall()
    indexes = conn.execute(
        """
        select i.indrelid::regclass::text, ic.relname, '2_index', pg_get_indexdef(i.indexrelid), null
        from pg_index i
        join pg_class ic on ic.oid = i.indexrelid
        where i.indrelid::regclass::text = any(%s)
          and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid and c.contype in ('p', 'u'))
        """,
        (tables,),
    ).fetchall()
    return sorted((r[0], r[1], r[2], r[3], r[4]) for r in constraints + indexes)


def _index_exists(conn: psycopg.Connection, table: str, name: str) -> bool:
    sql = "select 1 from pg_index i join pg_class c on c.oid = i.indexrelid where i.indrelid = %s::regclass and c.relname = %s"
    return conn.execute(sql, (table, name)).fetchone() is not None


def _constraint_exists(conn: psycopg.Connection, table: str, name: str) -> bool:
    sql = "select 1 from pg_constraint where conrelid = %s::regclass and conname = %s"
    return conn.execute(sql, (table, name)).fetchone() is not None


def _restore(conn: psycopg.Connection, table: str, name: str, kind: str, definition: str) -> None:
    """Re-create one dropped object unless it is there; a key whose index exists adopts it."""
    if kind == "2_index":
        if not _index_exists(conn, table, name):
            conn.execute(definition)
        return
    if _constraint_exists(conn, table, name):
        return
    if kind == "1_key" and _index_exists(conn, table, name):
        key = "primary key" if definition.upper().startswith("PRIMARY KEY") else "unique"
        conn.execute(f'alter table {table} add constraint "{name}" {key} using index "{name}"')
    else:
        conn.execute(f'alter table {table} add constraint "{name}" {definition}')


def rebuild(conn: psycopg.Connection, table: str | None = None, foreign_keys: bool = True) -> None:
    """Re-create what prepare() dropped (for one table, or all), one at a time, and clear the ledger."""
    rows = conn.execute(
        f"select table_name, name, kind, definition from {LEDGER} "
        "where (%s::text is null or table_name = %s) and (%s or kind <> '3_foreign_key') "
        "order by kind, table_name, name",
        (table, table, foreign_keys),
    ).fetchall()
    conn.execute("set maintenance_work_mem = '512MB'")
    for table_name, name, kind, definition in rows:
        started = time.perf_counter()
        _restore(conn, table_name, name, kind, definition)
        log.info("rebuilt %s on %s in %.1f s", name, table_name, time.perf_counter() - started)
        conn.execute(f"delete from {LEDGER} where table_name = %s and name = %s", (table_name, name))
        conn.commit()


def rebuild_indexes(url: str, table: str, parallel: int = 2) -> None:
    """Build a table's key and plain indexes side by side, then attach the keys.

    CREATE INDEX only takes a SHARE lock, so several run at once on one table; ADD
    PRIMARY KEY would take an exclusive lock and serialise them.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f"select name, kind, definition, index_definition from {LEDGER} "
            "where table_name = %s and kind in ('1_key', '2_index') order by kind, name",
            (table,),
        ).fetchall()

    def build(name: str, statement: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            if not _index_exists(conn, table, name):
                started = time.perf_counter()
                conn.execute("set maintenance_work_mem = '512MB'")
                conn.execute(statement)
                log.info("built index %s on %s in %.1f s", name, table, time.perf_counter() - started)

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="index") as pool:
        statements = [
            (name, index_definition or definition) for name, _, definition, index_definition in rows
        ]
        for future in [pool.submit(build, name, statement) for name, statement in statements]:
            future.result()
    with psycopg.connect(url) as conn:
        for name, kind, definition, _ in rows:
            _restore(conn, table, name, kind, definition)
            conn.execute(f"delete from {LEDGER} where table_name = %s and name = %s", (table, name))
        conn.commit()


def prepare(url: str) -> None:
    """Create the schema, empty every source table and drop its keys and indexes for the load.

    What is dropped is first written to a ledger table in the same transaction, so a
    load that dies half way is repaired by the next run (or `finish`).
    """
    source.create_schema(url)
    with psycopg.connect(url) as conn:
        conn.execute(
            f"create table if not exists {LEDGER} (table_name text, name text, kind text, definition text, "
            "index_definition text, primary key (table_name, name))"
        )
        conn.execute(f"alter table {LEDGER} add column if not exists index_definition text")
        conn.execute(f"truncate {', '.join(source.SOURCE_TABLES)}")
        conn.commit()
        rebuild(conn)  # leftovers of a load that died half way (the tables are empty: instant)
        definitions = _definitions(conn)
        for table, name, kind, definition, index_definition in definitions:
            conn.execute(
                f"insert into {LEDGER} (table_name, name, kind, definition, index_definition) "
                "values (%s, %s, %s, %s, %s)",
                (table, name, kind, definition, index_definition),
            )
        # foreign keys first: they depend on the keys
        for table, name, kind, _, _ in sorted(definitions, key=lambda d: d[2], reverse=True):
            if kind == "2_index":
                schema = table.split(".")[0]
                conn.execute(f'drop index {schema}."{name}"')
            else:
                conn.execute(f'alter table {table} drop constraint "{name}"')
        conn.commit()


def finish(url: str) -> None:
    """Rebuild whatever is still dropped (the Loader did each table's keys), foreign keys last."""
    with psycopg.connect(url) as conn:
        rebuild(conn)


class Loader:
    """COPY tables in background threads while generation goes on.

    A table loads on `table.streams` connections. With one stream it is one
    transaction: truncate, then every part with COPY FREEZE; frozen rows carry their
    hint bits, so index builds and first reads do not rewrite every page (with data
    checksums, PostgreSQL 18's default, that WAL-logs each page once more). The
    biggest table instead takes parts on two connections at once, which more than pays
    for the hint bits on two cores. At most `workers` COPYs or index builds run at
    once. When a table's last part is in, its keys and indexes are rebuilt and it is
    analyzed, overlapping the loading of later tables.
    """

    def __init__(self, url: str, workers: int = 2) -> None:
        self.url = url
        self.slots = threading.BoundedSemaphore(workers)
        self.lanes: dict[tuple[str, int], ThreadPoolExecutor] = {}
        self.connections: dict[tuple[str, int], psycopg.Connection] = {}
        self.futures: list[Future] = []
        self.rows: dict[str, int] = {}
        self.parts: dict[str, int] = {}  # parts submitted per table
        self.outstanding: dict[str, int] = {}  # parts not yet loaded per table
        self.complete: set[str] = set()  # tables whose last part has been submitted
        self.lock = threading.Lock()

    def _copy(self, table: Table, lane: tuple[str, int]) -> None:
        single = table.streams == 1
        first = lane not in self.connections
        if first:
            self.connections[lane] = _session(self.url)
        conn = self.connections[lane]
        with self.slots:
            started = time.perf_counter()
            if single and first:
                conn.execute(f"truncate {table.name}")  # in this transaction, so COPY may FREEZE
            with conn.cursor().copy(table.sql_copy(freeze=single)) as copy:
                for chunk in table.copy_chunks():
                    copy.write(chunk)
            if not single:
                conn.commit()
            log.info(
                "loaded %s rows into %s in %.1f s",
                f"{table.rows:,}",
                table.name,
                time.perf_counter() - started,
            )
        with self.lock:
            self.rows[table.name] = self.rows.get(table.name, 0) + table.rows
            self.outstanding[table.name] -= 1
            done = table.name in self.complete and self.outstanding[table.name] == 0
        if done:
            conn.commit()
            with self.slots:
                rebuild_indexes(self.url, table.name)
                conn.execute(f"analyze {table.name}")
                conn.commit()

    def submit(self, table: Table) -> None:
        """Queue a table, or one part of it (`table.last_part` says whether more follow)."""
        with self.lock:
            n = self.parts.get(table.name, 0)
            self.parts[table.name] = n + 1
            self.outstanding[table.name] = self.outstanding.get(table.name, 0) + 1
            if table.last_part:
                self.complete.add(table.name)
        lane = (table.name, n % table.streams)
        if lane not in self.lanes:
            self.lanes[lane] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"copy-{table.name}")
        self.futures.append(self.lanes[lane].submit(self._copy, table, lane))

    def wait(self) -> dict[str, int]:
        try:
            for future in self.futures:
                future.result()
        finally:
            for lane in self.lanes.values():
                lane.shutdown(wait=True, cancel_futures=True)
            for conn in self.connections.values():
                conn.close()
        return dict(self.rows)
