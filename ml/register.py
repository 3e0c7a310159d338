"""The model registry: register a challenger, promote it to `champion` only when it wins.

Promotion uses aliases (MLflow stages are deprecated). The challenger and the
current champion are scored on the same holdout; the challenger takes the
alias when its metric beats the champion's by `margin`. The decision, both
metrics and the reason are written as tags on the challenger's model version
and returned, so the training run logs them too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from ml import config, tracking

log = logging.getLogger(__name__)


@dataclass
class Decision:
    model: str
    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_value: float
    champion_value: float | None
    margin: float
    promoted: bool
    reason: str

    def as_tags(self) -> dict[str, str]:
        return {f"promotion.{k}": "" if v is None else str(v) for k, v in asdict(self).items()}


def client():
    from mlflow import MlflowClient

    tracking.setup()
    return MlflowClient()


def register(model_uri: str, name: str, tags: dict[str, str] | None = None) -> str:
    """Register a logged model as a new version of `name`; return the version."""
    import mlflow

    tracking.setup()
    mv = mlflow.register_model(model_uri, name, tags=tags)
    return str(mv.version)


def champion_version(name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, config.CHAMPION_ALIAS).version)
    except MlflowException:
        return None


def load_version(name: str, version: str):
    """A registered scikit-learn model, deserialised by skops with our own allow-list of types.

    MLflow's loader takes the allow-list from the model's MLmodel file (a
    crafted model could trust anything) and also loads pickles; this one
    trusts only `ml.models.TRUSTED_TYPES` and refuses any other format.
    """
    from pathlib import Path

    import skops.io
    import yaml
    from mlflow.artifacts import download_artifacts

    from ml.models import TRUSTED_TYPES

    local = Path(download_artifacts(client().get_model_version_download_uri(name, str(version))))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("sklearn", {})
    if flavor.get("serialization_format") != "skops":
        raise ValueError(
            f"{name} v{version} is not a skops model ({flavor.get('serialization_format')!r}): not loaded"
        )
    return skops.io.load(local / flavor["pickled_model"], trusted=TRUSTED_TYPES)


def input_columns(name: str, version: str) -> list[str] | None:
    """The input columns in a version's signature (None when it has none)."""
    from mlflow.models import get_model_info

    tracking.setup()
    info = get_model_info(f"models:/{name}/{version}")
    if info.signature is None or info.signature.inputs is None:
        return None
    return info.signature.inputs.input_names()


def score_metric(metric: str, y, score) -> float:
    from ml.evaluate import metrics

    value = metrics(y, score)[metric]
    # lower is better for the Brier score: compare its negation
    return -value if metric == "brier" else value


def promote_if_better(
    name: str,
    challenger: str,
    X_holdout,
    y_holdout,
    *,
    metric: str = config.PROMOTION_METRIC,
    margin: float = config.PROMOTION_MARGIN,
) -> Decision:
    """Compare challenger and champion on the same holdout and move the alias if warranted."""
    c = client()
    challenger_model = load_version(name, challenger)
    columns = input_columns(name, challenger) or list(X_holdout.columns)
    challenger_value = score_metric(
        metric, y_holdout, challenger_model.predict_proba(X_holdout[columns])[:, 1]
    )
    current = champion_version(name)
    champion_value = None
    if current is None:
        promoted, reason = True, "no champion yet"
    elif current == challenger:
        promoted, reason = False, "challenger is already the champion"
        champion_value = challenger_value
    else:
        champ_columns = input_columns(name, current) or columns
        missing = [col for col in champ_columns if col not in X_holdout.columns]
        if missing:
            promoted, reason = True, f"champion v{current} needs columns the holdout lacks: {missing[:5]}"
        else:
            champion_model = load_version(name, current)
            champion_value = score_metric(
                metric, y_holdout, champion_model.predict_proba(X_holdout[champ_columns])[:, 1]
            )
            if not np.isfinite(challenger_value):
                promoted, reason = False, f"challenger {metric} is undefined on this holdout"
            elif not np.isfinite(champion_value) or challenger_value >= champion_value + margin:
                promoted = True
                reason = f"{metric} {challenger_value:.4f} beats champion {champion_value:.4f} by >= {margin}"
            else:
                promoted = False
                reason = (
                    f"{metric} {challenger_value:.4f} does not beat champion {champion_value:.4f} by {margin}"
                )
    decision = Decision(
        model=name,
        challenger_version=str(challenger),
        champion_version=current,
        metric=metric,
        challenger_value=round(float(challenger_value), 6),
        champion_value=None if champion_value is None else round(float(champion_value), 6),
        margin=margin,
        promoted=promoted,
        reason=reason,
    )
    if promoted:
        c.set_registered_model_alias(name, config.CHAMPION_ALIAS, str(challenger))
    for key, value in decision.as_tags().items():
        c.set_model_version_tag(name, str(challenger), key, value)
    log.info("promotion of %s v%s: %s (%s)", name, challenger, promoted, reason)
    return decision


def set_champion(name: str, version: str) -> None:
    """Manual override (rollback): point `champion` at a given version."""
    c = client()
    c.set_registered_model_alias(name, config.CHAMPION_ALIAS, str(version))
    c.set_model_version_tag(name, str(version), "promotion.reason", "set by hand")


def describe(name: str) -> list[dict]:
    """Every version of a model with its aliases and promotion tags."""
    c = client()
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        rows.append(
            {
                "version": mv.version,
                "aliases": list(mv.aliases or []),
                "run_id": mv.run_id,
                "promoted": mv.tags.get("promotion.promoted"),
                "reason": mv.tags.get("promotion.reason"),
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]))
