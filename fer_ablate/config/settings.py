"""Configuration: a typed schema, defaults, variant deltas, strict overrides and a stable config hash.

One override order, strictly checked: defaults < variant YAML < command-line ``--set key=value``.
The schema (pydantic models below, one per section of ``defaults.yaml``) types every setting and holds
each list of choices once (``OPTIMIZERS``, ``LR_SCHEDULES``, ...). A key that is not in the schema, a value
of the wrong type or out of range is refused with the key's name. Values stay plain nested dicts for the
rest of the package: ``resolve_config`` returns ``Settings.model_dump()``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
import shlex
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fer_ablate.config.errors import ConfigError  # defined apart: config.names needs it without Keras
from fer_ablate.config.names import safe_name

CONF_DIR = Path(__file__).parent
DEFAULTS_FILE = CONF_DIR / "defaults.yaml"
VARIANTS_FILE = CONF_DIR / "variants.yaml"

# Every list of choices lives here once; code that branches on a setting imports the list from here.
Optimizer = Literal["adam", "sgd", "adamw"]
LrSchedule = Literal["constant", "cosine", "cosine_time"]
Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
JitCompile = Literal["auto", "xla", "no_xla"]
AugmentMethod = Literal["single_warp", "keras_layers"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)
JIT_COMPILE: tuple[str, ...] = get_args(JitCompile)
AUGMENT_METHODS: tuple[str, ...] = get_args(AugmentMethod)

Fraction = Annotated[float, Field(ge=0, lt=1)]  # dropout rates, label smoothing: 1 would drop everything


class _Section(BaseModel):
    # strict: no "5" -> 5 or 1 -> True coercion (a YAML typo must fail, not train something else); ints are
    # still accepted where floats are expected (and stored as floats, so the config hash does not change).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=())


class ModelSettings(_Section):
    """``model``: the registry name and the builder's arguments (``fer_ablate.models``)."""

    name: str
    conv_blocks: int = Field(ge=1)
    convs_per_block: int = Field(ge=1)
    kernel_size: int = Field(ge=1)
    base_filters: int = Field(ge=1)
    filter_growth: float = Field(gt=0)
    conv_dropout: Fraction
    dense_units: list[Annotated[int, Field(ge=1)]]
    dense_dropout: list[Fraction]
    l2_first_conv: float = Field(ge=0)
    batch_norm: bool
    bn_first_conv: bool
    bn_momentum: Fraction
    pool_before_bn: bool
    input_size: int = Field(ge=1)
    num_classes: int = Field(ge=2)
    test_time_flip: bool


class TrainSettings(_Section):
    """``train``: optimisation, schedule, stopping, precision and devices."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    optimizer: Optimizer
    lr_schedule: LrSchedule
    label_smoothing: Fraction
    class_weights: bool
    early_stopping_patience: int = Field(ge=0)
    reduce_lr_on_plateau: bool
    plateau_patience: int = Field(ge=0)
    plateau_factor: float = Field(gt=0, lt=1)
    min_lr: float = Field(ge=0)
    restore_best: bool
    seed: int
    verbose: int = Field(ge=0, le=2)
    time_budget_minutes: float = Field(ge=0)
    precision: Precision
    devices: Union[Literal["auto", "all"], Annotated[int, Field(ge=1)]]  # noqa: UP007 (pydantic reads it)
    jit_compile: JitCompile


class AugmentSettings(_Section):
    """``augment``: training-time augmentation."""

    enabled: bool
    method: AugmentMethod
    horizontal_flip: bool
    rotation: float
    zoom: float
    shift: float

    @field_validator("rotation", "zoom", "shift")
    @classmethod
    def _fraction(cls, value: float, info: ValidationInfo) -> float:
        if not 0 <= value < 1:
            raise ValueError(f"augment.rotation, zoom and shift must be in [0, 1), got augment.{info.field_name} = "
                             f"{value!r}")
        return value


class DataSettings(_Section):
    """``data``: where the faces come from and how they are split."""

    source: str = Field(min_length=1)  # auto | synthetic | a path (data.loading.resolve_source reads it)
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(ge=0, lt=1)
    skip_bad_rows: bool
    train_limit: int = Field(ge=0)
    eval_limit: int = Field(ge=0)
    synthetic_samples: int = Field(ge=1)
    split_seed: int


class Settings(_Section):
    """A whole configuration. Validated with ``context={"fields_only": True}`` it checks each value alone
    (what a variant or an override may set); without, the settings must also agree with each other."""

    model: ModelSettings
    train: TrainSettings
    augment: AugmentSettings
    data: DataSettings

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Settings:
        if (info.context or {}).get("fields_only"):
            return self
        m, t = self.model, self.train
        checks = [
            (len(m.dense_units) == len(m.dense_dropout),
             "model.dense_units and model.dense_dropout must have the same length"),
            (not (t.lr_schedule != "constant" and t.reduce_lr_on_plateau),
             f"train.lr_schedule {t.lr_schedule} and train.reduce_lr_on_plateau both set the learning rate: "
             "choose one"),
            (t.lr_schedule != "cosine_time" or t.time_budget_minutes > 0,
             "train.lr_schedule cosine_time follows the time budget: set train.time_budget_minutes > 0"),
            (m.input_size // 2**m.conv_blocks >= 1, "model.conv_blocks too deep for model.input_size"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


SECTIONS: dict[str, type[_Section]] = {name: f.annotation for name, f in Settings.model_fields.items()}


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
    """Return a fresh copy of the default configuration (the paper's final model), checked against the schema.

    Raises ConfigError naming ``defaults.yaml`` and the key when the file and the schema disagree.
    """
    raw = read_yaml(DEFAULTS_FILE)
    if not isinstance(raw, dict):
        raise ConfigError(f"{DEFAULTS_FILE}: expected a mapping of sections {', '.join(SECTIONS)}")
    return _checked(copy.deepcopy(raw), str(DEFAULTS_FILE), fields_only=True, defaults=raw)


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


def _describe(annotation: Any) -> str:
    """A person's name for a schema type: ``int``, ``list of float``, ``one of adam, sgd, adamw``."""
    origin = get_origin(annotation)
    if origin is Annotated:  # the type and its bounds: "int >= 1"
        base, *extras = get_args(annotation)
        bounds = [f"{op} {getattr(m, attr)}" for extra in extras for m in getattr(extra, "metadata", [extra])
                  for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
        return " ".join([_describe(base), *bounds])
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(annotation)))
    if origin is list:
        return f"list of {_describe(get_args(annotation)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<="), "too_short": ("min_length", "of length >=")}


