"""Model registry and builders; importing this package registers every builder."""

from fer_ablate.models import paper_cnn  # noqa: F401  (registers paper_cnn)
from fer_ablate.models.layers import MirrorAverage
from fer_ablate.models.registry import create_model, get_builder, list_models, register_model

__all__ = ["MirrorAverage", "create_model", "get_builder", "list_models", "register_model", "build_from_config"]
NOT_BUILDER_ARGUMENTS = ("name", "test_time_flip")  # model settings applied around the builder's network


def build_from_config(model_cfg: dict):
    """Build the model described by a resolved config's ``model`` section."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in NOT_BUILDER_ARGUMENTS}
    return create_model(model_cfg["name"], **kwargs)
