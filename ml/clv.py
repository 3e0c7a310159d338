"""Customer lifetime value: BG/NBD (purchase frequency, P(alive)) and Gamma-Gamma (spend), with lifetimes.

Inputs per customer are the repeat-purchase summary at a cutoff: the mart
customer_features' repeat_purchase_days (x), purchase_span_days (t_x) and
repeat_purchase_value, and observed_days (T, an age: ml.realtime). The models
are fitted in weeks, the unit of the published CDNOW estimates (Fader, Hardie
& Lee 2005: r=0.243, alpha=4.414, a=0.793, b=2.426 on the 2,357-customer
sample with a 39-week calibration period).

The fitted parameters are a JSON artifact, registered in MLflow as a pyfunc
model (`emailp-clv`, from code: ml/clv_pyfunc.py, nothing pickled) whose
predict returns p_alive, expected purchases and predicted CLV over
`config.CLV_MONTHS` months. Scoring reads the JSON (`load_version`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ml import config

log = logging.getLogger(__name__)

WEEK_DAYS = 7.0
CDNOW_CALIBRATION_END = pd.Timestamp("1997-10-01")  # exclusive: 39 weeks from 1997-01-01
CDNOW_DATA_END = pd.Timestamp("1998-07-01")
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}
INPUTS = ["repeat_purchase_days", "purchase_span_days", "observed_days", "repeat_purchase_value"]
PARAMS_FILE = "clv_params.json"


@dataclass
class ClvModel:
    bgnbd: dict[str, float]
    gamma_gamma: dict[str, float] | None

    def fitters(self):
        from lifetimes import BetaGeoFitter, GammaGammaFitter

        bgf = BetaGeoFitter()
        bgf.params_ = pd.Series(self.bgnbd)
        ggf = None
        if self.gamma_gamma:
            ggf = GammaGammaFitter()
            ggf.params_ = pd.Series(self.gamma_gamma)
        return bgf, ggf

    def to_json(self) -> str:
        return json.dumps({"bgnbd": self.bgnbd, "gamma_gamma": self.gamma_gamma})

    @classmethod
    def from_json(cls, text: str) -> ClvModel:
        d = json.loads(text)
        return cls(d["bgnbd"], d["gamma_gamma"])


def _weeks(summary: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = summary["repeat_purchase_days"].to_numpy(dtype=float)
    t_x = summary["purchase_span_days"].to_numpy(dtype=float) / WEEK_DAYS
    T = summary["observed_days"].to_numpy(dtype=float) / WEEK_DAYS
    return x, t_x, T


def fit(summary: pd.DataFrame, penalizer: float = 0.0) -> ClvModel:
    """Fit BG/NBD on every buyer and Gamma-Gamma on the repeat buyers."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import ConvergenceError

    buyers = summary[summary["observed_days"].notna() & (summary["observed_days"] >= 0)]
    x, t_x, T = _weeks(buyers)
    if len(x) == 0:
        raise ValueError("BG/NBD: no buyers before the calibration cutoff")
    # lifetimes suggests an L2 penalty when the optimiser does not converge; a
    # short history with few repeat buyers (a demo shop) can need 0.01 or more
    for extra in (0.0, 1e-3, 1e-2, 1e-1):
        try:
            bgf = BetaGeoFitter(penalizer_coef=penalizer + extra).fit(x, t_x, T)
        except ConvergenceError:
            if extra == 1e-1:
                raise
            log.warning("BG/NBD did not converge with penalizer %s; adding more", penalizer + extra)
            continue
        penalizer += extra
        break
    repeat = buyers[(buyers["repeat_purchase_days"] > 0) & (buyers["repeat_purchase_value"] > 0)]
    gg = None
    if len(repeat) >= 20:
        ggf = GammaGammaFitter(penalizer_coef=penalizer).fit(
            repeat["repeat_purchase_days"], repeat["repeat_purchase_value"]
        )
        gg = {k: float(v) for k, v in ggf.params_.items()}
    return ClvModel({k: float(v) for k, v in bgf.params_.items()}, gg)