def _message(exc: ValidationError, cfg: dict[str, Any], defaults: dict[str, Any]) -> str:
    """One line for the first schema error: the dotted key, what it expects and the value it got."""
    err = exc.errors(include_url=False)[0]
    names = [part for part in err["loc"] if isinstance(part, str)][:2]  # section, field (then union tags)
    key = ".".join(names)
    if err["type"] == "value_error":  # our own validators write whole sentences that name their keys
        return str(err["ctx"]["error"])
    if err["type"] == "string_too_short":
        return f"key '{key}' must not be empty"
    if err["type"] == "missing":
        return f"key '{key}' is missing (every setting needs a value in {DEFAULTS_FILE.name})"
    if err["type"] == "extra_forbidden":
        section = SECTIONS.get(names[0]) if len(names) > 1 else None
        known = [f"{names[0]}.{k}" for k in section.model_fields] if section else list(SECTIONS)
        return f"unknown key '{key}'; known keys: {', '.join(known)}"
    value = flatten(cfg).get(key, err.get("input"))
    if len(names) < 2:  # a whole section of the wrong shape
        return f"key '{key}' expects a mapping of settings, got {value!r}"
    if err["type"] in _BOUNDS and len(err["loc"]) == 3 and isinstance(err["loc"][2], int):
        name, op = _BOUNDS[err["type"]]
        return f"key '{key}' values must be {op} {err['ctx'][name]}, got {value!r}"
    if err["type"] in _BOUNDS and not (len(err["loc"]) > 2 and isinstance(err["loc"][-1], str)):
        name, op = _BOUNDS[err["type"]]
        return f"key '{key}' must be {op} {err['ctx'][name]}, got {value!r}"
    expected = _describe(SECTIONS[names[0]].model_fields[names[1]].annotation) if names[0] in SECTIONS else "?"
    default = flatten(defaults).get(key)
    return f"key '{key}' expects {expected} (default {default!r}), got {value!r}"


