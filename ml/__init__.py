"""VIP, churn and lifetime-value models, segments and recommendations.

One module per stage (features, labels, train, evaluate, register, score,
recommend, clv), each also a command of `python -m ml`; features come from
the dbt marts only. Every run is tracked in MLflow; scoring loads the
registered models by the alias `champion`: the daily batch (`score`, written
back by `writeback`) and the campaigns' send time (`realtime`, the one
module the campaign engine imports).
"""
