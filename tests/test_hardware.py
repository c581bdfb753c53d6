"""The machine record and ``train.precision: auto``: rules fed with flag sets as data, the tags of a real run,
``fer-ablate doctor`` on this machine, and the backend choice made before Keras is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import mlflow
import pytest
from conftest import tiny_overrides

from fer_ablate import choose_backend
from fer_ablate.config.settings import ConfigError, config_hash, resolve_config
from fer_ablate.training.hardware import (
    SPEED_FLAGS,
    Gpu,
    Machine,
    choose_device_count,
    choose_precision,
    current_machine,
    format_machine,
    machine_tags,
    onednn_flags,
    parse_cpuinfo,
)

# The three machine kinds these sessions get, as their /proc/cpuinfo flags say (trimmed to what matters).
XEON_AMX = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx_vnni"}
EPYC_ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
EPYC_ZEN3 = {"avx2", "fma", "sse4_2"}

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 avx avx2 fma
physical id\t: 0
core id\t\t: 0

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 avx avx2 fma
physical id\t: 0
core id\t\t: 0

processor\t: 2
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse4_2 avx avx2 fma
physical id\t: 0
core id\t\t: 1
"""


def test_cpuinfo_gives_model_flags_cores_and_threads():
    model, flags, cores, threads = parse_cpuinfo(CPUINFO)
    assert model == "AMD EPYC 7B13" and {"avx2", "fma"} <= flags and "avx512f" not in flags
    assert (cores, threads) == (2, 3)  # two hyperthreads share core 0
    assert parse_cpuinfo("") == ("unknown", frozenset(), 1, 1)


@pytest.mark.parametrize("flags,backend,expected", [
    (XEON_AMX, "tensorflow", "mixed_bfloat16"),     # AMX: 1.66x float32 measured (benchmarks/README.md)
    (EPYC_ZEN4, "tensorflow", "mixed_bfloat16"),    # AVX512_BF16: 1.25-1.5x measured
    (EPYC_ZEN3, "tensorflow", "float32"),           # AVX2: bf16 emulated, 4.3x slower
    ({"avx2", "avx_ne_convert"}, "tensorflow", "float32"),  # converts only, no bf16 dot product
    (XEON_AMX, "jax", "float32"),                   # XLA:CPU bf16 not measured faster
    (set(), "tensorflow", "float32"),
])
def test_auto_picks_bf16_only_on_native_bf16_cpus(flags, backend, expected):
    precision, reason = choose_precision("auto", backend, frozenset(flags))
    assert precision == expected and reason


@pytest.mark.parametrize("cap,expected", [
    ("AVX2", "float32"),                 # the way to try the AVX2 path on a bf16 machine
    ("avx512_core", "float32"),          # AVX-512 without its bf16 extension
    ("AVX512_CORE_BF16", "mixed_bfloat16"),
    ("AVX512_CORE_AMX", "mixed_bfloat16"),
    ("ALL", "mixed_bfloat16"), ("", "mixed_bfloat16"),
])
def test_auto_follows_onednns_isa_cap_not_only_the_cpu(cap, expected):
    precision, reason = choose_precision("auto", "tensorflow", frozenset(XEON_AMX), isa_cap=cap)
    assert precision == expected
    assert ("ONEDNN_MAX_CPU_ISA" in reason) == (expected == "float32")
    assert onednn_flags(frozenset(XEON_AMX), "AVX2") & set(SPEED_FLAGS) == {"avx2"}
    assert onednn_flags(frozenset(XEON_AMX), "AVX512_CORE_BF16") & {"amx_bf16", "avx512_bf16"} == {"avx512_bf16"}


@pytest.mark.parametrize("gpu,expected", [
    (Gpu("NVIDIA H100", (9, 0)), "mixed_bfloat16"),
    (Gpu("NVIDIA A100", (8, 0)), "mixed_bfloat16"),
    (Gpu("Tesla T4", (7, 5)), "mixed_float16"),     # no bf16: float16, Keras adds loss scaling
    (Gpu("Tesla V100", (7, 0)), "mixed_float16"),
    (Gpu("unknown GPU", None), "float32"),
])
def test_auto_on_gpus_follows_the_compute_capability(gpu, expected):
    assert choose_precision("auto", "jax", frozenset(EPYC_ZEN3), [gpu])[0] == expected


def test_explicit_precision_is_kept_and_bad_values_are_refused():
    assert choose_precision("float32", "tensorflow", frozenset(XEON_AMX))[0] == "float32"
    assert choose_precision("mixed_bfloat16", "tensorflow", frozenset(EPYC_ZEN3))[0] == "mixed_bfloat16"
    with pytest.raises(ValueError, match="train.precision"):
        choose_precision("fp8", "tensorflow", frozenset())
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_config("paper", {"train.precision": "fp8"})


def test_precision_reason_says_who_set_it_and_never_claims_a_request_the_user_did_not_make():
    from fer_ablate.training.loop import precision_origin

    assert "requested" not in choose_precision("float32", "tensorflow", frozenset())[1]
    assert precision_origin(resolve_config("kernel3")).startswith("the default of train.precision")
    assert precision_origin(resolve_config("kernel3", {"train.precision": "mixed_bfloat16"})).startswith("requested")
    cfg = resolve_config("fast_cpu", {"train.precision": "float32"})
    assert precision_origin(cfg).startswith("requested")


