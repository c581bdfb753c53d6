"""Model registry and builders; importing this package registers every builder."""

from . import paper_cnn  # noqa: F401  (registers paper_cnn)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "build_from_config"]


def build_from_config(model_cfg: dict):
    """Build the model described by a resolved config's ``model`` section."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    return create_model(model_cfg["name"], **kwargs)
