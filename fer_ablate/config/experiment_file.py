"""Experiment files (``experiments/*.yaml``): what varies, what is fixed, how many seeds; expanded to runs.

Words: an *experiment file* (``ExperimentFile``) is one of these YAML files, the plan of a grid; an
*MLflow experiment* is a folder of runs in the tracking store (``tracking.store`` says which one a command
writes to). A grid's runs are tagged with the experiment file's name, not put in an MLflow experiment of
that name.

A factor's levels are variant names from ``config/variants.yaml`` (or inline ``{name: {key: value}}``);
its first level is the base level. Designs:
- ``one_at_a_time``: the base run plus, for each factor, each non-base level alone on top of the base;
- ``factorial``: every combination of levels;
- ``sequence``: an explicit list of steps, each with its own overrides (e.g. the paper's history).
Every run is repeated for each seed. Roles (Google's tuning playbook): factors are *scientific*,
``nuisance`` settings are held (or tuned) so comparisons are fair, ``fixed`` settings are constant.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_ablate.config.names import safe_name
from fer_ablate.config.settings import (
    ConfigError,
    config_hash,
    find_named_file,
    flatten,
    load_variants,
    read_mapping,
    resolve_config,
)
from fer_ablate.paths import project_root

DESIGNS = ("one_at_a_time", "factorial", "sequence")
TOP_KEYS = {"name", "description", "base", "design", "seeds", "data", "fixed", "nuisance", "factors", "steps"}


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment file: a label, its factor levels, its overrides, its seed and resolved config."""

    label: str
    levels: dict[str, str]
    overrides: dict[str, Any]
    seed: int
    config: dict[str, Any] = field(hash=False, compare=False)

    @property
    def config_hash(self) -> str:
        """Hash of the resolved configuration (seed included)."""
        return config_hash(self.config)

    @property
    def run_name(self) -> str:
        """Readable name for the MLflow UI, e.g. ``kernel5 · seed 2``."""
        return f"{self.label} · seed {self.seed}"


@dataclass
class ExperimentFile:
    """A parsed and validated experiment file (``experiments/<name>.yaml``)."""

    name: str
    description: str
    base: str
    design: str
    seeds: list[int]
    data: str | None
    fixed: dict[str, Any]
    nuisance: dict[str, Any]
    factors: dict[str, dict[str, dict[str, Any]]]  # factor -> level name -> overrides (first = base level)
    steps: list[dict[str, Any]]
    path: Path

    def roles(self) -> dict[str, str]:
        """Each varied or held setting and its role: scientific, nuisance or fixed."""
        roles = {k: "fixed" for k in self.fixed} | {k: "nuisance" for k in self.nuisance}
        for levels in self.factors.values():
            for overrides in levels.values():
                roles.update({k: "scientific" for k in overrides})
        return roles


def experiments_dir() -> Path:
    """The project's ``experiments/`` folder."""
    return project_root() / "experiments"


def find_experiment_file(name_or_path: str) -> Path:
    """The path of an experiment file given its name (``paper_ablation``) or a path to a YAML file."""
    return find_named_file(experiments_dir(), name_or_path, "experiment file")


def _levels(path: Path, factor: str, spec: Any, variants: dict) -> dict[str, dict[str, Any]]:
    where = f"{path}: factors.{factor}"
    if isinstance(spec, list):
        unknown = [v for v in spec if v not in variants]
        if unknown:
            raise ConfigError(f"{where}: unknown variant(s) {unknown}; known variants: {', '.join(sorted(variants))}")
        levels = {v: variants[v]["overrides"] for v in spec}
    elif isinstance(spec, dict) and all(isinstance(v, dict) for v in spec.values()):
        levels = {safe_name(str(k), "level", where): flatten(v) for k, v in spec.items()}  # labels: see names
    else:
        raise ConfigError(f"{where}: expected a list of variant names or a mapping level -> overrides")
    if len(levels) < 2:
        raise ConfigError(f"{where}: a factor needs at least 2 levels, got {list(levels)}")
    return levels


