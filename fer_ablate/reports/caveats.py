"""What a reader must know before trusting a report's numbers: degenerate runs and runs on synthetic faces.

Read from what every training run records (runs older than these tags are simply not flagged):
- tag ``degenerate`` = ``"true"``/``"false"``: the model's validation predictions fall in one class, or its
  accuracy is within noise of the majority class; tag ``degenerate_reason``: the sentence saying which;
- tag ``data_source`` = ``"synthetic"``: trained on the built-in synthetic faces, not on FER data;
- metric ``epochs_run``: how many epochs the run trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MACHINERY_CHECK = "a check of the machinery, not a result about FER"


@dataclass(frozen=True)
class RunNote:
    """What one training run says about itself: ``name`` as the report shows it (``kernel5 · seed 1``),
    ``degenerate_reason`` (None when not degenerate or not recorded), ``synthetic``, ``epochs`` (None when
    not recorded)."""

    name: str
    degenerate_reason: str | None
    synthetic: bool
    epochs: int | None

    @classmethod
    def from_run(cls, name: str, run: Any) -> RunNote:
        """Read the tags and the ``epochs_run`` metric of an MLflow run (``run.data.tags``/``.metrics``)."""
        tags, metrics = run.data.tags, run.data.metrics
        reason = None
        if tags.get("degenerate", "").strip().lower() == "true":
            reason = tags.get("degenerate_reason", "").strip() or "degenerate (no reason recorded)"
        epochs = metrics.get("epochs_run")
        return cls(name, reason, tags.get("data_source") == "synthetic", None if epochs is None else int(epochs))


def _epochs(notes: list[RunNote]) -> str:
    counts = sorted({n.epochs for n in notes if n.epochs is not None})
    if not counts:
        return ""
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f" for {span} epoch{'' if counts == [1] else 's'}"


def caveats(notes: list[RunNote]) -> list[str]:
    """Sentences to print above a report's tables, one per affected run, built from ``notes`` (the runs the
    report's numbers come from): a count of degenerate runs then each with its reason, and which runs trained
    on synthetic faces (and for how many epochs). Empty when no run is flagged (or none has the tags)."""
    lines = []
    total = len(notes)
    degenerate = [n for n in notes if n.degenerate_reason]
    if degenerate:
        verb = "is" if len(degenerate) == 1 else "are"
        lines.append(f"Warning: {len(degenerate)} of {total} runs {verb} degenerate (one class predicted, or accuracy "
                     "within noise of the majority class): their scores measure no learned classifier, and "
                     "differences involving them are not effects of the variant.")
        lines += [f"Warning: {n.name}: {n.degenerate_reason}" for n in degenerate]
    synthetic = [n for n in notes if n.synthetic]
    if synthetic and len(synthetic) == total:
        lines.append(f"{'This run' if total == 1 else f'These {total} runs'} trained on the built-in synthetic "
                     f"faces{_epochs(synthetic)}: {MACHINERY_CHECK}.")
    elif synthetic:
        lines.append(f"{len(synthetic)} of {total} runs trained on the built-in synthetic faces"
                     f"{_epochs(synthetic)} ({', '.join(n.name for n in synthetic)}): {MACHINERY_CHECK}.")
    return lines
