"""The machine a run trains on, and the precision ``train.precision: auto`` picks for it.

Two layers: pure functions over data (``parse_cpuinfo``, ``choose_precision``) that tests call with flag
sets and GPU lists passed in, and ``describe_machine`` which fills them from ``/proc/cpuinfo`` and the
Keras backend. Every tracked run logs ``machine_tags``; ``fer-ablate doctor`` and the benchmarks print
``format_machine``.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

# The CPU features that decide training speed here: bf16 in hardware (AMX tiles, AVX512_BF16 dot products,
# AVX_NE_CONVERT conversions) or only float32 vector units (AVX2, AVX-512).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# ONEDNN_MAX_CPU_ISA=<name> keeps oneDNN (TensorFlow's CPU kernels) to the instructions of that ISA; the values
# are oneDNN's own bit masks (dnnl_cpu_isa_t in the oneDNN developer guide). ALL/DEFAULT or unset: no cap.
ONEDNN_ISA_MASKS = {
    "SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xF, "AVX2_VNNI_2": 0x1F, "AVX512_CORE": 0x27,
    "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xE7, "AVX10_1_512": 0x1EF, "AVX512_CORE_FP16": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF, "AVX512_CORE_AMX": 0xFEF, "AVX10_1_512_AMX_FP16": 0x1FEF,
    "AVX512_CORE_AMX_FP16": 0x1FEF,
}
_FLAG_BITS = {"avx2": 0x4, "avx_ne_convert": 0x10, "avx512f": 0x20, "avx512_bf16": 0x80, "amx_bf16": 0x800,
              "amx_tile": 0x800}


def onednn_flags(cpu_flags: frozenset[str] | set[str], isa_cap: str = "") -> frozenset[str]:
    """The speed flags among ``cpu_flags`` that oneDNN may use under ``ONEDNN_MAX_CPU_ISA=isa_cap``.

    ``onednn_flags({"avx2", "avx512f", "avx512_bf16"}, "AVX2") == {"avx2"}``: on a bf16-capable CPU capped at
    AVX2, bf16 is emulated as on an AVX2-only CPU. An empty, unknown, ``ALL`` or ``DEFAULT`` cap keeps them all.
    """
    mask = ONEDNN_ISA_MASKS.get(isa_cap.strip().upper())
    if mask is None:
        return frozenset(cpu_flags)
    return frozenset(f for f in cpu_flags if f not in _FLAG_BITS or _FLAG_BITS[f] & mask)


@dataclass(frozen=True)
class Gpu:
    """One accelerator: its name and CUDA compute capability (``(8, 0)`` for an A100; None if unknown)."""

    name: str
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class Machine:
    """What training runs on: the CPU (model, speed flags, cores, threads), the backend and its GPUs."""

    cpu_model: str
    cpu_flags: frozenset[str]
    cores: int
    threads: int
    backend: str
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    backend_version: str = ""
    keras_version: str = ""
    devices: tuple[str, ...] = field(default_factory=tuple)
    onednn_isa_cap: str = ""  # $ONEDNN_MAX_CPU_ISA when set: TensorFlow's kernels use fewer flags than the CPU has


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str], int, int]:
    """``(model name, flags, physical cores, hardware threads)`` from the text of ``/proc/cpuinfo``.

    Cores are distinct ``(physical id, core id)`` pairs; a VM that hides them counts one core per thread.
    Missing fields give ``("unknown", frozenset(), threads, threads)``.
    """
    model, flags, threads, cores = "unknown", frozenset(), 0, set()
    physical = core = None
    for line in text.splitlines() + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "processor":
            threads += 1
        elif key == "model name" and model == "unknown":
            model = value
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key:  # a blank line ends one processor's block
            if core is not None:
                cores.add((physical, core))
            physical = core = None
    threads = max(threads, 1)
    return model, flags, len(cores) or threads, threads


def choose_precision(requested: str, backend: str, cpu_flags: frozenset[str] | set[str],
                     gpus: tuple[Gpu, ...] | list[Gpu] = (), isa_cap: str = "") -> tuple[str, str]:
    """The Keras dtype policy to train with, and why: ``("mixed_bfloat16", "GPU ... has bf16 ...")``.

    A value other than ``auto`` is kept (``training.loop.precision_origin`` says who set it). ``auto`` picks bf16
    only where it is native and measured faster:
    - a GPU with compute capability >= 8.0 (Ampere and later) -> ``mixed_bfloat16``; an older GPU ->
      ``mixed_float16`` (Keras wraps the optimizer in a loss-scaling one);
    - TensorFlow on a CPU with AMX (``amx_bf16``) or AVX512_BF16 -> ``mixed_bfloat16``: oneDNN has bf16
      kernels for both, measured 1.66x (AMX Xeon) and 1.25-1.5x (Zen 4 EPYC, avx512_bf16, no AMX) the
      float32 speed in steady epochs (benchmarks/README.md, precision.py);
    - anything else -> ``float32``: on AVX2 alone oneDNN emulates bf16, 4.3x slower (issue 14); AVX_NE_CONVERT
      alone only converts (no bf16 dot product, not measured); JAX on a CPU (XLA:CPU) measured 0.95x float32
      even with AVX512_BF16 (Zen 4, precision.py).
    ``isa_cap`` (``$ONEDNN_MAX_CPU_ISA``) removes the flags oneDNN may not use (``onednn_flags``) first.
    Raises ValueError for a value outside ``PRECISIONS``.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested, "fixed by train.precision, not chosen for this machine"
    if gpus:
        gpu = gpus[0]
        if gpu.compute_capability is None:
            return "float32", f"GPU {gpu.name}: compute capability unknown, float32 is the safe choice"
        cc = ".".join(map(str, gpu.compute_capability))
        if gpu.compute_capability >= (8, 0):
            return "mixed_bfloat16", f"GPU {gpu.name} (compute capability {cc}) computes bf16 natively"
        return "mixed_float16", f"GPU {gpu.name} (compute capability {cc} < 8.0) has no bf16: float16 with loss scaling"
    if backend != "tensorflow":
        return "float32", f"{backend} on a CPU: bf16 measured no faster than float32 there (XLA:CPU, 0.95x on Zen 4)"
    flags = onednn_flags(cpu_flags, isa_cap)
    if flags & {"amx_bf16", "avx512_bf16"}:
        native = "AMX" if "amx_bf16" in flags else "AVX512_BF16"
        return "mixed_bfloat16", f"CPU has {native}: oneDNN computes bf16 natively, measured faster than float32"
    capped = (f" (ONEDNN_MAX_CPU_ISA={isa_cap} keeps oneDNN from the CPU's)"
              if set(cpu_flags) & {"amx_bf16", "avx512_bf16"} else "")
    return "float32", (f"no bf16 dot-product instructions for oneDNN (no AMX, no AVX512_BF16){capped}: bf16 would "
                       "be emulated, several times slower")


