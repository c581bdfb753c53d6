"""Search-space files (``search_spaces/*.yaml``): parameters, conditions, metric, sampler, pruner.

Each parameter is a config key with a type (float, int, categorical), a range (low/high, optional
log scale and step) or choices, and an optional ``condition`` ({other key: value}) under which it exists.
Validation errors name the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_ablate.config.names import safe_name
from fer_ablate.config.settings import (
    ConfigError,
    apply_overrides,
    find_named_file,
    flatten,
    load_defaults,
    load_variants,
    read_mapping,
)
from fer_ablate.paths import project_root

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("median", "hyperband", "successive_halving", "threshold", "wilcoxon", "none")
TOP_KEYS = {"name", "description", "base", "metric", "direction", "sampler", "pruner", "epochs", "fixed", "params",
            "folds", "prune_on"}
EPOCH_SIGNALS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
FOLD_KEYS = {"k", "seed", "include_validation"}
PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "condition"}


@dataclass
class Param:
    """One tunable setting."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)
    condition: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchSpace:
    """A parsed and validated search-space file."""

    name: str
    description: str
    base: str
    metric: str
    direction: str
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    epochs: int
    fixed: dict[str, Any]
    params: list[Param]
    path: Path
    folds: dict[str, Any] | None = None  # {k, seed, include_validation}: objective = mean over k folds
    prune_on: str = "val_accuracy"  # the per-epoch signal the pruner sees (val_loss breaks accuracy's ties)


def find_space(name_or_path: str) -> Path:
    """A space name (``paper_cnn``) or a path to a YAML file."""
    return find_named_file(project_root() / "search_spaces", name_or_path, "search space")


def _param(path: Path, key: str, spec: Any, known: dict[str, Any]) -> Param:
    where = f"{path}: params.{key}"
    if key not in known:
        raise ConfigError(f"{where}: unknown setting; known keys start with model., train., augment., data.")
    if not isinstance(spec, dict) or set(spec) - PARAM_KEYS:
        raise ConfigError(f"{where}: expected a mapping with keys from {sorted(PARAM_KEYS)}, got {spec!r}")
    kind = spec.get("type")
    if kind == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{where}: categorical needs a non-empty 'choices' list")
        for choice in spec["choices"]:
            apply_overrides(load_defaults(), {key: choice}, origin=where)
    elif kind in ("float", "int"):
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: {kind} needs numbers low < high, got low={low!r}, high={high!r}")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"{where}: log scale needs low > 0")
        if spec.get("log") and spec.get("step"):
            raise ConfigError(f"{where}: log and step cannot be combined")
        apply_overrides(load_defaults(), {key: int(low) if kind == "int" else float(low)}, origin=where)
    else:
        raise ConfigError(f"{where}: type must be float, int or categorical, got {kind!r}")
    condition = spec.get("condition") or {}
    if not isinstance(condition, dict) or any(k not in known for k in condition):
        raise ConfigError(f"{where}: condition must map known keys to values, got {condition!r}")
    return Param(key, kind, spec.get("low"), spec.get("high"), bool(spec.get("log")), spec.get("step"),
                 list(spec.get("choices") or []), dict(condition))


def load_space(name_or_path: str) -> SearchSpace:
    """Read and validate a search-space file."""
    path = find_space(name_or_path)
    raw = read_mapping(path, TOP_KEYS)
    base = raw.get("base", "paper")
    if base not in load_variants():
        raise ConfigError(f"{path}: base: unknown variant '{base}'")
    sampler = raw.get("sampler") or {"type": "tpe"}
    pruner = raw.get("pruner") or {"type": "median"}
    if sampler.get("type") not in SAMPLERS:
        raise ConfigError(f"{path}: sampler.type must be one of {', '.join(SAMPLERS)}, got {sampler.get('type')!r}")
    if pruner.get("type") not in PRUNERS:
        raise ConfigError(f"{path}: pruner.type must be one of {', '.join(PRUNERS)}, got {pruner.get('type')!r}")
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: direction must be maximize or minimize")
    epochs = raw.get("epochs", 10)
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"{path}: epochs must be a positive integer, got {epochs!r}")
    fixed = flatten(raw.get("fixed") or {})
    apply_overrides(load_defaults(), fixed, origin=f"{path}: fixed")
    known = flatten(load_defaults())
    params = [_param(path, key, spec, known) for key, spec in (raw.get("params") or {}).items()]
    if not params:
        raise ConfigError(f"{path}: params: at least one parameter is needed")
    keys = {p.key for p in params}
    for p in params:
        for cond_key in p.condition:
            if cond_key not in keys and cond_key not in fixed:
                raise ConfigError(f"{path}: params.{p.key}: condition on '{cond_key}', which is neither a "
                                  "parameter nor fixed")
    name = safe_name(raw.get("name", path.stem), "search space", path)  # the default study name: see names
    return SearchSpace(name, raw.get("description", ""), base, raw.get("metric", "val_accuracy"),
                       direction, sampler, pruner, epochs, fixed, params, path, _folds(path, raw.get("folds"), pruner),
                       _prune_on(path, raw.get("prune_on", raw.get("metric", "val_accuracy"))))


def _prune_on(path: Path, signal: Any) -> str:
    if signal not in EPOCH_SIGNALS:
        raise ConfigError(f"{path}: prune_on must be one of {', '.join(EPOCH_SIGNALS)}, got {signal!r}")
    return signal


def _folds(path: Path, spec: Any, pruner: dict[str, Any]) -> dict[str, Any] | None:
    """The optional ``folds`` section; the Wilcoxon pruner needs it (it compares trials fold by fold)."""
    if spec is None:
        if pruner.get("type") == "wilcoxon":
            raise ConfigError(f"{path}: pruner wilcoxon compares trials fold by fold: add folds: {{k: 5}}")
        return None
    if not isinstance(spec, dict) or set(spec) - FOLD_KEYS:
        raise ConfigError(f"{path}: folds: expected a mapping with keys from {sorted(FOLD_KEYS)}, got {spec!r}")
    k = spec.get("k", 5)
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ConfigError(f"{path}: folds.k must be an integer of at least 2, got {k!r}")
    if pruner.get("type") not in ("wilcoxon", "none"):
        raise ConfigError(f"{path}: with folds the objective reports one value per fold: use pruner wilcoxon or "
                          f"none, not {pruner.get('type')!r}")
    return {"k": k, "seed": int(spec.get("seed", 0)), "include_validation": bool(spec.get("include_validation"))}


def active(param: Param, chosen: dict[str, Any]) -> bool:
    """Whether ``param`` exists given the values chosen so far (its condition holds)."""
    return all(chosen.get(k) == v for k, v in param.condition.items())
