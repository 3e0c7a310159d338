"""Command line: `python -m campaigns <command>`.

validate                         check every campaign definition, print all problems
preview CAMPAIGN [--variant V] [--customer-id N] [--out DIR]
                                 render to HTML, text and .eml files
run-once [--batch-size N] [--no-ingest]
                                 ingest raw events and send what is due, without Airflow
erase (--customer-id N | --email E) [--yes]
                                 remove a customer everywhere, keep a hashed suppression
dead-letters [--stage S] [--limit N]
                                 list the rows the ingest and the engine set aside, newest first

The local SMTP sink is part of the development harness: `make sink`
(`python -m harness.smtp_sink`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from warehouse import env

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    env.apply_defaults()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def validate() -> None:
    """Validate every campaign definition and the policy; exit 1 listing all problems."""
    from campaigns.schema import DefinitionError, load_campaigns, load_policy

    try:
        campaigns = load_campaigns(include_disabled=True)
        load_policy()
    except DefinitionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    from campaigns import config

    for c in campaigns.values():
        delay = f", delay {c.trigger.delay}" if getattr(c.trigger, "delay", None) is not None else ""
        typer.echo(
            f"ok  {c.name}: {c.trigger.kind} trigger{delay}, {len(c.variants)} variant(s),"
            f" holdout {c.holdout:.0%}"
        )
    if config.delay_scale() != 1.0:
        typer.echo(
            f"note: CAMPAIGNS_DELAY_SCALE={config.delay_scale():g} scales the event-trigger delays above"
        )


@app.command()
def preview(
    campaign: str,
    variant: str = typer.Option(None, help="variant name (default: every variant)"),
    customer_id: int = typer.Option(None, help="render for this customer from the warehouse"),
    out: Path = typer.Option(Path(".local/previews"), help="output directory"),  # noqa: B008
) -> None:
    """Render a campaign (every variant, or one) to .html, .txt and .eml files."""
    from campaigns import preview as pv

    for path in pv.write_preview(campaign, variant, customer_id, out):
        typer.echo(str(path))


@app.command("run-once")
def run_once(
    batch_size: int = typer.Option(500),
    no_ingest: bool = typer.Option(False, "--no-ingest", help="skip reading raw events"),
    max_seconds: float = typer.Option(None),
    senders: int = typer.Option(8, help="parallel SMTP connections"),
    shard: int = typer.Option(0, help="process only customers of this shard ..."),
    shards: int = typer.Option(1, help="... out of this many"),
) -> None:
    """Ingest raw events into timers and process every due trigger once, without Airflow."""
    import psycopg

    from campaigns import timers
    from campaigns.engine import Engine
    from campaigns.schema import load_campaigns
    from warehouse import settings

    campaigns = load_campaigns()
    if not no_ingest:
        with psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
            stats = timers.ingest(conn, campaigns)
            typer.echo(json.dumps({"ingest": stats.__dict__}, default=str))
    result = Engine(
        campaigns=campaigns, batch_size=batch_size, senders=senders, shard=shard, shards=shards
    ).run(max_seconds=max_seconds)
    typer.echo(json.dumps({"process": result.as_dict()}))


@app.command()
def erase(
    customer_id: int = typer.Option(None),
    email: str = typer.Option(None),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Erase a customer from raw, ops, marts and ml tables; keep only a hashed suppression."""
    from campaigns import erasure

    if customer_id is None and not email:
        raise typer.BadParameter("give --customer-id or --email")
    if not yes:
        typer.confirm(f"Erase customer {customer_id or email} everywhere? This cannot be undone", abort=True)
    report = erasure.erase(customer_id=customer_id, email=email)
    typer.echo(json.dumps(report, indent=2))


@app.command("dead-letters")
def dead_letters(
    stage: str = typer.Option(None, help="only rows of this stage, e.g. raw.events"),
    limit: int = typer.Option(100, help="at most this many, newest first"),
) -> None:
    """List the rows the trigger ingest and the engine set aside (ops.dead_letters), with their errors."""
    import psycopg

    from campaigns import dead_letters as letters
    from warehouse import settings

    with psycopg.connect(settings.warehouse_url(), autocommit=True) as conn:
        rows = letters.listing(conn, stage, limit)
    for r in rows:
        typer.echo(f"{r['created_at']:%Y-%m-%d %H:%M:%S%z}  {r['stage']}  {r['source_key']}  {r['error']}")
    typer.echo(f"{len(rows)} dead letter(s)" + (f" of {stage}" if stage else ""), err=True)