def _keras_devices(backend: str) -> tuple[tuple[str, ...], tuple[Gpu, ...]]:
    """The backend's visible devices (``("cpu:0",)``, ``("cuda:0", "cuda:1")``) and its GPUs."""
    if backend == "jax":
        import jax

        devices = jax.devices()
        gpus = tuple(Gpu(getattr(d, "device_kind", str(d)), _capability(getattr(d, "compute_capability", None)))
                     for d in devices if d.platform == "gpu")
        return tuple(f"{d.platform}:{d.id}" for d in devices), gpus
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = []
        for device in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(device)
            gpus.append(Gpu(details.get("device_name", device.name), details.get("compute_capability")))
        cpus = tf.config.list_physical_devices("CPU")
        return tuple(d.name.replace("/physical_device:", "").lower() for d in cpus + tf.config.list_physical_devices(
            "GPU")), tuple(gpus)
    return (), ()


def _capability(value) -> tuple[int, int] | None:
    """``"8.6"`` or ``(8, 6)`` -> ``(8, 6)``; anything else -> None."""
    if value is None:
        return None
    try:
        parts = str(value).replace("(", "").replace(")", "").replace(",", ".").split(".")
        return int(parts[0]), int(parts[1] or 0)
    except (ValueError, IndexError):
        return None


def _backend_version(backend: str) -> str:
    from importlib import metadata

    dist = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}.get(backend, backend)
    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def describe_machine(cpuinfo: str | None = None) -> Machine:
    """This machine, read from ``/proc/cpuinfo`` (or ``cpuinfo`` text) and the active Keras backend."""
    import keras

    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    model, flags, cores, threads = parse_cpuinfo(cpuinfo)
    if model == "unknown":
        model = platform.processor() or platform.machine() or "unknown"
        threads = cores = os.cpu_count() or 1
    backend = keras.backend.backend()
    devices, gpus = _keras_devices(backend)
    return Machine(model, flags, cores, threads, backend, gpus, _backend_version(backend), keras.__version__,
                   devices, os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip())


@functools.lru_cache(maxsize=1)
def current_machine() -> Machine:
    """``describe_machine()`` once per process (the backend and the devices do not change within one)."""
    return describe_machine()


def resolve_precision(requested: str) -> tuple[str, str]:
    """``choose_precision`` for this machine: ``(dtype policy name, reason)``. Raises ValueError."""
    if requested != "auto":
        return choose_precision(requested, "", frozenset())
    machine = current_machine()
    return machine_precision(machine, requested)


def machine_precision(machine: Machine, requested: str) -> tuple[str, str]:
    """``choose_precision`` for ``machine``: its backend, CPU flags, GPUs and oneDNN ISA cap."""
    return choose_precision(requested, machine.backend, machine.cpu_flags, machine.gpus, machine.onednn_isa_cap)


