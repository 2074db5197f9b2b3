"""Find an existing beton for a split by its sidecar, whatever its file name.

``JiTDataModule.prepare_data`` uses this before writing a beton under the default name: a
beton written with ``jit-ffcv write --out custom.beton`` into the same folder is used if its
sidecar says it holds the same split, crop size, mode, quality and source folder, complete
(not a ``--limit`` write). Otherwise the caller logs why each candidate was not taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from writers.metadata import CROP_METHOD, BetonMetadata, read_metadata, verify_file


@dataclass(frozen=True)
class Wanted:
    """What a beton must hold to be used for a split."""

    split: str
    img_size: int
    mode: str
    quality: int | None  # ignored in raw mode
    source: str  # absolute, resolved path of the split's folder (the sidecar's ``source``)

    def mismatches(self, meta: BetonMetadata) -> list[str]:
        """``key=found (wanted ...)`` for every field of ``meta`` that differs from this request."""
        wanted: dict[str, object] = {"img_size": self.img_size, "mode": self.mode, "crop": CROP_METHOD,
                                     "source": self.source, "limit": None}
        if self.mode == "jpg":
            wanted["quality"] = self.quality
        return [f"{key}={getattr(meta, key)!r} (wanted {value!r})"
                for key, value in wanted.items() if getattr(meta, key) != value]


@dataclass
class Search:
    """Betons in a folder that match a request, and why the others of the same split do not."""

    matches: list[Path] = field(default_factory=list)
    rejected: dict[Path, str] = field(default_factory=dict)  # beton -> why it was not taken

    def explain(self) -> str:
        """One line per rejected beton: its path and the mismatching fields."""
        return "; ".join(f"{path.name}: {why}" for path, why in sorted(self.rejected.items()))


def find_betons(beton_dir: str | os.PathLike, wanted: Wanted) -> Search:
    """Betons in ``beton_dir`` (not recursive) whose sidecar matches ``wanted``, sorted by name.

    Candidates are ``*.beton`` files of ``wanted.split`` with a readable sidecar; a beton whose
    size differs from its sidecar's, or whose sidecar is broken, is rejected with that reason.
    """
    search = Search()
    folder = Path(beton_dir)
    if not folder.is_dir():
        return search
    for path in sorted(folder.glob("*.beton")):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            meta = read_metadata(path)
            verify_file(path, meta)
        except (OSError, ValueError) as exc:
            search.rejected[path] = " ".join(str(exc).split())
            continue
        if meta.split != wanted.split:
            continue
        problems = wanted.mismatches(meta)
        if problems:
            search.rejected[path] = ", ".join(problems)
        else:
            search.matches.append(path)
    return search
