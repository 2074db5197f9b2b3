"""The JSON sidecar written beside every beton (``NAME.beton.json``).

It records how the beton was made (size, mode, quality, crop, classes, counts,
skipped files, checksum) so that a loader can refuse a beton that is not the one
it was asked for, instead of silently training on the wrong pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FORMAT = "jit-ffcv-beton/1"
CROP_METHOD = "adm_center_crop_arr"


class BetonMismatchError(ValueError):
    """A beton exists but was written with other settings than requested."""


class SidecarError(BetonMismatchError):
    """A beton's sidecar is not valid JSON or lacks keys (a truncated or hand-edited file)."""


@dataclass
class BetonMetadata:
    """Everything the writer knows about a beton; serialised as its JSON sidecar."""

    split: str
    img_size: int
    mode: str
    quality: int | None
    classes: list[str]
    class_counts: list[int]
    num_samples: int
    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    sha256: str = ""
    size_bytes: int = 0
    payload_bytes: int = 0  # encoded image bytes, without FFCV's page padding
    seconds: float = 0.0
    images_per_second: float = 0.0
    num_workers: int = 1
    writer_version: str = ""
    #: "shuffled": stored in ``writers.shuffle.sample_permutation(N, shuffle_seed)`` order, each sample's
    #: ImageFolder index in the ``index`` field; "folder": ImageFolder order (sidecars before the field)
    sample_order: str = "folder"
    shuffle_seed: int | None = None
    #: ``--limit N``: only the first N files of ImageFolder order were written (None: the whole split)
    limit: int | None = None
    crop: str = CROP_METHOD
    format: str = FORMAT
    #: :func:`classes_sha256` of ``classes``, written by :meth:`to_json` and checked by :func:`read_metadata`
    #: (labels are positions in this list: an edited list renames every sample); "": a sidecar from before it
    classes_sha256: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes (including classes with no sample in this split)."""
        return len(self.classes)

    def to_json(self) -> str:
        """Pretty JSON text of this record, with the digest of its class list as it is now."""
        return json.dumps({**asdict(self), "classes_sha256": classes_sha256(self.classes)}, indent=2, sort_keys=True)

    def check_matches(
        self,
        *,
        img_size: int | None = None,
        mode: str | None = None,
        quality: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        """Raise :class:`BetonMismatchError` if this beton differs from what is asked."""
        wanted: dict[str, Any] = {"img_size": img_size, "mode": mode, "crop": CROP_METHOD}
        if mode == "jpg":
            wanted["quality"] = quality
        for key, value in wanted.items():
            if value is not None and getattr(self, key) != value:
                raise BetonMismatchError(
                    f"beton for split {self.split!r} has {key}={getattr(self, key)!r} but {value!r} was requested; "
                    f"delete it (and its .json) to rewrite it, or point to the right beton"
                )
        if classes is not None and list(classes) != self.classes:
            raise BetonMismatchError(
                f"beton for split {self.split!r} has {len(self.classes)} classes that differ from the "
                f"{len(classes)} requested ones; rewrite it from the same train/ folder"
            )


def classes_sha256(classes: Sequence[str]) -> str:
    """Hex SHA-256 of a class list (its JSON text): order and spelling both count."""
    return hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()


def sidecar_path(beton: str | os.PathLike) -> Path:
    """``NAME.beton`` -> ``NAME.beton.json``."""
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, same value as ``sha256sum``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(beton: str | os.PathLike) -> BetonMetadata:
    """Load the sidecar of ``beton``; a clear error if it is missing or foreign."""
    path = sidecar_path(beton)
    if not Path(beton).is_file():
        raise FileNotFoundError(f"beton not found: {beton}; write it with `jit-ffcv write` or check the path")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {beton} was not written by jit-ffcv (or its writer was interrupted); "
            f"rewrite it with `jit-ffcv write`"
        )
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SidecarError(
            f"{path} is not valid JSON ({exc}); rewrite the beton with `jit-ffcv write --force`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BetonMismatchError(f"{path} has format {found!r}, expected {FORMAT!r}")
    _check_keys(path, data)
    meta = BetonMetadata(**data)
    if meta.classes_sha256 and classes_sha256(meta.classes) != meta.classes_sha256:
        raise SidecarError(f"{path}: its class list does not match the digest written with it (classes_sha256): "
                           f"the sidecar was edited or damaged, and labels would name the wrong classes; rewrite the "
                           f"beton with `jit-ffcv write --force`")
    return meta


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    """Raise :class:`SidecarError` naming ``path`` if required keys are missing or unknown keys present."""
    known = {f.name: f for f in fields(BetonMetadata)}
    required = {name for name, f in known.items() if f.default is MISSING and f.default_factory is MISSING}
    missing, unknown = sorted(required - set(data)), sorted(set(data) - set(known))
    if missing or unknown:
        what = "; ".join(p for p in (f"missing keys {missing}" if missing else "",
                                     f"unknown keys {unknown}" if unknown else "") if p)
        raise SidecarError(f"{path} is not a complete jit-ffcv sidecar ({what}); rewrite the beton with "
                           f"`jit-ffcv write --force`")


def verify_file(beton: str | os.PathLike, meta: BetonMetadata, *, checksum: bool = False) -> None:
    """Check that ``beton`` is the file ``meta`` describes (size always, SHA-256 on request)."""
    size = os.path.getsize(beton)
    if size != meta.size_bytes:
        raise BetonMismatchError(
            f"{beton} is {size} bytes but its metadata says {meta.size_bytes}: the file changed "
            f"after it was written; rewrite it"
        )
    if checksum and file_sha256(beton) != meta.sha256:
        raise BetonMismatchError(f"{beton} does not match the SHA-256 in {sidecar_path(beton)}; rewrite it")
