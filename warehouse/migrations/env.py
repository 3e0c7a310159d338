"""Alembic environment: plain SQL migrations against the warehouse database."""

from alembic import context
from sqlalchemy import create_engine, pool

from warehouse import settings


def sqlalchemy_url() -> str:
    url = settings.warehouse_url()
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def run_migrations_online() -> None:
    engine = create_engine(sqlalchemy_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, version_table_schema="ops")
        connection.exec_driver_sql("create schema if not exists ops")
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
