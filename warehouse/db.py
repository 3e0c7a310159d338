"""Connections to the warehouse (psycopg 3)."""

from __future__ import annotations

import psycopg

from warehouse import settings


def connect_warehouse(**kwargs) -> psycopg.Connection:
    return psycopg.connect(settings.warehouse_url(), **kwargs)
