"""The ML stages as commands (Typer): features, labels, train, evaluate, register, score, recommend, clv.

Every command reads the dbt marts of the warehouse (WAREHOUSE_URL). Which
data set they hold is chosen upstream, by what the shop database holds:
`python -m simulator generate` (make DATASET=simulated) or
`python -m simulator cdnow` (make DATASET=cdnow), then extract and dbt.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from typing import Annotated

import typer

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
register_app = typer.Typer(
    help="The model registry: versions, aliases, manual champion.", no_args_is_help=True
)
evaluate_app = typer.Typer(
    help="Evaluations: against simulator ground truth, on CDNOW.", no_args_is_help=True
)
app.add_typer(register_app, name="register")
app.add_typer(evaluate_app, name="evaluate")


class Target(StrEnum):
    churn = "churn"
    vip = "vip"
    clv = "clv"
    all = "all"


def _setup():
    from warehouse import env

    env.apply_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _data(with_items: bool = False):
    from ml import data

    return data.from_warehouse(with_items=with_items)


def _print(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def features(
    cutoff: Annotated[str, typer.Option(help="point in time (ISO date)")],
    out: Annotated[str | None, typer.Option(help="write the rows to this CSV")] = None,
):
    """Point-in-time features of every customer at CUTOFF: the mart customer_features as of then, with ages."""
    _setup()
    from ml import features as f

    frame = f.at(cutoff)
    if out:
        frame.to_csv(out)
    typer.echo(frame.describe().T.to_string())


@app.command()
def labels(
    cutoff: Annotated[str, typer.Option(help="point in time (ISO date)")],
    target: Annotated[str, typer.Option(help="churn or vip")] = "churn",
    window_days: Annotated[int | None, typer.Option(help="outcome window (default: config)")] = None,
):
    """Point-in-time labels at CUTOFF: outcomes in the window after it."""
    _setup()
    from ml import features as f
    from ml import labels as lb
    from ml.config import LabelWindows

    w = LabelWindows()
    if window_days:
        w = LabelWindows(churn_days=window_days, vip_days=window_days, vip_top_fraction=w.vip_top_fraction)
    y = lb.build(_data(), f.at(cutoff), cutoff, target, w)
    _print(
        {
            "target": target,
            "cutoff": cutoff,
            "rows": len(y),
            "positives": int(y.sum()),
            "rate": float(y.mean()),
        }
    )


@app.command()
def train(
    target: Annotated[Target, typer.Option(help="which model(s)")] = Target.all,
    data_end: Annotated[
        str | None, typer.Option(help="pretend the data ends here (default: last order)")
    ] = None,
    folds: Annotated[int, typer.Option(help="stratified k-fold CV folds on the training window")] = 5,
    churn_days: Annotated[int | None, typer.Option(help="churn window (days)")] = None,
    vip_days: Annotated[int | None, typer.Option(help="VIP window (days)")] = None,
    margin: Annotated[float | None, typer.Option(help="promotion margin on holdout ROC AUC")] = None,
    promote: Annotated[bool, typer.Option(help="move `champion` when the challenger wins")] = True,
):
    """Train, evaluate, register and maybe promote the churn, VIP and CLV models."""
    _setup()
    from ml import clv, config
    from ml import train as tr
    from ml.config import LabelWindows

    d = _data()
    base = LabelWindows()
    w = LabelWindows(
        churn_days=churn_days or base.churn_days,
        vip_days=vip_days or base.vip_days,
        vip_top_fraction=base.vip_top_fraction,
    )
    out = {}
    for t in ("churn", "vip"):
        if target in (Target.all, Target(t)):
            r = tr.run(
                t,
                d,
                windows=w,
                data_end=data_end,
                folds=folds,
                promote=promote,
                margin=config.PROMOTION_MARGIN if margin is None else margin,
            )
            out[t] = {
                "run_id": r.run_id,
                "challenger": r.challenger,
                "version": r.version,
                "holdout": r.metrics,
                "decision": r.decision.as_tags() if r.decision else None,
                "seconds": round(r.seconds, 1),
            }
    if target in (Target.all, Target.clv):
        out["clv"] = clv.train(d, promote=promote)
    _print(out)


@app.command()
def score(
    scored_at: Annotated[str | None, typer.Option(help="the run's logical date (default: now)")] = None,
    export: Annotated[bool, typer.Option(help="write the CSV export")] = True,
):
    """Score every customer with the champions; write segments, history, CRM table, CSV."""
    _setup()
    from ml import score as sc

    _print(sc.run(scored_at, export=export))


@app.command("score-one")
def score_one(customer_id: int, at: Annotated[str | None, typer.Option(help="default: now")] = None):
    """Score one customer in real time with the champions (ml.realtime, as the campaigns do)."""
    _setup()
    from ml import realtime

    _print(realtime.score_one(customer_id, at=at))


@app.command()
def recommend(
    n: Annotated[int, typer.Option(help="products per customer")] = 10,
    evaluate: Annotated[bool, typer.Option(help="offline evaluation on a time split")] = True,
    offline_only: Annotated[bool, typer.Option(help="evaluate only, write nothing")] = False,
):
    """Item-to-item CF recommendations into ml.recommendations (with popularity fallback)."""
    _setup()
    from ml import recommend as rc

    if offline_only:
        _print(rc.evaluate_offline(_data(with_items=True)))
    else:
        _print(rc.run(n=n, evaluate=evaluate))


@app.command("clv")
def clv_cmd(
    cdnow: Annotated[
        bool, typer.Option(help="the CDNOW report: published params, churn vs P(alive)")
    ] = False,
):
    """Fit BG/NBD + Gamma-Gamma and register it (or the CDNOW report with --cdnow)."""
    _setup()
    from ml import clv

    _print(clv.cdnow_report() if cdnow else clv.train(_data()))


@evaluate_app.command("truth")
def evaluate_truth():
    """VIP and churn AUC and lift of the current segments against simulator.customer_truth."""
    _setup()
    from ml import evaluate as ev

    _print(ev.truth_report())


@evaluate_app.command("cdnow")
def evaluate_cdnow():
    """On a warehouse holding the CDNOW sample (`python -m simulator cdnow --sample`, extract, dbt):
    BG/NBD against the published estimates; churn AUC on its 39-week holdout."""
    _setup()
    from ml import clv

    _print(clv.cdnow_report())


@register_app.command("show")
def register_show(target: Annotated[str, typer.Argument(help="churn, vip or clv")] = "churn"):
    """Versions of a model with aliases and promotion decisions."""
    _setup()
    from ml import config
    from ml import register as rg

    _print(rg.describe(config.model_name(target)))


@register_app.command("set-champion")
def register_set_champion(target: str, version: str):
    """Point `champion` at VERSION by hand (rollback)."""
    _setup()
    from ml import config
    from ml import register as rg

    rg.set_champion(config.model_name(target), version)
    _print(rg.describe(config.model_name(target)))
