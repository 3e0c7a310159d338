"""Run the dbt project against the warehouse that `settings.warehouse_url()` names.

    python -m warehouse.dbt parse          # target/manifest.json, for Cosmos
    python -m warehouse.dbt build          # every model, snapshot and test
    python -m warehouse.dbt docs           # target/static_index.html (dbt's docs site)
    python -m warehouse.dbt lint           # sqlfluff with the dbt templater
    python -m warehouse.dbt <dbt args...>  # anything else, e.g. run -s marts

dbt's profile reads its connection from environment variables (dbt_project/
profiles.yml); `profile_env()` derives them from the libpq URL the rest of the
product uses, so tests, the benchmark, the demo and the DAG all point dbt at
the same database as everything else. dbt is imported lazily: the DAG file
imports this module at parse time.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from warehouse import settings

PROJECT_DIR = settings.PROJECT_ROOT / "dbt_project"
PROFILES_DIR = PROJECT_DIR
TARGET_DIR = PROJECT_DIR / "target"
MANIFEST_PATH = TARGET_DIR / "manifest.json"
PROFILE_NAME = "emailp"
TARGET_NAME = "warehouse"

PASSWORD_KEY = "DBT_ENV_SECRET_WAREHOUSE_PASSWORD"  # DBT_ENV_SECRET_*: dbt scrubs it from logs
PROFILE_ENV_KEYS = (
    "DBT_WAREHOUSE_HOST",
    "DBT_WAREHOUSE_PORT",
    "DBT_WAREHOUSE_USER",
    "DBT_WAREHOUSE_DBNAME",
    PASSWORD_KEY,
    "PGOPTIONS",
)
# Session settings for dbt's connections (libpq reads PGOPTIONS): the models
# sort and hash millions of events, which PostgreSQL's 4 MB default spills to
# disk. Override with DBT_WAREHOUSE_WORK_MEM / DBT_WAREHOUSE_MAINTENANCE_WORK_MEM.
DEFAULT_WORK_MEM = "256MB"
DEFAULT_MAINTENANCE_WORK_MEM = "512MB"


class DbtError(RuntimeError):
    """A dbt command failed (a model, a test, or dbt itself)."""


def profile_env(url: str | None = None, *, secrets: bool = True) -> dict[str, str]:
    """The profile's environment variables for a libpq URL (default: the warehouse's).

    Works for socket directories (`?host=/path`) as well as `user:pw@host:port`.
    With secrets=False the password is left out (libpq then uses PGPASSWORD).
    """
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url or settings.warehouse_url())
    env = {
        "DBT_WAREHOUSE_HOST": str(info.get("host") or "localhost"),
        "DBT_WAREHOUSE_PORT": str(info.get("port") or 5432),
        "DBT_WAREHOUSE_USER": str(info.get("user") or os.environ.get("PGUSER") or "postgres"),
        "DBT_WAREHOUSE_DBNAME": str(info.get("dbname") or "warehouse"),
    }
    if secrets:
        env[PASSWORD_KEY] = str(info.get("password") or "")
    work_mem = os.environ.get("DBT_WAREHOUSE_WORK_MEM", DEFAULT_WORK_MEM)
    maintenance = os.environ.get("DBT_WAREHOUSE_MAINTENANCE_WORK_MEM", DEFAULT_MAINTENANCE_WORK_MEM)
    env["PGOPTIONS"] = f"-c work_mem={work_mem} -c maintenance_work_mem={maintenance}"
    return env


def run_dbt(
    args: Sequence[str],
    *,
    vars: Mapping[str, Any] | None = None,
    target_path: Path | None = None,
    check: bool = True,
    quiet: bool = False,
):
    """Invoke dbt in this process (dbtRunner) with the warehouse profile.

    Returns dbt's `dbtRunnerResult`; raises DbtError when check and it failed.
    `target_path` keeps a caller's artefacts apart (the benchmark, parallel tests).
    """
    from dbt.cli.main import dbtRunner

    os.environ.update(profile_env())
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    command = list(args)
    flags = ["--project-dir", str(PROJECT_DIR), "--profiles-dir", str(PROFILES_DIR)]
    if target_path is not None:
        flags += ["--target-path", str(target_path)]
    if vars:
        flags += ["--vars", json.dumps(dict(vars), default=str)]
    if quiet:
        flags += ["--quiet"]
    # Subcommand first (`docs generate` is two words), then its options.
    head = command[:2] if command[:1] == ["docs"] or command[:1] == ["source"] else command[:1]
    result = dbtRunner().invoke([*head, *flags, *command[len(head) :]])
    if check and not result.success:
        failed = _failures(result)
        raise DbtError(
            f"dbt {' '.join(command)} failed" + (f": {failed}" if failed else f": {result.exception}")
        )
    return result


def _failures(result) -> str:
    try:
        rows = [r for r in result.result.results if str(r.status) in ("error", "fail", "runtime error")]
    except AttributeError:
        return ""
    return "; ".join(f"{r.node.name} ({r.status}): {(r.message or '').strip()[:300]}" for r in rows[:10])


def parse(target_path: Path | None = None) -> Path:
    """Write target/manifest.json, which the dbt_build DAG renders its tasks from."""
    run_dbt(["parse"], target_path=target_path, quiet=True)
    return (target_path or TARGET_DIR) / "manifest.json"


def build(
    *, full_refresh: bool = False, select: str | None = None, vars: Mapping[str, Any] | None = None, **kw
):
    """`dbt build`: seeds, models, snapshots and their tests, in dependency order."""
    args = ["build"]
    if full_refresh:
        args.append("--full-refresh")
    if select:
        args += ["--select", select]
    return run_dbt(args, vars=vars, **kw)


def docs(target_path: Path | None = None) -> Path:
    """dbt's documentation site: target/index.html (+ catalog.json, manifest.json)
    and target/static_index.html, one self-contained file to open in a browser."""
    run_dbt(["docs", "generate", "--static"], target_path=target_path)
    return (target_path or TARGET_DIR) / "static_index.html"


def lint(paths: Sequence[str] = ("models", "macros", "snapshots", "tests")) -> int:
    """sqlfluff with the dbt templater (config in dbt_project/.sqlfluff)."""
    import subprocess

    os.environ.update(profile_env())
    sqlfluff = Path(sys.executable).with_name("sqlfluff")
    return subprocess.call([str(sqlfluff), "lint", *paths], cwd=PROJECT_DIR)


def main(argv: list[str]) -> int:
    from warehouse import env

    env.apply_defaults()
    command = argv[:1]
    try:
        if command == ["parse"]:
            print(parse())
        elif command == ["build"] and len(argv) == 1:
            build()
        elif command == ["docs"] and len(argv) == 1:
            print(docs())
        elif command == ["lint"]:
            return lint(argv[1:] or ("models", "macros", "snapshots", "tests"))
        else:
            return 0 if run_dbt(argv or ["--help"], check=False).success else 1
    except DbtError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
