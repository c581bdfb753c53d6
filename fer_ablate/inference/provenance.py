"""What a model's training run says about its answers: a toy model says so wherever it answers.

A run trained on the built-in synthetic faces is tagged ``data_source=synthetic`` (``data_synthetic=true``):
it learnt the generator's drawn mouths and brows, not emotions of real faces. A run whose model predicts one
class (or almost) is tagged ``degenerate=true`` with a ``degenerate_reason`` sentence.

``promote`` copies these tags into the photo model's ``model_config`` (``training_tags``), so a served model
says so without the tracking store; ``predict`` with a run's or a registered Keras model reads them from
its run. A plain ``.keras`` file carries none of this, and then nothing is said.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRAINING_TAGS = ("data_source", "data_synthetic", "degenerate", "degenerate_reason")  # what a model carries
CONFIG_KEY = "training_tags"  # the photo model's model_config key holding them
SYNTHETIC = "model trained on synthetic faces: its labels are not emotions of real faces"


def training_tags(run_tags: Mapping[str, Any]) -> dict[str, str]:
    """The run tags a model carries (``TRAINING_TAGS`` that the run has), as strings."""
    return {key: str(run_tags[key]) for key in TRAINING_TAGS if key in run_tags}


def notices(tags: Mapping[str, Any]) -> tuple[str, ...]:
    """One sentence per caveat in a run's (or a model's carried) tags; () for a model trained on real faces
    that is not degenerate, and for tags that say nothing (a plain ``.keras`` file)."""
    found = []
    if tags.get("data_source") == "synthetic" or str(tags.get("data_synthetic", "")).lower() == "true":
        found.append(SYNTHETIC)
    if str(tags.get("degenerate", "")).lower() == "true":
        found.append(f"degenerate model: {tags.get('degenerate_reason') or 'it predicts one class (or almost)'}")
    return tuple(found)