def test_device_count_rules():
    assert choose_device_count("auto", "tensorflow", 1, 0) == 1
    assert choose_device_count("auto", "jax", 2, 0) == 1  # virtual host devices are no reason to split
    assert choose_device_count("auto", "jax", 4, 4) == 4  # every GPU
    assert choose_device_count("all", "jax", 2, 0) == 2
    assert choose_device_count(2, "jax", 2, 0) == 2
    with pytest.raises(ValueError, match="needs the JAX backend"):
        choose_device_count(2, "tensorflow", 1, 0)
    with pytest.raises(ValueError, match="only 2 jax device"):
        choose_device_count(4, "jax", 2, 0)
    with pytest.raises(ValueError, match="needs the JAX backend"):
        choose_device_count("all", "tensorflow", 2, 2)
    with pytest.raises(ValueError, match="auto, all or a count"):
        choose_device_count("many", "jax", 2, 0)


def test_config_hash_keys_on_the_requested_precision_and_ignores_devices():
    auto = resolve_config("fast_cpu")
    assert auto["train"]["precision"] == "auto" and resolve_config("paper")["train"]["precision"] == "float32"
    assert config_hash(auto) == config_hash(resolve_config("fast_cpu", {"train.devices": 2}))
    assert config_hash(auto) != config_hash(resolve_config("fast_cpu", {"train.precision": "float32"}))


def test_machine_tags_name_backend_devices_flags_and_precision():
    machine = Machine("Intel Xeon Platinum 8481C", frozenset(XEON_AMX), 1, 2, "tensorflow", (), "2.21.0", "3.15.1",
                      ("cpu:0",))
    tags = machine_tags(machine, "auto")
    assert tags["precision_requested"] == "auto" and tags["precision_resolved"] == "mixed_bfloat16"
    assert tags["machine.cpu_flags"] == "avx2,avx512f,avx512_bf16,amx_bf16,amx_tile"
    assert tags["machine.cpu.avx_ne_convert"] == "false" and tags["machine.cpu.amx_bf16"] == "true"
    assert (tags["machine.cpu_cores"], tags["machine.cpu_threads"], tags["devices_used"]) == ("1", "2", "1")
    assert machine_tags(machine, "auto", devices=2)["devices_used"].startswith("refused: train.devices=2")
    text = format_machine(machine)
    assert "amx_bf16+" in text and "auto -> mixed_bfloat16" in text


@pytest.mark.graph  # one tracked run as a real run trains: traced graphs
def test_every_run_is_tagged_with_its_machine(tmp_path):
    from fer_ablate.runs.single import train_and_track

    cfg = resolve_config("paper", tiny_overrides(**{"train.precision": "auto"}))
    run_id, _ = train_and_track(cfg, experiment="machine-tags")
    tags = mlflow.get_run(run_id).data.tags
    here = current_machine()
    assert tags["machine.backend"] == keras.backend.backend() and tags["machine.keras_version"] == keras.__version__
    assert tags["machine.cpu_model"] == here.cpu_model and tags["machine.cpu_threads"] == str(here.threads)
    assert set(f"machine.cpu.{f}" for f in SPEED_FLAGS) <= set(tags)
    assert tags["machine.onednn_max_cpu_isa"] == (os.environ.get("ONEDNN_MAX_CPU_ISA") or "none")
    expected = choose_precision("auto", here.backend, here.cpu_flags, here.gpus, here.onednn_isa_cap)[0]
    assert tags["precision_requested"] == "auto" and tags["precision_resolved"] == expected
    assert mlflow.get_run(run_id).data.params["train.precision"] == "auto"


@pytest.mark.graph
def test_parameter_count_does_not_depend_on_the_precision():
    from fer_ablate.training.loop import build_models, compile_for_training

    counts = {p: build_models(resolve_config("fast_cpu", {"train.precision": p}))[2]
              for p in ("float32", "auto", "mixed_float16")}
    assert len(set(counts.values())) == 1, counts
    cfg = resolve_config("paper", tiny_overrides(**{"train.precision": "mixed_float16"}))
    _, training, _ = build_models(cfg)
    compile_for_training(training, cfg["train"], 64)
    assert isinstance(training.optimizer, keras.optimizers.LossScaleOptimizer)  # float16 needs loss scaling


def test_doctor_describes_this_machine(tmp_path):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "FER_DATA": ""}
    proc = subprocess.run([sys.executable, "-m", "fer_ablate.cli", "doctor"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    here = current_machine()
    assert here.cpu_model in out and f"{here.cores} cores" in out
    assert f"Keras {keras.__version__}, {keras.backend.backend()}" in out
    assert f"precision: auto -> {choose_precision('auto', here.backend, here.cpu_flags, here.gpus)[0]}" in out
    assert f"tracking:  {os.environ['MLFLOW_TRACKING_URI']} (reachable)" in out
    assert "data:      data=auto -> " in out and "train.devices=auto -> 1 device" in out


def test_backend_choice_before_keras_is_imported(tmp_path):
    def modules(*present):
        return lambda name: name in present

    assert choose_backend({"KERAS_BACKEND": "torch"}, modules("jax_cuda12_plugin")) is None  # explicit wins
    assert choose_backend({}, modules("jax", "jax_cuda12_plugin", "tensorflow")) == "jax"  # the gpu extra
    assert choose_backend({}, modules("jax", "tensorflow")) is None  # CPU jax from the dev extra: TensorFlow
    assert choose_backend({}, modules("jax")) == "jax"  # a JAX-only machine (the lent GPU boxes)
    config = tmp_path / "keras.json"
    config.write_text('{"backend": "tensorflow"}')  # what Keras writes on first import: no choice
    assert choose_backend({}, modules("jax_cuda12_plugin"), config) == "jax"
    config.write_text('{"backend": "torch"}')
    assert choose_backend({}, modules("jax_cuda12_plugin"), config) is None
