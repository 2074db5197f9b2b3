"""Scan an ImageFolder tree exactly as torchvision's ``ImageFolder`` would.

Class indices are the positions of the sorted class-directory names, files are
found recursively (``os.walk``, sorted) and kept when their lower-cased name ends
in one of torchvision's image extensions. The writer and the reference benchmark
pipeline share this one scan, so their indices agree (the tests recompute the
expected order independently).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: torchvision.datasets.folder.IMG_EXTENSIONS (lower case, matched case-insensitively).
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
)


class DatasetLayoutError(ValueError):
    """The folder does not have the ``split/<class>/<image>`` layout we need."""


@dataclass(frozen=True)
class FolderScan:
    """The result of scanning one split: class list, samples and ignored files."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    #: files skipped for their extension (ImageFolder skips them silently; we list them)
    ignored: list[str] = field(default_factory=list)


def find_classes(split_dir: str | os.PathLike) -> list[str]:
    """Sorted names of the class sub-directories of ``split_dir``."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetLayoutError(f"Dataset folder not found: {split_dir} (expected DATA/train/<class>/<image>)")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DatasetLayoutError(f"Couldn't find any class folder in {split_dir}")
    return classes


def _class_files(class_dir: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) under ``class_dir``, in torchvision's walk order."""
    images: list[str] = []
    others: list[str] = []
    for root, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
        for fname in sorted(fnames):
            path = os.path.join(root, fname)
            (images if fname.lower().endswith(IMG_EXTENSIONS) else others).append(path)
    return images, others


def scan_split(split_dir: str | os.PathLike, classes: Sequence[str] | None = None) -> FolderScan:
    """Scan ``split_dir`` into ``(path, class_index)`` samples in ImageFolder order.

    ``classes`` fixes the class list (the val split uses train's, so a val folder
    missing some classes keeps train's indices); by default it is found in
    ``split_dir``. A class folder without images, or a folder in ``split_dir``
    that is not in ``classes``, is an error naming the path.
    """
    split_dir = Path(split_dir).absolute()  # every stored path is absolute, whatever the caller's cwd
    present = find_classes(split_dir)
    if classes is None:
        classes = present
    else:
        classes = list(classes)
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DatasetLayoutError(
                f"{split_dir} has class folders that the train split lacks: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; class indices come from train/, "
                f"so add them there or remove them"
            )
    class_to_idx = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    ignored: list[str] = []
    for name in present:
        images, others = _class_files(split_dir / name)
        if not images:
            raise DatasetLayoutError(
                f"Found no valid file in {split_dir / name}. Supported extensions are: {', '.join(IMG_EXTENSIONS)}"
            )
        samples.extend((path, class_to_idx[name]) for path in images)
        ignored.extend(others)
    return FolderScan(root=split_dir, classes=classes, samples=samples, ignored=ignored)
