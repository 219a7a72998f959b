"""The SISA ensemble as an MLflow pyfunc model, so MLflow's own tools can load and serve it.

The model is defined by code, never by a pickle: MLflow logs `ensemble_model.py` (models from
code), the constituents' weights as tensor-only files loaded with `weights_only=True`, and this
package's `sisa` and `orchestration` sources as the model's code, so it loads in an environment
that has neither this checkout nor this package installed (`mlflow models serve`, a Docker image).

Input: a 2-D array or DataFrame, one row per sample, holding the sample's model inputs flattened
(the values `SampleTable.tensors()` gives, e.g. pixels scaled to [0, 1]); over HTTP,
`{"inputs": [[...], ...]}`. Output: predicted labels.

With a frozen backbone the model holds its weights once (`backbone.pt`, the backbone saw only
public data) and each constituent's trained part: head mode runs the backbone once and every head
on its features, as `SisaRun` does; adapter mode runs each adapted constituent.

What it does not hold: the run's secret, the shard of any training sample, any training sample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from orchestration.config import load_config
from orchestration.frozen.backbone import backbone_from_state
from orchestration.frozen.constituents import constituent_factory
from sisa import aggregate
from sisa.encoding import encode_inputs
from sisa.frozen import load_trainable
from sisa.inference import for_inference, outputs

_PACKAGES = ("sisa", "orchestration")
_ENTRY = Path(__file__).with_name("ensemble_model.py")


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Aggregated prediction of the exported constituents."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts["ensemble"])
        meta = json.loads((folder / "meta.json").read_text())
        config = load_config(folder / "config.toml")
        self.shape, self.how = tuple(meta["sample_shape"]), meta["aggregation"]
        trainable, backbone = meta.get("trainable", "all"), None
        if meta.get("backbone"):
            state = torch.load(folder / meta["backbone"], weights_only=True)
            backbone = backbone_from_state(config.model, self.shape, meta["backbone_num_classes"], state)
        shape = backbone.feature_shape if trainable == "head" else self.shape
        factory = constituent_factory(config.model, trainable, shape, meta["num_classes"], backbone)
        self.encoder = backbone.module if trainable == "head" else None
        self.models = [for_inference(load_trainable(factory(), torch.load(folder / name, weights_only=True)))
                       for name in meta["weights"]]

    # Typed as an array (MLflow then neither validates nor warns); a DataFrame or nested lists work too.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Labels (n,) for inputs (n, features) or (n, *sample_shape)."""
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32)).reshape(-1, *self.shape)
        if self.encoder is not None:
            x = encode_inputs(self.encoder, x, fixed_batches=False)  # one backbone pass; the heads take its features
        logits = torch.stack([outputs(m, x) for m in self.models])  # (models, samples, classes)
        return aggregate(logits, self.how).numpy()


def requirements() -> list[str]:
    """What the model needs installed besides MLflow: the libraries its code imports."""
    import pyarrow
    import tomli_w  # noqa: F401 - imported by orchestration.config

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}", f"pyarrow=={pyarrow.__version__}",
            "tomli-w"]


def log_ensemble(client: Any, folder: Path, model_name: str, tags: Mapping[str, str]) -> Any:
    """Log the exported ensemble as a pyfunc model, register a new version, tag it; returns the ModelInfo."""
    root = Path(__file__).resolve().parents[1]
    info = client.pyfunc.log_model(
        name="ensemble",
        python_model=str(_ENTRY),
        artifacts={"ensemble": str(folder)},
        code_paths=[str(root / package) for package in _PACKAGES],
        input_example=np.load(folder / "example.npy"),
        registered_model_name=model_name,
        pip_requirements=requirements(),
    )
    registry = client.MlflowClient()
    for key, value in tags.items():
        registry.set_model_version_tag(model_name, info.registered_model_version, key, value)
    return info
