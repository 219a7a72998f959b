"""The SISA ensemble as an MLflow pyfunc model, so MLflow's own tools can load and serve it.

Input: a 2-D array or DataFrame, one row per sample, holding the sample's model inputs flattened
(the values `SampleTable.tensors()` gives, e.g. pixels scaled to [0, 1]). Output: predicted labels.
Loading needs this package installed (it rebuilds the architectures by name).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from orchestration.config import load_config
from orchestration.models import build_model
from sisa import aggregate


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Aggregated prediction of the exported constituents."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts["ensemble"])
        meta = json.loads((folder / "meta.json").read_text())
        config = load_config(folder / "config.toml")
        self.shape, self.how = tuple(meta["sample_shape"]), meta["aggregation"]
        self.models = []
        for shard in meta["shards"]:
            model = build_model(config.model, self.shape, meta["num_classes"])
            model.load_state_dict(torch.load(folder / f"shard-{shard:03d}.pt", weights_only=True))
            self.models.append(model.eval())

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads type hints as a schema
        """Labels (n,) for inputs (n, features) or (n, *sample_shape)."""
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32)).reshape(-1, *self.shape)
        with torch.no_grad():
            logits = torch.stack([m(x) for m in self.models])  # (models, samples, classes)
        return aggregate(logits, self.how).numpy()


def log_ensemble(client: Any, folder: Path, model_name: str, tags: Mapping[str, str]) -> str:
    """Log the exported ensemble as a pyfunc model, register a new version, tag it; returns its URI."""
    with warnings.catch_warnings():
        # MLflow suggests type hints on predict; the signature comes from the input example instead.
        warnings.simplefilter("ignore", UserWarning)
        info = client.pyfunc.log_model(
            name="ensemble",
            python_model=EnsembleModel(),
            artifacts={"ensemble": str(folder)},
            input_example=np.load(folder / "example.npy"),
            registered_model_name=model_name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pyarrow", "scikit-learn"],
        )
    version = info.registered_model_version
    registry = client.MlflowClient()
    for key, value in tags.items():
        registry.set_model_version_tag(model_name, version, key, value)
    return f"models:/{model_name}/{version}"
