"""The candidate models: gradient boosting against two baselines (an RFM rule and logistic regression).

They are scikit-learn estimators with `predict_proba`, so training,
evaluation, MLflow logging and scoring treat them alike.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

CANDIDATES = ("rfm_rule", "logistic_regression", "gradient_boosting")
# Types inside our saved models that skops (MLflow's default format) does not
# trust by default. We write these files ourselves, into our own artifact store.
TRUSTED_TYPES = [
    "ml.models.RFMRule",
    "ml.models.signed_log1p",
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]


def signed_log1p(x):
    """Compress heavy-tailed counts and amounts for the linear model."""
    return np.sign(x) * np.log1p(np.abs(x))


class RFMRule(ClassifierMixin, BaseEstimator):
    """Baseline: the sum of R, F and M quintile scores, mapped to the training rate per score.

    `direction="high"`: more recent, frequent, monetary means more likely
    (VIP); "low": less means more likely (churn). Customers who never bought
    get their own cell.
    """

    def __init__(self, direction: str = "high"):
        self.direction = direction

    def _scores(self, X) -> np.ndarray:
        r = np.searchsorted(self.edges_["r"], -X["recency_days"].to_numpy(dtype=float), side="right") + 1
        f = np.searchsorted(self.edges_["f"], X["order_count"].to_numpy(dtype=float), side="right") + 1
        m = np.searchsorted(self.edges_["m"], X["total_revenue"].to_numpy(dtype=float), side="right") + 1
        total = r + f + m
        if self.direction == "low":
            total = 18 - total
        buyer = X["order_count"].to_numpy(dtype=float) > 0
        return np.where(buyer, total, 0).astype(np.int64)

    def fit(self, X, y) -> RFMRule:
        y = np.asarray(y, dtype=float)
        buyers = X["order_count"].to_numpy(dtype=float) > 0
        qs = [0.2, 0.4, 0.6, 0.8]
        b = X[buyers] if buyers.any() else X
        self.edges_ = {
            "r": np.unique(np.quantile(-b["recency_days"].fillna(1e6).to_numpy(dtype=float), qs)),
            "f": np.unique(np.quantile(b["order_count"].to_numpy(dtype=float), qs)),
            "m": np.unique(np.quantile(b["total_revenue"].to_numpy(dtype=float), qs)),
        }
        scores = self._scores(X)
        prior = y.mean() if len(y) else 0.5
        hits = np.bincount(scores, weights=y, minlength=19)
        counts = np.bincount(scores, minlength=19)
        # smoothed towards the overall rate, so thin cells do not get 0 or 1
        self.rates_ = (hits + 5 * prior) / (counts + 5)
        self.prior_ = float(prior)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X) -> np.ndarray:
        scores = self._scores(X)
        p = self.rates_[scores]
        # break ties inside a cell by the raw score, so rankings are not flat
        p = p + 1e-6 * scores
        p = np.clip(p, 0.0, 1.0)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def make(name: str, target: str, *, seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if name == "rfm_rule":
        return RFMRule(direction="low" if target == "churn" else "high")
    if name == "logistic_regression":
        return Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                ("log", FunctionTransformer(signed_log1p)),
                ("scale", StandardScaler()),
                ("clf", LogisticRegression(max_iter=2000)),
            ]
        )
    if name == "gradient_boosting":
        return HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.1,
            max_leaf_nodes=31,
            min_samples_leaf=40,
            l2_regularization=1.0,
            early_stopping=True,
            validation_fraction=0.15,
            n_iter_no_change=10,
            random_state=seed,
        )
    raise ValueError(f"unknown model {name!r}")
