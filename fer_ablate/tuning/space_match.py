"""Whether a stored Optuna study still matches its search-space file, checked when the study is loaded.

A study name reused after the file changed either breaks (Optuna refuses a categorical parameter whose
choices changed, so every trial fails) or misleads in silence (the stored direction wins over the file's,
trials of another metric, base, epoch count or fixed settings are ranked together). The study therefore
keeps the file it was last run with in its user attrs (``search_space``: the definition below,
``search_space_digest``: its SHA-256, ``metric``), and a reload compares:

- refused: direction, metric, base, epochs, fixed settings, folds (they change what a trial's value means),
  a parameter's kind, log scale or categorical choices (Optuna cannot mix them; list choices are stored by
  index, so new lists would relabel old trials);
- accepted with one warning: numeric ranges and steps, conditions, added or removed parameters (old trials
  stay valid measurements; only the region searched changes). The stored definition is then updated.

A study made before these attrs existed is compared through what it has: its direction and the
distributions recorded with its trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fer_ablate.config.search_space import Param, SearchSpace
from fer_ablate.config.settings import ConfigError
from fer_ablate.paths import project_root

log = logging.getLogger(__name__)
SPACE_ATTR, DIGEST_ATTR, METRIC_ATTR = "search_space", "search_space_digest", "metric"
OBJECTIVE_KEYS = ("base", "metric", "direction", "epochs", "fixed", "folds")


class StudyMismatch(ConfigError):
    """A stored study and its search-space file disagree in a way its trials cannot absorb."""


def _by_index(p: Param) -> bool:
    # Optuna stores categorical choices as str/int/float/bool/None: list choices go by index (as suggest does).
    return any(isinstance(c, list) for c in p.choices)


def space_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """The Optuna distribution each parameter of ``space`` is suggested from (as ``tuning.study.suggest``
    suggests it: list-valued categorical choices by index), keyed by the dotted config key."""
    out: dict[str, BaseDistribution] = {}
    for p in space.params:
        if p.type == "categorical":
            out[p.key] = CategoricalDistribution(list(range(len(p.choices))) if _by_index(p) else p.choices)
        elif p.type == "int":
            out[p.key] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.key] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def space_definition(space: SearchSpace) -> dict[str, Any]:
    """What the study keeps of its file (JSON-able): the objective's settings and every parameter."""
    objective = {"base": space.base, "metric": space.metric, "direction": space.direction, "epochs": space.epochs,
                 "fixed": dict(space.fixed), "folds": space.folds}
    params = {p.key: {"type": p.type, "low": p.low, "high": p.high, "log": p.log, "step": p.step,
                      "choices": list(p.choices), "condition": dict(p.condition)} for p in space.params}
    return {"objective": objective, "params": params}


def space_digest(definition: dict[str, Any]) -> str:
    """SHA-256 of a definition's canonical JSON (key order and YAML spelling do not matter)."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


def _objective_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key in OBJECTIVE_KEYS:
        if key == "fixed":
            for k in sorted(set(old.get(key) or {}) | set(new[key])):
                before, after = (old.get(key) or {}).get(k, "<unset>"), new[key].get(k, "<unset>")
                if before != after:
                    out.append(f"fixed {k} was {before!r}, now {after!r}")
        elif key in old and old[key] != new[key]:
            out.append(f"{key} was {old[key]!r}, now {new[key]!r}")
    return out


def _param_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(refused changes by key, accepted changes) between two definitions' ``params``."""
    refused: dict[str, str] = {}
    notes = [f"parameter '{k}' added" for k in new if k not in old]
    notes += [f"parameter '{k}' removed" for k in old if k not in new]
    for key in (k for k in new if k in old):
        a, b = old[key], new[key]
        if a["type"] != b["type"]:
            refused[key] = f"parameter '{key}' was {a['type']}, the file now says {b['type']}"
        elif a["type"] == "categorical" and a["choices"] != b["choices"]:
            refused[key] = f"parameter '{key}' choices were {a['choices']}, the file now says {b['choices']}"
        elif a["type"] != "categorical" and bool(a["log"]) != bool(b["log"]):
            refused[key] = f"parameter '{key}' log scale was {bool(a['log'])}, the file now says {bool(b['log'])}"
        else:
            for field, label in (("low", "low"), ("high", "high"), ("step", "step"), ("condition", "condition")):
                if a[field] != b[field]:
                    notes.append(f"parameter '{key}' {label} was {a[field]!r}, now {b[field]!r}")
    return refused, notes


