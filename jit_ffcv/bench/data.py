"""The benchmark's data: the source split and the betons it measures (written once, cached)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from jit_ffcv.synthetic import SHARED_SAMPLE, make_image_folder
from writers.beton import replicate_beton, write_beton
from writers.folder import FolderScan, scan_split


def dataset_scan(data_path: str | None, work: Path) -> tuple[FolderScan, str]:
    """The source split: ``--data-path``, else the shared ImageNet sample, else synthetic."""
    if data_path:
        return scan_split(Path(data_path) / "train"), str(data_path)
    if (SHARED_SAMPLE / "train").is_dir():
        return scan_split(SHARED_SAMPLE / "train"), f"the shared sample {SHARED_SAMPLE.name}/ (real ImageNet JPEGs)"
    synth = make_image_folder(work / "synthetic", num_classes=10, per_class=10, broken=False, val=False)
    return scan_split(synth.root / "train"), "synthetic ImageFolder (no shared sample found)"


def mode_quality(name: str) -> tuple[str, int]:
    """Writer mode and JPEG quality of a beton name: ``raw``, ``jpg90``, ``jpg95``."""
    return ("raw", 90) if name == "raw" else ("jpg", int(name[3:]))


def build_betons(scan: FolderScan, img_size: int, names: Iterable[str], replicate: int, work: Path, workers: int,
                 progress: bool) -> dict[str, Path]:
    """Write each unique beton once (cached in ``work``) and a ``replicate``-times copy of it."""
    out: dict[str, Path] = {}
    for name in names:
        mode, quality = mode_quality(name)
        unique = work / f"unique_{img_size}_{name}_{len(scan.samples)}.beton"
        if not unique.exists():
            write_beton(scan, unique, img_size=img_size, mode=mode, quality=quality, num_workers=workers,
                        progress=progress)
        big = work / f"bench_{img_size}_{name}_{len(scan.samples)}x{replicate}.beton"
        if not big.exists():
            replicate_beton(unique, big, replicate)
        out[name] = big
    return out

