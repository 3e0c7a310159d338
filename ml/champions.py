"""The `champion` of each model, as batch scoring (ml.score) and send-time scoring (ml.realtime) load it.

VIP and churn are scikit-learn models in skops format (no pickle: see
ml/DECISIONS.md); CLV is a models-from-code pyfunc whose only artifact is a
JSON file of fitted parameters. A version is loaded by number, so a promotion
between looking up the alias and loading cannot mix two generations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ml import config


@dataclass
class Champion:
    name: str
    version: str
    model: object
    columns: list[str] | None  # the input columns of the model's signature


@dataclass
class Champions:
    vip: Champion
    churn: Champion
    clv: Champion | None

    @property
    def versions(self) -> dict[str, str | None]:
        return {
            "vip_model_version": self.vip.version,
            "churn_model_version": self.churn.version,
            "clv_model_version": self.clv.version if self.clv else None,
        }

    def without_clv(self) -> Champions:
        return Champions(self.vip, self.churn, None)


def versions() -> dict[str, str | None]:
    """The registered `champion` version of the VIP, churn and CLV models (None where there is none)."""
    from ml import register

    return {
        target: register.champion_version(config.model_name(target)) for target in (*config.TARGETS, "clv")
    }


def load(found: dict[str, str | None]) -> Champions:
    """Load these versions; LookupError when VIP or churn has none."""
    from ml import clv, register

    missing = [config.model_name(t) for t in config.TARGETS if found[t] is None]
    if missing:
        raise LookupError(f"no champion for {', '.join(missing)}: run `python -m ml train` first")
    loaded = {}
    for target in config.TARGETS:
        name, version = config.model_name(target), found[target]
        loaded[target] = Champion(
            name, version, register.load_version(name, version), register.input_columns(name, version)
        )
    clv_champion = None
    if found.get("clv") is not None:
        name = config.model_name("clv")
        clv_champion = Champion(name, found["clv"], clv.load_version(found["clv"]), clv.INPUTS)
    return Champions(loaded["vip"], loaded["churn"], clv_champion)


_lock = threading.Lock()
_cache: dict[str, Champions] = {}


def current(refresh: bool = False) -> Champions:
    """The champions, loaded once per process (per tracking URI) for batch runs."""
    from ml import tracking

    uri = tracking.setup()
    with _lock:
        if refresh or uri not in _cache:
            _cache[uri] = load(versions())
        return _cache[uri]