def choose_device_count(request: str | int, backend: str, available: int, accelerators: int) -> int:
    """How many devices ``train.devices`` asks for: ``auto`` (every GPU, else 1), ``all`` or a count.

    ``available`` counts the backend's visible devices (JAX's virtual host devices included), ``accelerators``
    its GPUs. Raises ValueError for a bad value, a count above ``available``, or more than one device on a
    backend other than JAX (Keras' DataParallel distributes with JAX only).
    """
    text = str(request).strip().lower()
    if text == "auto":
        count = accelerators if backend == "jax" and accelerators > 1 else 1
    elif text == "all":
        count = available
    elif text.isdigit() and int(text) >= 1:
        count = int(text)
    else:
        raise ValueError(f"train.devices must be auto, all or a count >= 1, got {request!r}")
    if count > 1 and backend != "jax":
        raise ValueError(f"train.devices={request} needs the JAX backend (KERAS_BACKEND=jax); this process runs "
                         f"{backend}, which Keras' DataParallel does not distribute")
    if count > available:
        raise ValueError(f"train.devices={request}: only {available} {backend} device(s) visible")
    return count


def run_machine_tags(train_cfg: dict) -> dict[str, str]:
    """``machine_tags`` of this machine for a run's ``train`` settings (``precision``, ``devices``)."""
    return machine_tags(current_machine(), train_cfg["precision"], train_cfg["devices"])


def machine_tags(machine: Machine, requested: str, devices: str | int = "auto") -> dict[str, str]:
    """MLflow tags for a run: backend, devices, CPU speed flags, cores, the precision resolved from
    ``requested`` (``precision_resolved``) with its reason, and the data-parallel device count ``devices``
    resolves to (``devices_used``; ``refused: ...`` for an impossible request, which training then refuses)."""
    precision, reason = machine_precision(machine, requested)
    visible = len(machine.devices) if machine.backend == "jax" else 1
    try:
        used = str(choose_device_count(devices, machine.backend, max(visible, 1), len(machine.gpus)))
    except ValueError as exc:  # training refuses it with the same message (ConfigError)
        used = f"refused: {exc}"
    tags = {
        "devices_used": used,
        "machine.backend": machine.backend,
        "machine.backend_version": machine.backend_version,
        "machine.keras_version": machine.keras_version,
        "machine.device_kind": "gpu" if machine.gpus else "cpu",
        "machine.device_count": str(len(machine.gpus) or len(machine.devices) or 1),
        "machine.devices": ",".join(machine.devices),
        "machine.gpu": ", ".join(g.name for g in machine.gpus) or "none",
        "machine.cpu_model": machine.cpu_model,
        "machine.cpu_cores": str(machine.cores),
        "machine.cpu_threads": str(machine.threads),
        "machine.cpu_flags": ",".join(f for f in SPEED_FLAGS if f in machine.cpu_flags) or "none",
        "machine.onednn_max_cpu_isa": machine.onednn_isa_cap or "none",  # a capped run is not this CPU's speed
        "precision_requested": requested,
        "precision_resolved": precision,
        "precision_reason": reason,
    }
    tags.update({f"machine.cpu.{f}": str(f in machine.cpu_flags).lower() for f in SPEED_FLAGS})
    return tags


def format_machine(machine: Machine) -> str:
    """A few lines for a person (benchmark headers, ``fer-ablate doctor``)."""
    flags = " ".join(f"{f}{'+' if f in machine.cpu_flags else '-'}" for f in SPEED_FLAGS)
    gpus = ", ".join(f"{g.name} (cc {'.'.join(map(str, g.compute_capability or ('?',)))})" for g in machine.gpus)
    auto, why = machine_precision(machine, "auto")
    cap = f" (oneDNN capped by ONEDNN_MAX_CPU_ISA={machine.onednn_isa_cap})" if machine.onednn_isa_cap else ""
    return "\n".join([
        f"machine:   {machine.cpu_model}, {machine.cores} cores / {machine.threads} threads, {platform.machine()}",
        f"cpu flags: {flags}{cap}",
        f"backend:   Keras {machine.keras_version}, {machine.backend} {machine.backend_version}; "
        f"devices {', '.join(machine.devices) or '?'}; GPU: {gpus or 'none'}",
        f"precision: auto -> {auto} ({why})",
        f"devices:   train.devices=auto -> {_device_count_text('auto', machine)}, "
        f"all -> {_device_count_text('all', machine)}",
    ])


def _device_count_text(request: str, machine: Machine) -> str:
    visible = len(machine.devices) if machine.backend == "jax" else 1
    try:
        count = choose_device_count(request, machine.backend, max(visible, 1), len(machine.gpus))
    except ValueError as exc:
        return f"refused ({exc})"
    return f"{count} device{'s' if count > 1 else ''}" + (" (data parallel)" if count > 1 else "")
