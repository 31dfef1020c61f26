"""The machine a bench ran on, printed with its numbers: they mean little without it."""

from __future__ import annotations

import os
from pathlib import Path


def describe() -> str:
    """Cores, CPU model and load average, e.g. ``2 cores, AMD EPYC ...; load average 0.80 2.13 2.19``."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, {cpu}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
