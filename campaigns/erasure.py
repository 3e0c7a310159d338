"""Right to erasure: remove a customer everywhere, keep only a hashed suppression and tombstone.

    python -m campaigns erase --customer-id 42 [--yes]
    python -m campaigns erase --email someone@example.com [--yes]

`find` resolves who the customer is: ids, addresses (the shop's profile, and
identify traits where the shop's profile does not contradict them), anonymous
ids (identity links, the customer's events, web events and carts), orders and
carts. `erase` then deletes, in one transaction, every row that names them
from every table of the warehouse (raw, ops, ml, dbt's intermediate, marts
and snapshots, and whatever a later migration or model adds), found by the
columns' names and contents rather than a list of tables:

- id columns: `customer_id` and `*_customer_id`, `user_id`, `anonymous_id`,
  `previous_id`, `email_hash`, and `order_id` / `cart_id` (line items name the
  customer only through their order or cart);
- text, JSON and array columns that contain one of the addresses (the whole
  address, case-insensitive, at any depth of a JSON document, also
  percent-encoded as in a tracked URL): event properties, traits and context,
  webhook recipients, export rows;
- JSON columns of tables without id columns (dead letters, say): documents
  with a `userId`, `customer_id` or `anonymousId` of the customer at any depth.

Then the files outside the database: the SMTP sink's .eml files to the
customer (its index keeps the line, the address overwritten in place: the
sink appends to it while running), the CRM CSV exports' rows, and previews
rendered for the customer.

Concurrency: the trigger ingest and the engine write only ops.*, and every
row they write names the customer by id. So the other schemas are erased
first, without locks; then, holding the ingest's advisory lock and the
engine's per-customer advisory locks (an ingest or a batch in flight finishes
first), ops.* by id (the contents of ops tables without id columns) and the
files. Touching no ops row before the locks keeps the erasure out of
deadlocks with them. Before the commit a tombstone per customer
(ops.erased_customers, SHA-256 of the id) is recorded, which the ingest and
the engine's claim check, so events arriving later (a browser tab still open)
create nothing for them. ops.suppressions (SHA-256 of each address, reason
`erasure`) and ops.erasure_log (hashes and counts) are all that remain.

The shop's database is the source system: it must erase there too, or the
next extract brings the profile back (still suppressed, never mailed). A dbt
build or ML scoring run that read before the erasure and writes after it can
bring rows back: run `erase` again afterwards (it is idempotent).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from campaigns.suppressions import hash_email, normalise_email
from warehouse import settings

# kept: what makes the erasure stick, without personal data
KEEP = {"ops.suppressions", "ops.erasure_log", "ops.erased_customers", "ops.alembic_version"}
# written by the trigger ingest and the engine: erased under their locks, touched by nothing before
REALTIME_SCHEMAS = ("ops.",)
JSON_ID_KEYS = ("userId", "user_id", "customerId", "customer_id", "anonymousId", "anonymous_id")
_LOCAL_PART = r"a-z0-9!#$%&'*+/=?^_`{|}~.-"
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass
class Subject:
    """Who is erased: every identifier the warehouse knows them by."""

    ids: set[int] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    anonymous_ids: set[str] = field(default_factory=set)
    order_ids: set[int] = field(default_factory=set)
    cart_ids: set[int] = field(default_factory=set)

    @property
    def text_ids(self) -> list[str]:
        return sorted(str(i) for i in self.ids)

    def address_patterns(self) -> tuple[str, str] | None:
        """Regular expressions (PostgreSQL's and Python's, case-insensitive) for the addresses,
        also percent-encoded: a quick one for any occurrence, and the exact one, which matches
        whole addresses only (x@shop.test, not bax@shop.test); the quick one is about twice
        as fast on a large table, so the exact one runs on its matches only."""
        needles = sorted({form for e in self.emails for form in (e, quote(e, safe=""))})
        if not needles:
            return None
        any_of = "|".join(re.escape(n) for n in needles)
        return any_of, rf"(?<![{_LOCAL_PART}])(?:{any_of})(?![a-z0-9-]|\.[a-z0-9])"


def _values(conn: psycopg.Connection, query: str, params: Any = None) -> set:
    return {r[0] for r in conn.execute(query, params) if r[0] is not None}


# Identify traits are what a client says: they tie an address to an id only where the
# shop's own profile does not contradict them, so a forged identify cannot make one
# customer's erasure take another customer's address or rows.
_IDS_OF_ADDRESSES = """
    select customer_id from raw.shop_customers where lower(trim(email)) = any(%(emails)s)
    union
    select e.user_id::bigint from raw.events e
    where e.user_id ~ '^[0-9]{1,18}$'
      and (lower(trim(e.traits->>'email')) = any(%(emails)s)
           or lower(trim(e.context->'traits'->>'email')) = any(%(emails)s))
      and not exists (select from raw.shop_customers c where c.customer_id = e.user_id::bigint)