def predict(
    model: ClvModel,
    summary: pd.DataFrame,
    months: int = config.CLV_MONTHS,
    discount_rate: float = config.CLV_DISCOUNT_RATE,
) -> pd.DataFrame:
    """p_alive, expected purchases and predicted CLV for the horizon; never-buyers get NaN p_alive."""
    bgf, ggf = model.fitters()
    buyer = summary["observed_days"].notna().to_numpy()
    x, t_x, T = _weeks(summary)
    x, t_x, T = np.nan_to_num(x), np.nan_to_num(t_x), np.nan_to_num(T)
    # BG/NBD's inputs are whole days, so customers share them: evaluate the
    # (hypergeometric, ~2 s per million) formulas once per distinct triple.
    triples, inverse = np.unique(np.column_stack([x, t_x, T]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    ux, ut_x, uT = triples[:, 0], triples[:, 1], triples[:, 2]
    out = pd.DataFrame(index=summary.index)
    with np.errstate(all="ignore"):
        p_alive = np.asarray(bgf.conditional_probability_alive(ux, ut_x, uT))[inverse]
        cums = [
            np.asarray(
                bgf.conditional_expected_number_of_purchases_up_to_time(
                    month * 30.0 / WEEK_DAYS, ux, ut_x, uT
                )
            )
            for month in range(1, months + 1)
        ]
        purchases = cums[-1][inverse]  # the horizon is the last month
        if ggf is not None:
            value = ggf.conditional_expected_average_profit(
                pd.Series(x), pd.Series(summary["repeat_purchase_value"].fillna(0).to_numpy(dtype=float))
            ).to_numpy()
            # discounted monthly: expected purchases in each month times expected value
            per_purchase = np.zeros(len(triples))
            prev = 0.0
            for month, cum in enumerate(cums, start=1):
                per_purchase += (cum - prev) / (1 + discount_rate) ** month
                prev = cum
            clv = per_purchase[inverse] * value
        else:
            value = np.full(len(summary), np.nan)
            clv = np.full(len(summary), np.nan)
    out["p_alive"] = np.where(buyer, p_alive, np.nan)
    out["expected_purchases"] = np.where(buyer, purchases, np.nan)
    out["expected_order_value"] = np.where(buyer, value, np.nan)
    out["predicted_clv"] = np.where(buyer, clv, 0.0)
    return out


def prob_no_purchase(model: ClvModel, summary: pd.DataFrame, days: float) -> np.ndarray:
    """BG/NBD P(no purchase in the next `days` | history).

    Dead, or alive with no Poisson purchase in the window; given alive, the
    purchase rate's posterior is Gamma(r + x, alpha + T), and a customer can
    only drop out right after a purchase, so
    P = 1 - P(alive) + P(alive) * ((alpha + T) / (alpha + T + t)) ** (r + x).
    """
    bgf, _ = model.fitters()
    x, t_x, T = (np.nan_to_num(v) for v in _weeks(summary))
    r, alpha = model.bgnbd["r"], model.bgnbd["alpha"]
    t = days / WEEK_DAYS
    p_alive = bgf.conditional_probability_alive(x, t_x, T)
    return 1 - p_alive + p_alive * ((alpha + T) / (alpha + T + t)) ** (r + x)


def log_and_register(model: ClvModel, example: pd.DataFrame, metrics: dict[str, float], tmp_dir) -> str:
    """Log the fitted parameters as a pyfunc model (from code, nothing pickled) and register it."""
    from pathlib import Path

    import mlflow
    from mlflow.models import infer_signature

    from ml import register, tracking

    path = Path(tmp_dir) / PARAMS_FILE
    path.write_text(model.to_json())
    example = example[INPUTS].head(5).astype("float64").reset_index(drop=True)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("clv_pyfunc.py")),
        artifacts={"params": str(path)},
        signature=infer_signature(example, predict(model, example)),
        input_example=example,
        pip_requirements=tracking.PIP_REQUIREMENTS,
    )
    mlflow.log_params({f"bgnbd_{k}": round(v, 6) for k, v in model.bgnbd.items()})
    if model.gamma_gamma:
        mlflow.log_params({f"gg_{k}": round(v, 6) for k, v in model.gamma_gamma.items()})
    return register.register(
        info.model_uri, config.model_name("clv"), tags={k: f"{v:.4f}" for k, v in metrics.items()}
    )


def load_version(version: str) -> ClvModel:
    """A registered CLV model's fitted parameters, read from its JSON artifact (no code runs)."""
    from pathlib import Path

    from mlflow.artifacts import download_artifacts

    from ml import register

    uri = register.client().get_model_version_download_uri(config.model_name("clv"), str(version))
    found = list(Path(download_artifacts(uri)).rglob(PARAMS_FILE))
    if not found:
        raise LookupError(f"{config.model_name('clv')} v{version} has no {PARAMS_FILE}")
    return ClvModel.from_json(found[0].read_text())


def buyers_at(cutoff, url: str | None = None) -> pd.DataFrame:
    """The repeat-purchase summary (and every other feature) of the customers who had bought by `cutoff`."""
    from ml import features

    f = features.at(cutoff, url)
    return f[f["order_count"] > 0]


