"""Memory of a measured process: its own peak and current resident size, and the peak with its workers."""

from __future__ import annotations

import threading
from pathlib import Path


def _status_mib(field: str) -> float | None:
    """A ``VmXXX`` field of /proc/self/status in MiB (None where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def own_peak_mib() -> float:
    """This process's peak resident memory since its ``exec`` (``VmHWM``), else psutil's current RSS."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def rss_mib() -> float:
    """This process's current resident memory (``VmRSS``) in MiB, NaN where /proc is absent."""
    rss = _status_mib("VmRSS")
    return float("nan") if rss is None else rss


class PeakRSS:
    """Peak memory of this process plus its worker processes, in MiB.

    This process's own peak is the kernel's exact high-water mark (``VmHWM``; not
    ``ru_maxrss``, which survives ``exec`` and would report the parent's size);
    workers (the reference's DataLoader processes) are sampled every 0.5 s.
    Sampling more often costs measurable CPU (psutil walks /proc).
    """

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        own = own_peak_mib()
        workers = 0
        for child in self._proc.children(recursive=True):
            try:
                workers += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                pass
        return own + workers / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())
