"""Command line: `python -m simulator generate | live | cdnow`."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="A simulated storefront and email provider."
)


def _url() -> str:
    from warehouse import env, settings

    env.apply_defaults()
    return settings.shop_url()


def _print_rows(rows: dict[str, int]) -> None:
    for name in sorted(rows):
        typer.echo(f"  {name:<26} {rows[name]:>12,}")


@app.command()
def generate(
    customers: Annotated[int, typer.Option(help="Number of customers.")] = 20_000,
    days: Annotated[int, typer.Option(help="Days of history, ending at --end.")] = 365,
    seed: Annotated[int, typer.Option(help="Random seed: same seed and arguments, same data.")] = 42,
    end: Annotated[
        str | None, typer.Option(help="End date YYYY-MM-DD (exclusive, UTC); default today.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Parallel COPY connections.")] = 2,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """(Re)fill the shop, ESP and web source tables with a seeded simulation."""
    from simulator.generate import Spec, run, today_utc

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        end_at = dt.datetime.strptime(end, "%Y-%m-%d").replace(tzinfo=dt.UTC) if end else today_utc()
    except ValueError as error:
        raise typer.BadParameter("use YYYY-MM-DD", param_hint="--end") from error
    spec = Spec(customers=customers, days=days, seed=seed, end=end_at)
    result = run(spec, _url(), workers=workers)
    typer.echo(
        f"generated {customers:,} customers x {days} days (seed {seed}, end {end_at:%Y-%m-%d}) "
        f"in {result.seconds:.1f} s"
    )
    _print_rows(result.rows)


@app.command()
def live(
    rate: Annotated[float, typer.Option(help="Events per second.")] = 10.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: run until Ctrl-C).")
    ] = None,
    collector_url: Annotated[
        str | None, typer.Option(help="Send web events to this collector (Segment /v1/batch).")
    ] = None,
    write_key: Annotated[str | None, typer.Option(help="Collector write key (HTTP Basic user name).")] = None,
    shop_webhook_secret: Annotated[
        str | None,
        typer.Option(
            help="Sign purchases as the shop's order.placed webhooks with this Standard Webhooks secret "
            "(default with --collector-url: the collector's configured `shop` secret)."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed for the choices (times are the wall clock).")
    ] = None,
) -> None:
    """Stream new shop activity now: carts, views, orders, status changes."""
    from simulator.live import stream

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if collector_url and not write_key:
        raise typer.BadParameter("--write-key is required with --collector-url")
    if collector_url and not shop_webhook_secret:
        from collector.config import Settings

        shop_webhook_secret = (Settings.from_env().webhook_secrets.get("shop") or (None,))[0]
    stats = stream(
        _url(),
        rate=rate,
        duration=duration,
        collector_url=collector_url,
        write_key=write_key,
        seed=seed,
        shop_webhook_secret=shop_webhook_secret,
    )
    typer.echo(f"live: {stats}")


@app.command()
def cdnow(
    sample: Annotated[
        bool, typer.Option("--sample", help="The 2,357-customer sample instead of all 23,570.")
    ] = False,
) -> None:
    """Load the real CDNOW transactions into shop.customers and shop.orders."""
    from simulator.cdnow import load_cdnow

    rows = load_cdnow(_url(), sample=sample)
    typer.echo(f"loaded CDNOW {'sample' if sample else 'master'}")
    _print_rows(rows)


if __name__ == "__main__":
    app()
