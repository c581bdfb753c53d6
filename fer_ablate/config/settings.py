"""Configuration: defaults, variant deltas, strict overrides and a stable config hash.

One override order, strictly checked: defaults < variant YAML < command-line ``--set key=value``.
A key that is not in the defaults, or a value of the wrong type, is refused with the key's name.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).parent
DEFAULTS_FILE = CONF_DIR / "defaults.yaml"
VARIANTS_FILE = CONF_DIR / "variants.yaml"


class ConfigError(ValueError):
    """A configuration file, variant or override is invalid; the message names the key."""


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning syntax errors into a ConfigError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc


def read_mapping(path: Path, allowed: set[str]) -> dict[str, Any]:
    """Read a YAML file that must be a mapping with keys from ``allowed``; errors name the file and keys."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {sorted(allowed)}")
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return raw


def find_named_file(folder: Path, name_or_path: str, kind: str) -> Path:
    """A YAML path as given, or ``<folder>/<name>.yaml``; an unknown name lists the known ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = folder / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    raise ConfigError(f"unknown {kind} '{name_or_path}'; known: {', '.join(known)}")


def load_defaults() -> dict[str, Any]:
    """Return a fresh copy of the default configuration (the paper's final model)."""
    return copy.deepcopy(read_yaml(DEFAULTS_FILE))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested mapping into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _coerce(key: str, value: Any, default: Any, origin: str) -> Any:
    """Check ``value`` against the default's type; ints are accepted where floats are expected."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = is_number and isinstance(value, int)
    elif isinstance(default, float):
        ok, value = is_number, float(value) if is_number else value
    elif isinstance(default, str):
        # train.devices is auto | all | a count: the one string key that also takes an int
        ok = isinstance(value, str) or (key == "train.devices" and is_number and isinstance(value, int))
    else:  # lists of numbers (dense units, dropouts)
        ok = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
    if ok:
        return value
    where = f"{origin}: " if origin else ""
    raise ConfigError(
        f"{where}key '{key}' expects {type(default).__name__} (default {default!r}), got {value!r}"
    )


def apply_overrides(cfg: dict[str, Any], overrides: dict[str, Any], origin: str = "") -> dict[str, Any]:
    """Return ``cfg`` with dotted or nested ``overrides`` applied, refusing unknown keys and wrong types."""
    cfg = copy.deepcopy(cfg)
    known = flatten(cfg)
    for key, value in flatten(overrides or {}).items():
        if key not in known:
            section = key.split(".")[0]
            near = sorted(k for k in known if k.startswith(section + ".")) or sorted(known)
            where = f"{origin}: " if origin else ""
            raise ConfigError(f"{where}unknown key '{key}'; known keys: {', '.join(near)}")
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = _coerce(key, value, known[key], origin)
    return cfg


def parse_set_args(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values in YAML syntax: 5, 0.1, true, [512,256]) into a dict.

    One string may hold several space-separated pairs ("train.epochs=5 model.kernel_size=5"), which is
    how the MLproject ``overrides`` parameter carries them.
    """
    result: dict[str, Any] = {}
    for pair in pairs or []:
        for item in shlex.split(pair):
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not key=value")
            key, raw = item.split("=", 1)
            try:
                result[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError as exc:
                raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from exc
    return result


def load_variants(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Read a variants YAML file: ``name -> {description, overrides}``, each checked against the defaults.

    ``path`` defaults to the built-in ``conf/variants.yaml``.
    """
    path = path or VARIANTS_FILE
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of variant names to {{description, overrides}}")
    defaults = load_defaults()
    variants = {}
    for name, body in raw.items():
        if not isinstance(body, dict) or set(body) - {"description", "overrides"}:
            raise ConfigError(
                f"{path}: variant '{name}' must be a mapping with keys description and overrides, got {body!r}"
            )
        overrides = body.get("overrides") or {}
        apply_overrides(defaults, overrides, origin=f"{path}: variant '{name}'")  # validates
        variants[name] = {"description": body.get("description", ""), "overrides": flatten(overrides)}
    return variants


def resolve_config(
    variant: str = "paper",
    overrides: dict[str, Any] | None = None,
    variants_file: str | Path | None = None,
) -> dict[str, Any]:
    """Build the run configuration: defaults, then the named variant's delta, then ``overrides``.

    The variant name is recorded under ``variant``; unknown variants list the known ones.
    """
    variants = load_variants(variants_file)
    if variant not in variants:
        raise ConfigError(f"unknown variant '{variant}'; known variants: {', '.join(sorted(variants))}")
    cfg = apply_overrides(load_defaults(), variants[variant]["overrides"], origin=f"variant '{variant}'")
    cfg = apply_overrides(cfg, overrides or {}, origin="override")
    validate(cfg)
    return {"variant": variant, **cfg}


def validate(cfg: dict[str, Any]) -> None:
    """Check value ranges that types alone cannot (positive sizes, probabilities, matching lists)."""
    m, t, a = cfg["model"], cfg["train"], cfg["augment"]
    checks = [
        (m["conv_blocks"] >= 1, "model.conv_blocks must be >= 1"),
        (m["kernel_size"] >= 1, "model.kernel_size must be >= 1"),
        (len(m["dense_units"]) == len(m["dense_dropout"]), "model.dense_units and model.dense_dropout "
         "must have the same length"),
        (0 <= m["conv_dropout"] < 1, "model.conv_dropout must be in [0, 1)"),
        (all(0 <= d < 1 for d in m["dense_dropout"]), "model.dense_dropout values must be in [0, 1)"),
        (t["epochs"] >= 1, "train.epochs must be >= 1"),
        (t["batch_size"] >= 1, "train.batch_size must be >= 1"),
        (t["learning_rate"] > 0, "train.learning_rate must be > 0"),
        (t["optimizer"] in ("adam", "sgd", "adamw"), "train.optimizer must be one of adam, sgd, adamw"),
        (t["lr_schedule"] in ("constant", "cosine", "cosine_time"),
         "train.lr_schedule must be constant, cosine or cosine_time"),
        (not (t["lr_schedule"] != "constant" and t["reduce_lr_on_plateau"]),
         f"train.lr_schedule {t['lr_schedule']} and train.reduce_lr_on_plateau both set the learning rate: "
         "choose one"),
        (t["lr_schedule"] != "cosine_time" or t["time_budget_minutes"] > 0,
         "train.lr_schedule cosine_time follows the time budget: set train.time_budget_minutes > 0"),
        (t["time_budget_minutes"] >= 0, "train.time_budget_minutes must be >= 0"),
        (t["precision"] in ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
         "train.precision must be auto, float32, mixed_bfloat16 or mixed_float16"),
        (str(t.get("devices", "auto")).lower() in ("auto", "all") or str(t.get("devices")).isdigit()
         and int(t["devices"]) >= 1, "train.devices must be auto, all or a count >= 1"),
        (t["jit_compile"] in ("auto", "xla", "no_xla"), "train.jit_compile must be auto, xla or no_xla"),
        (a["method"] in ("single_warp", "keras_layers"), "augment.method must be single_warp or keras_layers"),
        (all(0 <= a[k] < 1 for k in ("rotation", "zoom", "shift")),
         "augment.rotation, zoom and shift must be in [0, 1)"),
        (0 < cfg["data"]["val_fraction"] < 1, "data.val_fraction must be in (0, 1)"),
        (m["input_size"] // 2 ** m["conv_blocks"] >= 1, "model.conv_blocks too deep for model.input_size"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def config_hash(cfg: dict[str, Any]) -> str:
    """A short stable hash of everything that changes the result (verbosity excluded)."""
    relevant = copy.deepcopy(cfg)
    relevant.get("train", {}).pop("verbose", None)
    relevant.get("train", {}).pop("devices", None)  # data parallelism splits batches, not the experiment
    relevant.pop("variant", None)  # two names for the same config are the same experiment
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def to_yaml(cfg: dict[str, Any]) -> str:
    """Serialise a resolved configuration as YAML (the artifact logged with each run)."""
    return yaml.safe_dump(cfg, sort_keys=False)
