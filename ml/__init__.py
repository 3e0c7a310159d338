"""VIP, churn and lifetime-value models, segments and recommendations.

One module per stage (features, labels, train, evaluate, register, score,
recommend, clv), each also a command of `python -m ml`. Every run is tracked in
MLflow; scoring loads the registered models by the alias `champion`.
"""