def load_experiment_file(name_or_path: str) -> ExperimentFile:
    """Read and validate an experiment file; errors name the file, the key and what is allowed."""
    path = find_experiment_file(name_or_path)
    raw = read_mapping(path, TOP_KEYS)
    variants = load_variants()
    design = raw.get("design", "one_at_a_time")
    if design not in DESIGNS:
        raise ConfigError(f"{path}: design '{design}' is not one of {', '.join(DESIGNS)}")
    base = raw.get("base", "paper")
    if base not in variants:
        raise ConfigError(f"{path}: base: unknown variant '{base}'; known variants: {', '.join(sorted(variants))}")
    seeds = raw.get("seeds", [42])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(1, seeds + 1))  # "seeds: 3" means seeds 1, 2, 3
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{path}: seeds: expected a positive count or a list of integers, got {seeds!r}")
    factors = {f: _levels(path, f, spec, variants) for f, spec in (raw.get("factors") or {}).items()}
    steps = raw.get("steps") or []
    if design == "sequence" and not steps:
        raise ConfigError(f"{path}: design 'sequence' needs a 'steps' list")
    if design != "sequence" and not factors:
        raise ConfigError(f"{path}: design '{design}' needs 'factors'")
    for i, step in enumerate(steps):
        allowed = {"name", "variant", "overrides", "description"}
        if not isinstance(step, dict) or set(step) - allowed or "name" not in step:
            raise ConfigError(f"{path}: steps[{i}]: expected {{name, variant?, overrides?, description?}}, "
                              f"got {step!r}")
        step["name"] = safe_name(str(step["name"]), "step", f"{path}: steps[{i}]")  # a label, like a level
    # Checked once, here: the name tags the grid's runs (MLflow searches) and names its report folder.
    name = safe_name(raw.get("name", path.stem), "experiment file", path)
    experiment = ExperimentFile(
        name=name, description=raw.get("description", ""), base=base, design=design,
        seeds=seeds, data=raw.get("data"), fixed=flatten(raw.get("fixed") or {}),
        nuisance=flatten(raw.get("nuisance") or {}), factors=factors, steps=steps, path=path,
    )
    expand(experiment)  # resolves every run: unknown keys or wrong types fail here, naming the file
    return experiment


def _combinations(exp: ExperimentFile) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(label, levels, scientific overrides) before seeds."""
    names = list(exp.factors)
    base_levels = {f: next(iter(levels)) for f, levels in exp.factors.items()}
    if exp.design == "sequence":
        return [(s["name"], {"step": s["name"]}, {**(load_variants()[s["variant"]]["overrides"]
                                                    if s.get("variant") else {}), **flatten(s.get("overrides") or {})})
                for s in exp.steps]
    if exp.design == "factorial":
        combos = []
        for chosen in itertools.product(*(exp.factors[f].keys() for f in names)):
            levels = dict(zip(names, chosen, strict=True))
            overrides: dict[str, Any] = {}
            for f in names:
                overrides.update(exp.factors[f][levels[f]])
            label = "+".join(lvl for f, lvl in levels.items() if lvl != base_levels[f]) or exp.base
            combos.append((label, levels, overrides))
        return combos
    combos = [(exp.base, dict(base_levels), {k: v for f in names for k, v in exp.factors[f][base_levels[f]].items()})]
    for f in names:
        for level in list(exp.factors[f])[1:]:
            levels = {**base_levels, f: level}
            merged = {k: v for g in names for k, v in exp.factors[g][levels[g]].items()}
            combos.append((level, levels, merged))
    return combos


def expand(exp: ExperimentFile, extra: dict[str, Any] | None = None) -> list[RunSpec]:
    """Every run of the experiment file (each combination times each seed), with its resolved config.

    ``extra`` (command-line ``--set``) is applied last, to every run.
    """
    if exp.design == "sequence":
        for step in exp.steps:
            if step.get("variant") and step["variant"] not in load_variants():
                raise ConfigError(f"{exp.path}: step '{step['name']}': unknown variant '{step['variant']}'")
    runs = []
    for label, levels, scientific in _combinations(exp):
        for seed in exp.seeds:
            overrides = {**exp.fixed, **exp.nuisance, **scientific, **(extra or {}), "train.seed": seed}
            if exp.data:
                overrides.setdefault("data.source", exp.data)
            try:
                cfg = resolve_config(exp.base, overrides)
            except ConfigError as err:
                raise ConfigError(f"{exp.path}: run '{label}': {err}") from None
            cfg["variant"] = label
            runs.append(RunSpec(label=label, levels=levels, overrides=overrides, seed=seed, config=cfg))
    return runs
