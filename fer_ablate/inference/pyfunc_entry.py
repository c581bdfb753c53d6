"""The photo model as MLflow "models from code": logged by ``promote`` instead of a pickled object."""

import mlflow

from fer_ablate.inference.pyfunc_model import PhotoModel

mlflow.models.set_model(PhotoModel())
