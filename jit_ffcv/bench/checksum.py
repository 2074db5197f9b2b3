"""What verifying each sample's checksum costs: ``python -m jit_ffcv.bench.checksum``.

Writes betons of the real ImageNet sample (``$JIT_FFCV_SAMPLE``; the synthetic folder of
:mod:`jit_ffcv.synthetic` when absent) at each size, then times the decode kernel
(:mod:`jit_ffcv.kernels`, one thread, accurate IDCT, no flip) over every stored sample with and
without verification, interleaved, ``--repeat`` times, and reports medians (min-max) and the
verification's share of decode time. Also times the hash alone over the same payloads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jit_ffcv.checksum import NO_CHECKSUMS, checksum_column, payload_hash
from jit_ffcv.kernels import decode_batch, variant
from jit_ffcv.synthetic import SHARED_SAMPLE, make_image_folder
from writers.beton import write_beton
from writers.ffcv_api import Reader
from writers.folder import scan_split

__all__ = ["Kernel", "main", "measure"]


class Kernel:
    """The decode kernel over every sample of one beton, held in memory (OS-cache state: bytes, pointers, sizes)."""

    def __init__(self, beton: Path) -> None:
        reader = Reader(str(beton))
        table = np.sort(reader.alloc_table, order="ptr")
        self.state = (np.fromfile(beton, dtype=np.uint8), table["ptr"].astype(np.uint64),
                      table["size"].astype(np.uint64))
        self.metadata = reader.metadata["f0"]
        self.checksums = checksum_column(reader)
        self.indices = np.arange(reader.num_samples, dtype=np.uint64)
        size = int(self.metadata["height"][0])
        self.out = np.empty((len(self.indices), size, size, 3), dtype=np.uint8)
        ptrs = self.metadata["data_ptr"].astype(np.uint64)
        self.payloads = [self.state[0][p:p + self.state[2][np.searchsorted(self.state[1], p)]] for p in ptrs]
        self.kernel = variant(decode_batch, 1)

    def decode(self, verify: bool) -> float:
        """Seconds to decode every sample once (status checked)."""
        checksums = self.checksums if verify else NO_CHECKSUMS
        start = time.perf_counter()
        status = self.kernel(self.indices, self.out, self.out, self.metadata, self.state, 0, np.int64(0),
                             np.int64(0), np.float64(0.0), np.int32(0), False, checksums)
        seconds = time.perf_counter() - start
        if status.any():
            raise RuntimeError(f"decode status {status[status != 0][0]}: the benchmark beton is damaged")
        return seconds

    def hash_all(self) -> float:
        """Seconds to hash every payload once (one Python call per payload)."""
        start = time.perf_counter()
        for payload in self.payloads:
            payload_hash(payload)
        return time.perf_counter() - start


def _median(samples: Sequence[float]) -> tuple[float, float, float]:
    return float(np.median(samples)), min(samples), max(samples)


def measure(kernel: Kernel, repeat: int) -> dict[str, tuple[float, float, float]]:
    """Per-image microseconds (median, min, max) of decode without and with verification, and of the hash alone."""
    kernel.decode(True), kernel.decode(False), kernel.hash_all()  # compiled (or loaded from the cache), warm
    runs: dict[str, list[float]] = {"plain": [], "verified": [], "hash": []}
    per_image = 1e6 / len(kernel.indices)
    for r in range(repeat):
        for verify in (r % 2 == 0, r % 2 == 1):  # alternate which goes first
            runs["verified" if verify else "plain"].append(kernel.decode(verify) * per_image)
        runs["hash"].append(kernel.hash_all() * per_image)
    return {name: _median(values) for name, values in runs.items()}


def _betons(source: Path, sizes: Sequence[int], modes: Sequence[str], out: Path) -> dict[tuple[int, str], Path]:
    scan = scan_split(source)
    betons = {}
    for size in sizes:
        for mode in modes:
            betons[size, mode] = out / f"bench_{size}_{mode}.beton"
            write_beton(scan, betons[size, mode], img_size=size, mode=mode, quality=90, num_workers=2, progress=False)
    return betons


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> None:
    """Print one row per (size, mode): decode us/image without and with verification, the hash, the overhead."""
    parser = argparse.ArgumentParser(prog="python -m jit_ffcv.bench.checksum", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_SAMPLE / "train", help="ImageFolder split to encode")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--modes", nargs="+", default=["jpg", "raw"], choices=["jpg", "raw"])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of each kind (median reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jit-ffcv-checksum-") as tmp:
        source = args.data if args.data.is_dir() else make_image_folder(Path(tmp) / "synthetic").root / "train"
        echo(f"source: {source}; {args.repeat} runs each, one thread, median (min-max) us per image")
        for (size, mode), beton in _betons(source, args.sizes, args.modes, Path(tmp)).items():
            kernel = Kernel(beton)
            times = measure(kernel, args.repeat)
            plain, verified, hashed = (times[k] for k in ("plain", "verified", "hash"))
            mb = sum(p.size for p in kernel.payloads) / len(kernel.payloads) / 1e6
            echo(f"{size:4d} px {mode}: {len(kernel.indices)} images, {mb:.3f} MB/payload; decode "
                 f"{_fmt(plain)}, verified {_fmt(verified)} (+{100 * (verified[0] / plain[0] - 1):.2f}%); hash alone "
                 f"{_fmt(hashed)} = {100 * hashed[0] / plain[0]:.2f}% of decode")


def _fmt(value: tuple[float, float, float]) -> str:
    return f"{value[0]:.1f} ({value[1]:.1f}-{value[2]:.1f})"


if __name__ == "__main__":
    main()