def _checked(cfg: dict[str, Any], origin: str, fields_only: bool, defaults: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """``cfg`` validated by the schema and dumped back to plain dicts (ints in float fields become floats).

    ``fields_only``: each value alone (ranges, types, choices); otherwise also the checks across settings.
    Raises ConfigError ``"<origin>: <one line naming the key>"``.
    """
    try:
        settings = Settings.model_validate(cfg, context={"fields_only": fields_only})
    except ValidationError as exc:
        where = f"{origin}: " if origin else ""
        message = _message(exc, cfg, defaults if defaults is not None else load_defaults())
        raise ConfigError(where + message) from None
    return settings.model_dump()


def apply_overrides(cfg: dict[str, Any], overrides: dict[str, Any], origin: str = "") -> dict[str, Any]:
    """Return ``cfg`` with dotted or nested ``overrides`` applied, refusing unknown keys, wrong types and
    values out of range (each value alone: checks across settings wait for ``resolve_config``).

    ``cfg`` is a whole configuration (``load_defaults()`` or a resolved one; a ``variant`` entry is kept).
    Raises ConfigError ``"<origin>: unknown key 'model.kernal'; known keys: ..."`` or ``"... key 'train.epochs'
    expects int (default 100), got 'ten'"``.
    """
    cfg = copy.deepcopy(cfg)
    variant = cfg.pop("variant", None)
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
        node[leaf] = value
    cfg = _checked(cfg, origin, fields_only=True)
    return cfg if variant is None else {"variant": variant, **cfg}


# A pair starts at a token "section.key=..." (at least one dot: every setting has one); a token that does not
# (e.g. "8," of "model.dense_units=[16, 8, 8]") continues the value before it.
_PAIR_START = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def parse_set_args(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values in YAML syntax: 5, 0.1, true, [512, 256]) into a dict.

    One string may hold several space-separated pairs ("train.epochs=5 model.kernel_size=5"), which is
    how the MLproject ``overrides`` parameter carries them. A value may contain spaces: it runs until the
    next token that starts a dotted ``section.key=``, so ``model.dense_units=[16, 8, 8] train.epochs=2`` is
    two pairs; quote a value that itself contains such a token. Raises ConfigError naming the bad pair.
    """
    result: dict[str, Any] = {}
    for pair in pairs or []:
        try:
            tokens = shlex.split(pair)
        except ValueError as exc:  # an unclosed quote
            raise ConfigError(f"override '{pair}': {exc}") from None
        items: list[str] = []
        for token in tokens:
            if items and not _PAIR_START.match(token) and not ("=" in token and "." not in token.split("=")[0]):
                items[-1] += " " + token
            else:
                items.append(token)
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not key=value")
            key, raw = item.split("=", 1)
            try:
                result[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError as exc:
                reason = str(exc).splitlines()[0]
                raise ConfigError(f"override '{item}': value is not valid YAML ({reason})") from None
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
    for key, body in raw.items():
        name = safe_name(key, "variant", path)  # a run label, a file name in reports, an MLflow search value
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

    Returns a plain nested dict (``{"variant": name, "model": {...}, "train": {...}, ...}``) that passed the
    whole schema, the checks across settings and the model registry (``validate``). Unknown variants list
    the known ones; every error is a ConfigError naming the key.
    """
    variants = load_variants(variants_file)
    if variant not in variants:
        raise ConfigError(f"unknown variant '{variant}'; known variants: {', '.join(sorted(variants))}")
    cfg = apply_overrides(load_defaults(), variants[variant]["overrides"], origin=f"variant '{variant}'")
    cfg = apply_overrides(cfg, overrides or {}, origin="override")
    return {"variant": variant, **validate(cfg)}


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check a whole configuration: every value, the settings against each other, and the model section
    against the model registry (the name is registered; the builder takes every argument given).

    Returns the validated configuration as plain dicts (``variant`` dropped). Raises ConfigError.
    Importing the builders loads Keras, so this is the one step of resolving that does.
    """
    cfg = {k: v for k, v in cfg.items() if k != "variant"}
    checked = _checked(cfg, "", fields_only=False)
    check_model_section(checked["model"])
    return checked


def check_model_section(model_cfg: dict[str, Any]) -> None:
    """The model name is registered and its builder accepts the section's arguments; else ConfigError."""
    from fer_ablate import models  # Keras: only a config that is about to build a model needs the builders

    name = model_cfg["name"]
    if name not in models.list_models():
        raise ConfigError(f"model.name: unknown model '{name}'; known models: {', '.join(models.list_models())}")
    arguments = {k: v for k, v in model_cfg.items() if k not in models.NOT_BUILDER_ARGUMENTS}
    signature = inspect.signature(models.get_builder(name))
    try:
        signature.bind(**arguments)
    except TypeError as exc:
        accepted = ", ".join(f"model.{p}" for p in signature.parameters)
        raise ConfigError(f"model '{name}' cannot be built from this config ({exc}); it takes {accepted}") from None


# Keys added after runs were recorded, with the value that reproduces the behaviour from before them: hashed
# only when set to something else, so every earlier configuration keeps its hash (a grid still resumes).
LATER_KEYS = {("model", "pool_before_bn"): False, ("data", "test_fraction"): 0.0}


def config_hash(cfg: dict[str, Any]) -> str:
    """A short stable hash of everything that changes the result (verbosity excluded).

    ``data.source`` counts by content, not by spelling (``data.loading.source_identity``): the same file
    or image folder at another path, through a symlink or found by ``auto`` gives the same hash, so grid,
    k-fold and study runs resume from another checkout or mount. Hashing a new file reads it once (0.3 s
    for FER2013's 265 MB CSV); later hashes reuse the digest the data cache remembers.
    """
    relevant = copy.deepcopy(cfg)
    if "source" in relevant.get("data", {}):
        from fer_ablate.data.loading import source_identity  # numpy and the loaders: only when hashing data

        relevant["data"]["source"] = source_identity(relevant["data"]["source"])
    for (section, key), before in LATER_KEYS.items():
        if relevant.get(section, {}).get(key, before) == before:
            relevant.get(section, {}).pop(key, None)
    relevant.get("train", {}).pop("verbose", None)
    relevant.get("train", {}).pop("devices", None)  # data parallelism splits batches, not the experiment
    relevant.pop("variant", None)  # two names for the same config are the same experiment
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def to_yaml(cfg: dict[str, Any]) -> str:
    """Serialise a resolved configuration as YAML (the artifact logged with each run)."""
    return yaml.safe_dump(cfg, sort_keys=False)