def _stored_distributions(study: optuna.Study) -> dict[str, BaseDistribution]:
    """The last distribution recorded for each parameter over the study's trials."""
    out: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        out.update(trial.distributions)
    return out


def _distribution_change(key: str, old: BaseDistribution, new: BaseDistribution, p: Param) -> str | None:
    """A change Optuna cannot absorb (the same test as ``optuna.distributions.check_distribution_compatibility``)."""
    if type(old) is not type(new):
        kinds = {CategoricalDistribution: "categorical", IntDistribution: "int", FloatDistribution: "float"}
        return (f"parameter '{key}' was {kinds.get(type(old), type(old).__name__)} in the stored trials, "
                f"the file now says {p.type}")
    if isinstance(old, CategoricalDistribution) and old != new:
        if _by_index(p):
            return f"parameter '{key}' had {len(old.choices)} choices, the file now has {len(p.choices)}: {p.choices}"
        return f"parameter '{key}' choices were {list(old.choices)}, the file now says {p.choices}"
    if isinstance(old, (IntDistribution, FloatDistribution)) and old.log != new.log:  # type: ignore[union-attr]
        return f"parameter '{key}' log scale was {old.log}, the file now says {p.log}"
    return None


def _how_to_go_on(space: SearchSpace) -> str:
    advice = "start a new study with --study-name NEW, or keep this one by restoring"
    try:
        shown = space.path.resolve().relative_to(project_root().resolve())
    except ValueError:  # a file outside the project: git cannot be assumed
        return f"{advice} {space.path} as it was"
    return f"{advice} {shown} as it was (git log -p -- {shown}; git show COMMIT:{shown})"


def check_study_matches(study: optuna.Study, space: SearchSpace, storage_label: str) -> None:
    """Compare a created-or-loaded study with its search-space file before any trial; then record the file.

    ``storage_label`` names the storage in messages (no password). On success the study's user attrs
    ``search_space``, ``search_space_digest`` and ``metric`` hold the file's definition (set on a new study,
    added to one made before they existed, updated after accepted changes, which are logged as one warning).

    Raises:
        StudyMismatch: (a ConfigError: the CLI prints it in one line and exits 2) naming every refused
            change and how to start a new study or keep the old one.
    """
    definition = space_definition(space)
    digest = space_digest(definition)
    attrs = study.user_attrs
    directions = [d.name.lower() for d in study.directions]
    if attrs.get(DIGEST_ATTR) == digest and directions == [space.direction]:
        return
    problems: dict[str, str] = {}  # by what changed: a direction or a parameter is named once
    if directions != [space.direction]:
        problems["direction"] = f"direction was {' and '.join(directions)}, now {space.direction}"
    if METRIC_ATTR in attrs and attrs[METRIC_ATTR] != space.metric:
        problems["metric"] = f"metric was {attrs[METRIC_ATTR]!r}, now {space.metric!r}"
    notes: list[str] = []
    stored = attrs.get(SPACE_ATTR)
    if isinstance(stored, dict):
        for line in _objective_changes(stored.get("objective", {}), definition["objective"]):
            problems.setdefault(line.split(" was ")[0], line)
        refused, notes = _param_changes(stored.get("params", {}), definition["params"])
        problems.update(refused)
    # The trials themselves, always: a parameter removed then re-added keeps its old distribution in them.
    expected = space_distributions(space)
    params = {p.key: p for p in space.params}
    for key, old in _stored_distributions(study).items():
        change = key in expected and _distribution_change(key, old, expected[key], params[key])
        if change and key not in problems:
            problems[key] = change
    if problems:
        raise StudyMismatch(f"study {study.study_name!r} in {storage_label}: {'; '.join(problems.values())}; "
                            f"{_how_to_go_on(space)}")
    if notes:
        log.warning("study %r: %s changed in ways its trials can absorb: %s", study.study_name, space.path,
                    "; ".join(notes))
    study.set_user_attr(SPACE_ATTR, definition)
    study.set_user_attr(DIGEST_ATTR, digest)
    study.set_user_attr(METRIC_ATTR, space.metric)
