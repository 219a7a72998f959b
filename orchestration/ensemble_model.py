"""MLflow's entry point for the ensemble (models from code): MLflow runs this file to get the model."""

import mlflow

from orchestration.pyfunc import EnsembleModel

mlflow.models.set_model(EnsembleModel())
