"""dbt: a full build and one hour's incremental run at shop scale.

    make bench BENCH=dbt

Simulates 100,000 customers over 365 days (>= 5 million web events) into a
dedicated shop database (`bench_dbt_shop`, kept between runs when the spec is
unchanged), extracts it into a fresh dedicated warehouse (`bench_dbt_warehouse`)
up to one hour before the end, and times `dbt build` (every model, snapshot and
test) from scratch: full_build_s. Then extracts the last hour and times the
next `dbt build`, which merges the new events incrementally: incremental_run_s.
Both include dbt's (warm, partial) parse, as a scheduled run pays it.

BENCH_DBT_CUSTOMERS and BENCH_DBT_DAYS shrink it for a quick try. There is no
reference measured alongside: the targets are absolute (<= 300 s, <= 60 s).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from bench import BENCH_DIR, Figure
from warehouse import settings

log = logging.getLogger(__name__)

CUSTOMERS = int(os.environ.get("BENCH_DBT_CUSTOMERS", "100000"))
DAYS = int(os.environ.get("BENCH_DBT_DAYS", "365"))
SEED = 1
END = datetime(2026, 1, 1, tzinfo=UTC)  # fixed, so a rerun generates the same shop
SHOP_DB = "bench_dbt_shop"
WAREHOUSE_DB = "bench_dbt_warehouse"


def _url(database: str) -> str:
    """The warehouse server's URL with another database (a libpq URL, as settings use)."""
    return settings.with_database(settings.warehouse_url(), database)


def _simulator_digest() -> str:
    """The generator's code and schema: a shop made by an older simulator is made again
    (its tables may lack columns the extraction now reads)."""
    import hashlib

    import simulator

    files = sorted(Path(simulator.__file__).parent.glob("*.py")) + sorted(
        Path(simulator.__file__).parent.glob("*.sql")
    )
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]


def _shop(admin: str) -> str:
    """The simulated shop, generated unless the same spec (and simulator) is already there."""
    from simulator import source
    from warehouse import embedded

    url = _url(SHOP_DB)
    spec = f"customers={CUSTOMERS} days={DAYS} seed={SEED} end={END:%Y-%m-%d} simulator={_simulator_digest()}"
    if not embedded.create_database(admin, SHOP_DB):
        with psycopg.connect(url) as conn:
            done = conn.execute("select to_regclass('public.bench_spec') is not null").fetchone()[0]
            if done and conn.execute("select spec from public.bench_spec").fetchone() == (spec,):
                print(f"   shop {SHOP_DB}: reusing {spec}", flush=True)
                return url
    source.create_schema(url)
    print(f"   shop {SHOP_DB}: generating {spec}", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "simulator",
            "generate",
            "--customers",
            str(CUSTOMERS),
            "--days",
            str(DAYS),
            "--seed",
            str(SEED),
            "--end",
            f"{END:%Y-%m-%d}",
        ],
        env={**os.environ, "SHOP_DATABASE_URL": url},
        check=True,
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table if not exists public.bench_spec (spec text not null)")
        conn.execute("truncate public.bench_spec")
        conn.execute("insert into public.bench_spec values (%s)", (spec,))
    return url


def _fresh_warehouse(admin: str) -> str:
    from warehouse import embedded, migrate

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{WAREHOUSE_DB}" with (force)')
    embedded.create_database(admin, WAREHOUSE_DB)
    migrate.upgrade()  # WAREHOUSE_URL points at it already
    return settings.warehouse_url()


def _extract(window_end: datetime) -> dict[str, int]:
    from extract.load import extract_all

    return {r.raw_table: r.row_count for r in extract_all(window_end)}


def _timed_build(target) -> float:
    from warehouse import dbt

    started = time.perf_counter()
    dbt.run_dbt(["build"], target_path=target, quiet=True)
    return time.perf_counter() - started


def run() -> list[Figure]:
    from warehouse import dbt, embedded, env

    if settings.uses_embedded_server() or settings.PG_DATA_DIR.as_posix() in settings.warehouse_url():
        embedded.start()
    admin = _url("postgres")
    target = BENCH_DIR / "dbt_target"
    with env.overridden({"SHOP_DATABASE_URL": _shop(admin), "WAREHOUSE_URL": _url(WAREHOUSE_DB)}):
        _fresh_warehouse(admin)

        first = _extract(END - timedelta(hours=1))
        print(f"   extracted up to {END - timedelta(hours=1):%Y-%m-%d %H:%M}: {first}", flush=True)
        dbt.parse(target_path=target)  # a scheduled run finds the partial parse warm
        full_build_s = _timed_build(target)
        print(f"   full build: {full_build_s:.1f} s", flush=True)

        last_hour = _extract(END)
        print(f"   extracted the last hour: {last_hour}", flush=True)
        incremental_run_s = _timed_build(target)
        print(f"   incremental run: {incremental_run_s:.1f} s", flush=True)

        with psycopg.connect(settings.warehouse_url()) as conn:
            events = conn.execute("select count(*) from intermediate.int_events_stitched").fetchone()[0]
            customers = conn.execute("select count(*) from staging.stg_shop__customers").fetchone()[0]

    return [
        Figure("full_build_s", full_build_s, "s", target="<= 300"),
        Figure("incremental_run_s", incremental_run_s, "s", target="<= 60"),
        Figure("events", float(events), "rows", target=">= 5,000,000"),
        Figure("customers", float(customers), "rows"),
        Figure("last_hour_events", float(last_hour.get("web_events", 0)), "rows"),
    ]
