"""How many CPUs this process may use: the default for every worker count.

``os.cpu_count()`` counts the machine's CPUs; a cluster job (Slurm cpuset, ``taskset``)
may be allowed far fewer, and one worker per machine CPU would oversubscribe them.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is none), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
