"""The application: configs, datasets, models, shard workers and the `unlearn` CLI.

Composes the `sisa` and `approx` libraries; the only package that may import ray or mlflow.
"""