"""
_ADDRESSES_OF_IDS = """
    select lower(trim(email)) from raw.shop_customers where customer_id = any(%(ids)s)
    union
    select t.email from (
        select lower(trim(traits->>'email')) as email from raw.events where user_id = any(%(text_ids)s)
        union select lower(trim(context->'traits'->>'email')) from raw.events where user_id = any(%(text_ids)s)
    ) t
    where t.email like '%%_@_%%'
      and not exists (select from raw.shop_customers c
                      where lower(trim(c.email)) = t.email and c.customer_id <> all(%(ids)s))
"""


def find(conn: psycopg.Connection, customer_id: int | None = None, email: str | None = None) -> Subject:
    """Everything the warehouse knows the customer by (see the module docstring)."""
    s = Subject()
    if customer_id is not None:
        s.ids.add(customer_id)
    if email:
        if not _ADDRESS.fullmatch(email.strip()):
            raise ValueError(f"email: {email!r} is not an email address")
        s.emails.add(normalise_email(email))
    for _ in range(3):  # ids -> addresses -> ids, until nothing new turns up
        before = (len(s.ids), len(s.emails))
        s.ids |= _values(conn, _IDS_OF_ADDRESSES, {"emails": sorted(s.emails)})
        s.emails |= _values(conn, _ADDRESSES_OF_IDS, {"ids": sorted(s.ids), "text_ids": s.text_ids})
        if (len(s.ids), len(s.emails)) == before:
            break
    if s.ids:
        ids = {"ids": sorted(s.ids), "text_ids": s.text_ids}
        s.anonymous_ids = _values(
            conn,
            """select anonymous_id from raw.identity_links where user_id = any(%(text_ids)s)
               union select anonymous_id from raw.events where user_id = any(%(text_ids)s)
               union select previous_id from raw.events where user_id = any(%(text_ids)s)
               union select anonymous_id from raw.web_events where user_id = any(%(text_ids)s)
               union select anonymous_id from raw.shop_carts where customer_id = any(%(ids)s)""",
            ids,
        ) - set(s.text_ids)
        s.order_ids = _values(
            conn, "select order_id from raw.shop_orders where customer_id = any(%(ids)s)", ids
        )
        s.cart_ids = _values(
            conn,
            "select cart_id from raw.shop_carts where customer_id = any(%(ids)s) or anonymous_id = any(%(anon)s)",
            {**ids, "anon": sorted(s.anonymous_ids)},
        )
    return s


def _tables(conn: psycopg.Connection) -> dict[str, list[tuple[str, str, str]]]:
    """Every table of the warehouse but KEEP: {schema.table: [(column, type, type category)]}."""
    tables: dict[str, list[tuple[str, str, str]]] = {}
    for schema, table, column, typename, category in conn.execute(
        """select n.nspname, c.relname, a.attname, t.typname, t.typcategory
           from pg_class c
           join pg_namespace n on n.oid = c.relnamespace
           join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
           join pg_type t on t.oid = a.atttypid
           where c.relkind in ('r', 'p') and not c.relispartition
             and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname !~ '^pg_'
           order by n.nspname, c.relname, a.attnum"""
    ):
        name = f"{schema}.{table}"
        if name not in KEEP:
            tables.setdefault(name, []).append((column, typename, category))
    return tables


def _id_kind(column: str) -> str | None:
    """Which identifier of the customer a column holds, by its name."""
    if column in ("customer_id", "user_id") or column.endswith("_customer_id"):
        return "customer"
    if column in ("anonymous_id", "previous_id"):
        return "anonymous"
    if column == "email_hash" or column.endswith("_email_hash"):
        return "email_hash"
    if column == "order_id" or column.endswith("_order_id"):
        return "order"
    if column == "cart_id":
        return "cart"
    return None


def _id_values(kind: str, numeric: bool, s: Subject, hashes: list[str]) -> list:
    if kind == "email_hash":
        return hashes
    if kind == "anonymous":  # previous_id: an alias call's earlier id, anonymous or not
        return [] if numeric else sorted(s.anonymous_ids | set(s.text_ids))
    values = {"customer": s.ids, "order": s.order_ids, "cart": s.cart_ids}[kind]
    return sorted(values) if numeric else sorted(str(v) for v in values)


def _where(
    columns: list[tuple[str, str, str]], s: Subject, hashes: list[str], content: bool
) -> tuple[sql.Composable, list]:
    """The rows of a table that name the customer (see the module docstring); by their id
    columns only unless `content`."""
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    patterns = s.address_patterns() if content else None
    has_id_columns = any(_id_kind(column) for column, _, _ in columns)
    json_ids = [*s.text_ids, *sorted(s.ids), *sorted(s.anonymous_ids)]
    texts = []
    for column, typename, category in columns:
        ident = sql.Identifier(column)
        kind = _id_kind(column)
        values = _id_values(kind, category == "N", s, hashes) if kind else []
        if values:
            cast = sql.SQL("bigint[]" if category == "N" else "text[]")
            clauses.append(sql.SQL("{} = any(%s::{})").format(ident, cast))
            params.append(values)
        if category in ("S", "A") or typename in ("json", "jsonb"):
            texts.append(sql.SQL("{}::text").format(ident))
        if content and typename == "jsonb" and not has_id_columns and json_ids:
            keys = " || ".join(f"@.{k} == $ids" for k in JSON_ID_KEYS)
            clauses.append(sql.SQL("jsonb_path_exists({}, %s, %s)").format(ident))
            params += [f"lax $.** ? ({keys})", Jsonb({"ids": json_ids})]
    if patterns and texts:
        # the row's text columns in one string, one regular expression a row (a space keeps
        # them apart); about five times faster than one per column
        row_text = sql.SQL("concat_ws(' ', {})").format(sql.SQL(", ").join(texts))
        clauses.append(sql.SQL("case when {0} ~* %s then {0} ~* %s else false end").format(row_text))
        params += list(patterns)
    return sql.SQL(" or ").join(clauses), params


def _delete(
    conn: psycopg.Connection,
    tables: dict,
    s: Subject,
    hashes: list[str],
    deleted: dict[str, int],
    *,
    contents: bool = True,
) -> None:
    """Delete the rows of `tables` that name the customer, adding the counts to `deleted`.
    Without `contents`, tables with id columns are searched by them only."""
    for name, columns in tables.items():
        content = contents or not any(_id_kind(column) for column, _, _ in columns)
        where, params = _where(columns, s, hashes, content)
        if not params:
            continue
        schema, table = name.split(".", 1)
        cur = conn.execute(
            sql.SQL("delete from {}.{} where {}").format(
                sql.Identifier(schema), sql.Identifier(table), where
            ),
            params,
        )
        if cur.rowcount:
            deleted[name] = deleted.get(name, 0) + cur.rowcount


def _lock(conn: psycopg.Connection, s: Subject) -> None:
    """Wait for an ingest and for engine batches holding the customers, and keep them out until
    the commit (the locks the ingest and the engine's claim take)."""
    from campaigns.batch import CUSTOMER_LOCK_NS
    from campaigns.timers import INGEST_LOCK

    conn.execute("select pg_advisory_xact_lock(%s)", (INGEST_LOCK,))
    conn.execute(
        "select pg_advisory_xact_lock(c # %s::bigint) from unnest(%s::bigint[]) c order by c",
        (CUSTOMER_LOCK_NS, sorted(s.ids)),
    )


def _erase_files(s: Subject) -> dict[str, int]:
    """The customer's messages in the sink's outbox, rows in the CRM exports, previews."""
    from campaigns import config
    from ml import config as ml_config

    patterns = s.address_patterns()
    address = re.compile(patterns[1].encode() if patterns else rb"(?!)", re.IGNORECASE)
    exports = ml_config.export_dir()
    erased = {
        "files:outbox": _erase_outbox(config.sink_dir(), address),
        "files:exports": sum(_erase_csv_rows(p, s, address) for p in exports.glob("*.csv")),
        "files:previews": _erase_previews(settings.LOCAL_DIR / "previews", s, address),
    }
    return {k: v for k, v in erased.items() if v}


def _erase_outbox(outbox: Path, address: re.Pattern) -> int:
    """Delete the .eml files to the addresses; blank them in the index in place, at the same
    length, because the running sink appends to it."""
    deleted = 0
    for path in outbox.glob("*.eml"):
        with path.open("rb") as f:
            head = f.read(65536).split(b"\r\n\r\n", 1)[0]
        if address.search(head):
            path.unlink(missing_ok=True)
            deleted += 1
    index = outbox / "index.jsonl"
    if index.exists():
        with index.open("r+b") as f:
            for m in address.finditer(f.read()):
                f.seek(m.start())
                f.write(b"*" * (m.end() - m.start()))
    return deleted


def _erase_previews(previews: Path, s: Subject, address: re.Pattern) -> int:
    """Delete previews rendered for the customer (`<campaign>.<variant>.<customer_id>.<ext>`)."""
    suffixes = {f".{i}" for i in s.ids}
    deleted = 0
    for path in previews.glob("*"):
        if path.is_file() and (Path(path.stem).suffix in suffixes or address.search(path.read_bytes())):
            path.unlink(missing_ok=True)
            deleted += 1
    return deleted


def _erase_csv_rows(path: Path, s: Subject, address: re.Pattern) -> int:
    """Drop the customer's rows from a CSV export; rewritten atomically, as the export writes it."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return 0
    id_columns = [
        i for i, name in enumerate(rows[0]) if name == "customer_id" or name.endswith("_customer_id")
    ]
    text_ids = set(s.text_ids)
    kept = [rows[0]] + [
        row
        for row in rows[1:]
        if not any(i < len(row) and row[i] in text_ids for i in id_columns)
        and not address.search(",".join(row).encode())
    ]
    if len(kept) == len(rows):
        return 0
    tmp = path.with_name(f".{path.name}.erasure")
    with tmp.open("w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)
    return len(rows) - len(kept)


def erase(
    *, customer_id: int | None = None, email: str | None = None, url: str | None = None
) -> dict[str, Any]:
    if customer_id is None and not email:
        raise ValueError("give a customer_id or an email")
    with (
        psycopg.connect(url or settings.warehouse_url(), application_name="emailp-erasure") as conn,
        conn.transaction(),
    ):
        s = find(conn, customer_id, email)
        hashes = sorted(hash_email(e) for e in s.emails)
        tables = _tables(conn)
        realtime = {n: c for n, c in tables.items() if n.startswith(REALTIME_SCHEMAS)}
        deleted: dict[str, int] = {}
        _delete(conn, {n: c for n, c in tables.items() if n not in realtime}, s, hashes, deleted)
        _lock(conn, s)
        # every row the ingest and the engine write names the customer by id: found by it, the
        # locks are held for moments, not for a scan of every decision ever logged
        _delete(conn, realtime, s, hashes, deleted, contents=False)
        deleted |= _erase_files(s)
        conn.execute(
            """insert into ops.erased_customers (customer_id_hash)
               select ops.customer_id_hash(c) from unnest(%s::bigint[]) c on conflict do nothing""",
            (sorted(s.ids),),
        )
        conn.execute(
            """insert into ops.suppressions (email_hash, reason, source)
               select h, 'erasure', 'erasure' from unnest(%s::text[]) h on conflict do nothing""",
            (hashes,),
        )
        conn.execute(
            """insert into ops.erasure_log (email_hash, customer_id_hash, rows_deleted)
               values (%s, ops.customer_id_hash(%s::bigint), %s)""",
            (hashes[0] if hashes else None, customer_id if customer_id is not None else min(s.ids, default=None),
             Jsonb(deleted)),
        )  # fmt: skip
    return {"customers": len(s.ids), "addresses_suppressed": len(hashes), "rows_deleted": deleted}