def holdout_metrics(model: ClvModel, data, summary: pd.DataFrame, cutoff, days: int) -> dict[str, float]:
    """How well a fit predicts the `days` after `cutoff` for the buyers in `summary`: purchases and spend."""
    from scipy.stats import spearmanr

    cutoff = pd.Timestamp(cutoff)
    end = cutoff + pd.Timedelta(days=days)
    tx = data.transactions
    window = tx[(tx["ordered_at"] >= cutoff) & (tx["ordered_at"] < end)]
    day_counts = window.assign(day=window["ordered_at"].dt.floor("D")).groupby("customer_id")["day"].nunique()
    actual = day_counts.reindex(summary.index, fill_value=0).astype(float)
    spend = window.groupby("customer_id")["amount"].sum().reindex(summary.index, fill_value=0.0)
    bgf, _ = model.fitters()
    x, t_x, T = _weeks(summary)
    expected = bgf.conditional_expected_number_of_purchases_up_to_time(days / WEEK_DAYS, x, t_x, T)
    pred = predict(model, summary, months=max(1, round(days / 30)))
    return {
        "holdout_days": float(days),
        "holdout_purchases_actual": float(actual.sum()),
        "holdout_purchases_predicted": float(np.sum(expected)),
        "holdout_purchases_mae": float(np.mean(np.abs(expected - actual.to_numpy()))),
        "holdout_spend_spearman": float(spearmanr(pred["predicted_clv"], spend).statistic),
    }


