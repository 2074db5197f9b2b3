"""Which beton each split of a DataModule reads, writing the missing ones, and checking the ones it opens.

A split's beton is the explicit ``{split}_beton`` if given, else ``beton_name(...)`` in ``beton_dir`` if that
file exists, else the one beton there whose sidecar matches (any file name); several matches are an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from writers.beton import scan_splits, write_split
from writers.cpus import usable_cpus
from writers.ffcv_api import Reader, stored_field
from writers.find import Search, Wanted, find_betons
from writers.metadata import BetonMetadata, BetonMismatchError, read_metadata, sidecar_path, verify_file
from writers.output import beton_name

__all__ = ["Betons", "check_header"]

log = logging.getLogger("jit_ffcv.datamodule")


@dataclass(frozen=True)
class Betons:
    """The betons of one dataset root at one size, mode and quality (explicit paths win per split)."""

    data_path: Path
    beton_dir: Path
    img_size: int
    mode: str
    quality: int
    explicit: dict[str, Path | None]

    def default_path(self, split: str) -> Path:
        """Where ``jit-ffcv write`` puts ``split``'s beton under the name the DataModule looks for."""
        return self.beton_dir / beton_name(split, self.img_size, self.mode, self.quality)

    def locate(self, split: str) -> tuple[Path, Search | None]:
        """The beton for ``split`` and, when it must be written under the default name, the search that found none."""
        explicit = self.explicit[split]
        if explicit is not None:
            return explicit, None
        default = self.default_path(split)
        if default.exists():
            return default, None
        quality = self.quality if self.mode == "jpg" else None
        search = find_betons(self.beton_dir, Wanted(split, self.img_size, self.mode, quality,
                                                     str((self.data_path / split).resolve())))
        if len(search.matches) > 1:
            raise BetonMismatchError(
                f"several betons in {self.beton_dir} match split={split} img_size={self.img_size} mode={self.mode}"
                f"{f' quality={self.quality}' if self.mode == 'jpg' else ''}: "
                f"{', '.join(p.name for p in search.matches)}; pass {split}_beton= to choose one (or delete the others)"
            )
        return (search.matches[0], None) if search.matches else (default, search)

    def splits(self) -> list[str]:
        """Splits to use: train; val when its folder or beton exists, unless ``train_beton`` is given alone."""
        if self.explicit["train"] is not None and self.explicit["val"] is None:
            return ["train"]  # an explicit train beton alone: no validation, nothing written for val
        has_val = (self.data_path / "val").is_dir() or self.locate("val")[0].exists()
        return ["train"] + (["val"] if has_val else [])

    def write_missing(self, write_workers: int | None) -> None:
        """Write every split's beton that does not exist yet (what ``prepare_data`` does).

        Every missing split's folder and layout (val's classes against train's) is checked before the first
        image of any split is read: a bad ``val/`` fails in seconds, not after train has been written.
        """
        missing: dict[str, tuple[Path, Search | None]] = {}
        for split in self.splits():
            path, search = self.locate(split)
            if path.exists():
                if path != self.default_path(split) and self.explicit[split] is None:
                    log.info("using %s for split %s: its sidecar matches (%s is not there)",
                             path, split, self.default_path(split).name)
                continue
            if not (self.data_path / split).is_dir():
                others = f" (betons there that do not match: {search.explain()})" if search and search.rejected else ""
                raise FileNotFoundError(
                    f"{path} does not exist and there is no {self.data_path / split} to write it from; "
                    f"set data_path to the dataset root or {split}_beton to an existing beton{others}"
                )
            missing[split] = path, search
        if not missing:
            return
        scans = scan_splits(self.data_path, list(missing))
        workers = min(write_workers, usable_cpus()) if write_workers is not None else usable_cpus()
        for split, (path, search) in missing.items():
            if search is not None and search.rejected:
                log.warning("writing %s: none of the betons in %s matches split=%s (%s)",
                            path, self.beton_dir, split, search.explain())
            write_split(self.data_path, split, path, scan=scans[split], img_size=self.img_size, mode=self.mode,
                        quality=self.quality, num_workers=workers, progress=True)

    def open(self, split: str, train_classes: list[str] | None = None) -> tuple[Path, BetonMetadata]:
        """``split``'s beton and its checked metadata; refuses betons written with other settings or classes."""
        path = self.locate(split)[0]
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: call prepare_data() first (Trainer.fit does)")
        meta = read_metadata(path)
        meta.check_matches(img_size=self.img_size, mode=self.mode, quality=self.quality, classes=train_classes)
        verify_file(path, meta)
        check_header(path, meta)
        return path, meta


def check_header(path: Path, meta: BetonMetadata) -> None:
    """The beton's own header and sample table must agree with its sidecar (sample count, image size)."""
    reader = Reader(str(path))
    image = stored_field(reader, "image")
    wanted = {"num_samples": meta.num_samples, "height": meta.img_size, "width": meta.img_size}
    found = {  # np.unique (a sort over all samples) only for a column that disagrees: O(N) compares otherwise
        "num_samples": [int(reader.num_samples)],
        **{key: np.unique(image[key]).tolist() if bool(np.any(image[key] != wanted[key])) else [wanted[key]]
           for key in ("height", "width")},
    }
    for key, values in found.items():
        if any(v != wanted[key] for v in values):
            raise BetonMismatchError(
                f"{path} holds {key}={values[0] if len(values) == 1 else values} but its sidecar "
                f"{sidecar_path(path)} says {wanted[key]}: the beton and its .json do not belong together; "
                f"rewrite the beton (delete both files)"
            )
