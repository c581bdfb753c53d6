"""The header every benchmark prints first: which machine kind the numbers below come from.

Timing figures from one machine kind (an AMX Xeon, an AVX2 or AVX-512 EPYC, a GPU) do not carry to another,
so each result in benchmarks/README.md sits under its machine kind, copied from this header.
"""

from __future__ import annotations

import datetime


def print_header(title: str) -> None:
    """Print ``title``, the date, and the machine (CPU model, speed flags, cores, backend, devices, precision)."""
    from fer_ablate.training.hardware import describe_machine, format_machine

    print(f"== {title} == {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(format_machine(describe_machine()), flush=True)
