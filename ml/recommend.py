"""Product recommendations: item-to-item collaborative filtering with a popularity fallback.

Similarity of B to A is P(B in a basket | A in it) (co-purchase confidence,
the definition of the dbt mart product_affinity; co-views count at half
weight when the mart has them). A customer's candidates score the sum of
similarities to what they bought, recently bought items weighing more; their
own purchases and out-of-stock or inactive products are excluded; the list is
topped up from the most popular products. Evaluated offline on a time split
(precision@10, recall@10, catalogue coverage) against popularity alone, and
logged in MLflow.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from ml import config

log = logging.getLogger(__name__)


def _index(products: pd.Series) -> dict[int, int]:
    return {int(p): i for i, p in enumerate(products)}


def cooccurrence_similarity(items: pd.DataFrame, catalogue: np.ndarray):
    """Sparse item x item confidence matrix from order baskets (rows: antecedent A)."""
    from scipy import sparse

    idx = _index(pd.Series(catalogue))
    baskets = items.drop_duplicates(["order_id", "product_id"])
    baskets = baskets[baskets["product_id"].isin(idx)]
    rows = pd.factorize(baskets["order_id"])[0]
    cols = baskets["product_id"].map(idx).to_numpy()
    m = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(rows.max() + 1 if len(rows) else 0, len(catalogue))
    )
    co = (m.T @ m).tocsr().astype(float)
    counts = np.asarray(co.diagonal()).ravel()
    co.setdiag(0)
    co.eliminate_zeros()
    with np.errstate(divide="ignore"):
        inv = np.where(counts > 0, 1.0 / counts, 0.0)
    return sparse.diags(inv) @ co


def affinity_similarity(affinity: pd.DataFrame, catalogue: np.ndarray):
    """The same matrix from the dbt mart product_affinity (co_purchase + 0.5 * co_view confidence)."""
    from scipy import sparse

    idx = _index(pd.Series(catalogue))
    a = affinity[affinity["product_id"].isin(idx) & affinity["related_product_id"].isin(idx)]
    weight = np.where(a["affinity_type"].to_numpy() == "co_view", 0.5, 1.0) * a["confidence"].to_numpy(
        dtype=float
    )
    return sparse.csr_matrix(
        (weight, (a["product_id"].map(idx).to_numpy(), a["related_product_id"].map(idx).to_numpy())),
        shape=(len(catalogue), len(catalogue)),
    )


def popularity(items: pd.DataFrame, catalogue: np.ndarray, since=None) -> np.ndarray:
    """Purchase counts per catalogue product (recent window when `since` is given)."""
    if since is not None:
        items = items[items["ordered_at"] >= since]
    counts = items.groupby("product_id")["order_id"].nunique()
    return counts.reindex(catalogue, fill_value=0).to_numpy(dtype=float)


def recommend(
    history: pd.DataFrame,
    similarity,
    catalogue: np.ndarray,
    pop: np.ndarray,
    available: np.ndarray,
    n: int,
    at,
    customers=None,
    half_life_days: float = 180.0,
) -> pd.DataFrame:
    """Top n per customer: CF scores, purchased and unavailable excluded, topped up by popularity.

    Returns customer_id, rank (1..n), product_id, score, source (item_cf | popular).
    """
    from scipy import sparse

    idx = _index(pd.Series(catalogue))
    h = history[history["product_id"].isin(idx)]
    cust_ids = np.asarray(customers if customers is not None else h["customer_id"].unique(), dtype=np.int64)
    cust_pos = {int(c): i for i, c in enumerate(cust_ids)}
    h = h[h["customer_id"].isin(cust_pos)]
    age = (pd.Timestamp(at) - h["ordered_at"]).dt.total_seconds().to_numpy() / 86400.0
    w = 0.5 ** (np.maximum(age, 0) / half_life_days)
    rows = h["customer_id"].map(cust_pos).to_numpy()
    cols = h["product_id"].map(idx).to_numpy()
    user = sparse.csr_matrix((w, (rows, cols)), shape=(len(cust_ids), len(catalogue)))
    user.sum_duplicates()
    bought = user.copy()
    bought.data[:] = 1.0
    scores = (user @ similarity).toarray() if len(cust_ids) else np.zeros((0, len(catalogue)))
    # tiny popularity term: ties among CF scores (and customers without any) fall back to bestsellers
    pop_norm = pop / (pop.max() or 1.0)
    scores = np.where(scores > 0, scores + 1.0, 0.0) + 1e-3 * pop_norm
    mask = bought.toarray().astype(bool) | ~available[None, :]
    scores[mask] = -np.inf
    k = min(n, len(catalogue))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k else np.zeros((len(cust_ids), 0), dtype=int)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    top_scores = np.take_along_axis(top_scores, order, axis=1)
    out = pd.DataFrame(
        {
            "customer_id": np.repeat(cust_ids, k),
            "rank": np.tile(np.arange(1, k + 1), len(cust_ids)),
            "product_id": catalogue[top.ravel()],
            "score": top_scores.ravel(),
        }
    )
    out = out[np.isfinite(out["score"])]
    out["source"] = np.where(out["score"] >= 1.0, "item_cf", "popular")
    out["score"] = np.where(out["score"] >= 1.0, out["score"] - 1.0, out["score"])
    return out.reset_index(drop=True)


def popular_only(customers, history, catalogue, pop, available, n):
    """The baseline: bestsellers each customer has not bought."""
    from scipy import sparse

    return recommend(
        history,
        sparse.csr_matrix((len(catalogue), len(catalogue))),
        catalogue,
        pop,
        available,
        n,
        history["ordered_at"].max() if len(history) else pd.Timestamp.now(),
        customers,
    )


def precision_recall(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> dict[str, float]:
    """Mean precision@k and recall@k over customers with something new bought in the test window."""
    rec_sets = recs[recs["rank"] <= k].groupby("customer_id")["product_id"].apply(set)
    true_sets = truth.groupby("customer_id")["product_id"].apply(set)
    p, r = [], []
    for cid, actual in true_sets.items():
        got = rec_sets.get(cid, set())
        hits = len(got & actual)
        p.append(hits / k)
        r.append(hits / len(actual))
    return {
        f"precision_at_{k}": float(np.mean(p)) if p else float("nan"),
        f"recall_at_{k}": float(np.mean(r)) if r else float("nan"),
        "test_customers": float(len(p)),
    }


@config.limited_threads
def evaluate_offline(data, split=None, test_days: int = 30, k: int = 10, log_mlflow: bool = True) -> dict:
    """Train on baskets before `split`, test on new products bought in the `test_days` after it."""
    items, products = data.order_items, data.products
    split = pd.Timestamp(split) if split is not None else data.data_end - pd.Timedelta(days=test_days)
    train = items[items["ordered_at"] < split]
    test = items[
        (items["ordered_at"] >= split) & (items["ordered_at"] < split + pd.Timedelta(days=test_days))
    ]
    catalogue = np.sort(products["product_id"].to_numpy(dtype=np.int64))
    available = np.ones(len(catalogue), dtype=bool)  # offline: judge ranking, not today's stock
    prior = train.groupby("customer_id")["product_id"].apply(set)
    test = test[test["customer_id"].isin(prior.index)]
    new = test[
        [
            pid not in prior.get(cid, set())
            for cid, pid in zip(test["customer_id"], test["product_id"], strict=True)
        ]
    ]
    customers = new["customer_id"].unique()
    t0 = time.perf_counter()
    sim = cooccurrence_similarity(train, catalogue)
    pop = popularity(train, catalogue, since=split - pd.Timedelta(days=90))
    cf = recommend(train, sim, catalogue, pop, available, k, split, customers)
    base = popular_only(customers, train, catalogue, pop, available, k)
    seconds = time.perf_counter() - t0
    result = {"split": f"{split:%Y-%m-%d}", "test_days": test_days, "catalogue": len(catalogue)}
    for name, recs in (("item_cf", cf), ("popularity", base)):
        m = precision_recall(recs, new, k)
        m["coverage"] = recs["product_id"].nunique() / len(catalogue)
        result[name] = m
    result["seconds"] = seconds
    if log_mlflow:
        import mlflow

        from ml import evaluate, tracking

        tracking.experiment("recommendations")
        with mlflow.start_run(run_name=f"offline {split:%Y-%m-%d}"):
            mlflow.log_params(
                {
                    "split": result["split"],
                    "test_days": test_days,
                    "k": k,
                    "catalogue": len(catalogue),
                    "data": data.name,
                }
            )
            for name in ("item_cf", "popularity"):
                mlflow.log_metrics(evaluate.mlflow_metrics(f"{name}_", result[name]))
            mlflow.log_dict(result, "offline_eval.json")
    return result


@config.limited_threads
def run(
    generated_at=None,
    *,
    url: str | None = None,
    data=None,
    n: int = config.RECOMMENDATIONS_PER_CUSTOMER,
    evaluate: bool = True,
) -> dict:
    """Recommend for every customer and replace ml.recommendations (one transaction)."""
    import io

    import mlflow
    import psycopg

    from ml import data as mldata
    from ml import tracking
    from warehouse import settings

    url = url or settings.warehouse_url()
    data = data if data is not None else mldata.from_warehouse(url, with_items=True)
    at = pd.Timestamp(generated_at) if generated_at is not None else data.data_end
    at = at.tz_convert("UTC").tz_localize(None) if at.tzinfo else at
    at = min(at, data.data_end)  # a run long after the last order recommends as of the last data
    products = data.products
    catalogue = np.sort(products["product_id"].to_numpy(dtype=np.int64))
    if len(catalogue) == 0:  # a data set of orders without products (CDNOW)
        log.warning("no products in the catalogue: no recommendations")
        with psycopg.connect(url) as conn:
            conn.execute("delete from ml.recommendations")
        return {"customers": 0, "rows": 0, "item_cf_share": 0.0, "similarity": None, "mlflow_run_id": None}
    p = products.set_index("product_id").reindex(catalogue)
    available = (p["is_active"].fillna(False).to_numpy(dtype=bool)) & (p["stock"].fillna(0).to_numpy() > 0)
    items = data.order_items[data.order_items["ordered_at"] < at]
    affinity = None
    with psycopg.connect(url) as conn:
        if conn.execute("select to_regclass('marts.product_affinity')").fetchone()[0] is not None:
            affinity = mldata.read_sql(
                conn,
                "select affinity_type, product_id, related_product_id, "
                "confidence::float8 as confidence from marts.product_affinity",
            )
    sim = (
        affinity_similarity(affinity, catalogue)
        if affinity is not None and len(affinity)
        else cooccurrence_similarity(items, catalogue)
    )
    pop = popularity(items, catalogue, since=at - pd.Timedelta(days=90))
    customers = data.customers["customer_id"].to_numpy() if data.customers is not None else None
    if customers is None:
        customers = items["customer_id"].unique()
    # chunks bound the dense customer x catalogue score matrix
    chunk = max(1000, 20_000_000 // max(len(catalogue), 1))
    recs = pd.concat(
        [
            recommend(items, sim, catalogue, pop, available, n, at, customers[i : i + chunk])
            for i in range(0, max(len(customers), 1), chunk)
        ],
        ignore_index=True,
    )
    summary = {
        "customers": int(recs["customer_id"].nunique()),
        "rows": len(recs),
        "item_cf_share": float((recs["source"] == "item_cf").mean()) if len(recs) else 0.0,
        "similarity": "product_affinity" if affinity is not None and len(affinity) else "co_purchase",
    }
    tracking.experiment("recommendations")
    with mlflow.start_run(run_name=f"recommend {at:%Y-%m-%d}") as run_:
        mlflow.log_params(
            {"n": n, "similarity": summary["similarity"], "generated_at": f"{at:%Y-%m-%d %H:%M}"}
        )
        if evaluate:
            offline = evaluate_offline(data, log_mlflow=False)
            summary["offline"] = offline
            for name in ("item_cf", "popularity"):
                from ml.evaluate import mlflow_metrics

                mlflow.log_metrics(mlflow_metrics(f"{name}_", offline[name]))
        mlflow.log_metrics({"customers": summary["customers"], "item_cf_share": summary["item_cf_share"]})
        version = run_.info.run_id
    generated = at.tz_localize("UTC").to_pydatetime() if at.tzinfo is None else at.to_pydatetime()
    buf = io.StringIO()
    recs.assign(model_version=version, generated_at=generated.isoformat())[
        ["customer_id", "rank", "product_id", "score", "source", "model_version", "generated_at"]
    ].to_csv(buf, index=False, header=False, float_format="%.6g")
    with psycopg.connect(url) as conn:
        conn.execute("delete from ml.recommendations")
        with conn.cursor().copy(
            "copy ml.recommendations (customer_id, rank, product_id, score, source, "
            "model_version, generated_at) from stdin with (format csv)"
        ) as copy:
            copy.write(buf.getvalue())
        conn.commit()
    summary["mlflow_run_id"] = version
    return summary
