"""Connections to the warehouse (psycopg 3), and catalog look-ups."""

from __future__ import annotations

import psycopg

from warehouse import settings


def connect_warehouse(**kwargs) -> psycopg.Connection:
    return psycopg.connect(settings.warehouse_url(), **kwargs)


def relation_exists(conn: psycopg.Connection, qualified: str) -> bool:
    """Whether `schema.relation` exists (tables written by other stages may not yet)."""
    return conn.execute("select to_regclass(%s) is not null", (qualified,)).fetchone()[0]


def columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """The table's column names, in order."""
    return [
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
            " order by ordinal_position",
            (schema, table),
        )
    ]
