"""The machine a measurement ran on: CPU, cores, memory, GPU and library versions, one line in every block."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import time
from pathlib import Path
from typing import Any

#: libraries whose versions every block names (``pillow`` is PIL's distribution)
LIBRARIES: tuple[str, ...] = ("torch", "ffcv", "numba", "numpy", "pillow", "lightning")


def _cpu_and_ram() -> tuple[str, float]:
    """CPU model (from /proc/cpuinfo, else the platform's) and RAM in GiB (0 where /proc is absent)."""
    model, mem_kib = platform.processor() or "unknown CPU", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                       if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return model, round(mem_kib / 2**20, 1)


def _gpu() -> str:
    """The first CUDA device's name, ``none`` without one (torch is imported only if installed)."""
    if importlib.util.find_spec("torch") is None:
        return "none"
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine_info(workers: int) -> dict[str, Any]:
    """CPU model, cores, RAM, GPU, library versions and the date: described with every table."""
    cpu, ram = _cpu_and_ram()
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": workers, "ram_gib": ram, "gpu": _gpu(), "python": platform.python_version(),
        **{name: _version(name) for name in LIBRARIES},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def describe(info: dict[str, Any]) -> str:
    """One line: the machine, the load at the end and the libraries (``info`` from :func:`machine_info`)."""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    libs = ", ".join(f"{name} {info[name]}" for name in LIBRARIES)
    return (f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, GPU: {info['gpu']}{load}; "
            f"python {info['python']}, {libs}; measured {info['date']}.")