@config.limited_threads
def train(
    data,
    cutoff=None,
    holdout_days: int = 180,
    register_model: bool = True,
    promote: bool = True,
    url: str | None = None,
) -> dict:
    """Fit on everything before `cutoff` (default: data end - holdout), report the holdout, refit on all data.

    The registered model is the refit on all the data (CLV has no labels to
    leak: the holdout only checks the calibration fit predicts the future).
    It becomes champion when it is the first, or when the calibration fit's
    holdout purchase MAE is no worse than the champion's on the same holdout.
    """
    import tempfile

    import mlflow

    from ml import register, tracking

    if cutoff is None:
        # a short history (a demo shop of a few months) keeps half of it for the calibration fit
        history = int((data.data_end - data.data_start) / pd.Timedelta(days=1))
        if 2 * holdout_days > history:
            log.warning(
                "clv: %d days of order history; holdout %d days instead of %d",
                history,
                history // 2,
                holdout_days,
            )
            holdout_days = history // 2
        cutoff = data.data_end - pd.Timedelta(days=holdout_days)
    cutoff = pd.Timestamp(cutoff)
    tracking.experiment("clv")
    with (
        mlflow.start_run(run_name=f"clv {data.data_end:%Y-%m-%d}") as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        calibration = buyers_at(cutoff, url)
        calib = fit(calibration)
        metrics = holdout_metrics(calib, data, calibration, cutoff, holdout_days)
        mlflow.log_params(
            {
                "calibration_cutoff": f"{cutoff:%Y-%m-%d}",
                "data_end": f"{data.data_end:%Y-%m-%d}",
                "clv_months": config.CLV_MONTHS,
                "monthly_discount_rate": config.CLV_DISCOUNT_RATE,
            }
        )
        mlflow.log_metrics(metrics)
        full_summary = buyers_at(data.data_end, url)
        model = fit(full_summary)
        result = {
            "run_id": run.info.run_id,
            "metrics": metrics,
            "bgnbd": model.bgnbd,
            "gamma_gamma": model.gamma_gamma,
        }
        if register_model:
            version = log_and_register(model, full_summary, metrics, tmp)
            result["version"] = version
            name = config.model_name("clv")
            current = register.champion_version(name)
            reason = "no champion yet"
            promoted = current is None
            if current is not None:
                champ = load_version(current)
                champ_mae = holdout_metrics(champ, data, calibration, cutoff, holdout_days)[
                    "holdout_purchases_mae"
                ]
                promoted = metrics["holdout_purchases_mae"] <= champ_mae
                reason = f"holdout purchases MAE {metrics['holdout_purchases_mae']:.4f} vs champion {champ_mae:.4f}"
            if promote and promoted:
                register.client().set_registered_model_alias(name, config.CHAMPION_ALIAS, version)
            mlflow.set_tags({"promotion.promoted": str(promote and promoted), "promotion.reason": reason})
            result["promoted"] = promote and promoted
    return result


def cdnow_reference_summary(calibration_end=CDNOW_CALIBRATION_END) -> pd.DataFrame:
    """The CDNOW sample's calibration summary as lifetimes computes it from the raw file (2,357 customers).

    The reference the mart's inputs are checked against on the same data
    (tests/integration/test_ml_cdnow.py), and the fit against the published
    estimates, independently of the warehouse.
    """
    from lifetimes.utils import summary_data_from_transaction_data

    from simulator import cdnow

    customer, day, _cds, cents = cdnow.read(sample=True)
    tx = pd.DataFrame({"customer_id": customer, "day": day, "amount": cents / 100.0})
    summary = summary_data_from_transaction_data(
        tx,
        "customer_id",
        "day",
        monetary_value_col="amount",
        observation_period_end=pd.Timestamp(calibration_end) - pd.Timedelta(days=1),  # the last day observed
        freq="D",
    )
    return summary.rename(
        columns={
            "frequency": "repeat_purchase_days",
            "recency": "purchase_span_days",
            "T": "observed_days",
            "monetary_value": "repeat_purchase_value",
        }
    )[INPUTS]


def published_check(model: ClvModel) -> dict:
    return {
        "bgnbd": model.bgnbd,
        "gamma_gamma": model.gamma_gamma,
        "published_bgnbd": PUBLISHED_BGNBD,
        "published_gamma_gamma": PUBLISHED_GAMMA_GAMMA,
        "bgnbd_max_rel_error": max(abs(model.bgnbd[k] / v - 1) for k, v in PUBLISHED_BGNBD.items()),
    }


@config.limited_threads
def cdnow_report(url: str | None = None, log_to_mlflow: bool = True) -> dict:
    """On a warehouse holding the CDNOW sample (`python -m simulator cdnow --sample`, extract, dbt):
    BG/NBD + Gamma-Gamma on the mart's inputs against the published estimates, and churn AUC on the
    39-week holdout.

    The churn models learn from the calibration period alone: features at
    1997-07-01, label = no purchase in the 13 weeks to 1997-10-01. They are
    scored at 1997-10-01 against "no purchase in the 39-week holdout", next
    to two baselines from the BG/NBD fit on the calibration period:
    1 - P(alive) (`p_alive_baseline`; BG/NBD deems every one-time buyer
    alive, so it ranks them as the least likely to churn) and BG/NBD's own
    P(no purchase in 39 weeks) (`bgnbd_no_purchase`).
    """
    from ml import data as mldata
    from ml import evaluate, features, models, train
    from ml.config import LabelWindows

    d = mldata.from_warehouse(url)
    summary = buyers_at(CDNOW_CALIBRATION_END, url)
    model = fit(summary)
    report: dict = {"customers": int(len(summary)), **published_check(model)}
    holdout_days = (CDNOW_DATA_END - CDNOW_CALIBRATION_END).days  # 273 = 39 weeks
    train_cutoff = pd.Timestamp("1997-07-01")
    tr = train.dataset(
        d, train_cutoff, "churn", LabelWindows(churn_days=(CDNOW_CALIBRATION_END - train_cutoff).days), url
    )
    ho = train.dataset(d, CDNOW_CALIBRATION_END, "churn", LabelWindows(churn_days=holdout_days), url)
    columns, _ = features.learnable(tr.X)  # CDNOW has orders only: no browsing or email features
    trx, hx = tr.X[columns], features.model_matrix(ho.X, columns)
    held = summary.loc[ho.X.index]
    pred = predict(model, held)
    scores = {
        "p_alive_baseline": 1 - pred["p_alive"].to_numpy(),
        "bgnbd_no_purchase": prob_no_purchase(model, held, holdout_days),
    }
    for name in models.CANDIDATES:
        m = models.make(name, "churn").fit(trx, tr.y)
        scores[name] = m.predict_proba(hx)[:, 1]
    report["churn_holdout"] = {
        "train_cutoff": f"{train_cutoff:%Y-%m-%d}",
        "holdout_cutoff": f"{CDNOW_CALIBRATION_END:%Y-%m-%d}",
        "holdout_weeks": holdout_days / 7,
        "holdout_rows": int(len(ho.y)),
        "churn_rate": float(ho.y.mean()),
        "features": columns,
        "metrics": {k: evaluate.metrics(ho.y, v) for k, v in scores.items()},
    }
    report["clv_holdout"] = holdout_metrics(model, d, summary, CDNOW_CALIBRATION_END, holdout_days)
    if log_to_mlflow:
        import tempfile
        from pathlib import Path

        import mlflow

        from ml import tracking

        tracking.experiment("cdnow")
        with (
            mlflow.start_run(run_name="cdnow sample, 39-week calibration"),
            tempfile.TemporaryDirectory() as tmp,
        ):
            mlflow.log_params({f"bgnbd_{k}": round(v, 6) for k, v in model.bgnbd.items()})
            if model.gamma_gamma:
                mlflow.log_params({f"gg_{k}": round(v, 6) for k, v in model.gamma_gamma.items()})
            mlflow.log_metric("bgnbd_max_rel_error", report["bgnbd_max_rel_error"])
            for name, m in report["churn_holdout"]["metrics"].items():
                mlflow.log_metrics(evaluate.mlflow_metrics(f"churn_{name}_", m))
            mlflow.log_metrics(evaluate.mlflow_metrics("clv_", report["clv_holdout"]))
            for p in evaluate.plots(ho.y, scores, Path(tmp), "CDNOW churn, 39-week holdout"):
                mlflow.log_artifact(str(p), artifact_path="plots")
            mlflow.log_dict(report, "cdnow_report.json")
    return report
