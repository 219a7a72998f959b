"""Exact machine unlearning with SISA: Sharded, Isolated, Sliced, Aggregated training.

A pure library (PyTorch, NumPy, pyarrow): it never imports ray, mlflow or `approx`.
"""

from sisa.aggregation import aggregate, majority_vote, mean_posterior
from sisa.config import SisaConfig
from sisa.data import SampleTable
from sisa.encoding import encode
from sisa.ensemble import DeletionReport, SisaRun
from sisa.errors import (
    CheckpointCorruptError,
    ConfigMismatchError,
    InvalidRequestError,
    PendingRequestError,
    SisaError,
)
from sisa.frozen import Frozen
from sisa.inference import PREDICT_BATCH
from sisa.ledger import Ledger
from sisa.plan import ShardPlan
from sisa.store import CheckpointStore
from sisa.training import ShardJob, ShardReport, ShardTrainer, SliceReport

__all__ = [
    "CheckpointCorruptError",
    "CheckpointStore",
    "ConfigMismatchError",
    "DeletionReport",
    "Frozen",
    "InvalidRequestError",
    "Ledger",
    "PREDICT_BATCH",
    "PendingRequestError",
    "SampleTable",
    "ShardJob",
    "ShardPlan",
    "ShardReport",
    "ShardTrainer",
    "SisaConfig",
    "SisaError",
    "SisaRun",
    "SliceReport",
    "aggregate",
    "encode",
    "majority_vote",
    "mean_posterior",
]
