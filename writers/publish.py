"""Publishing a finished beton: its sidecar, then the beton, each by atomic rename, never half of them."""

from __future__ import annotations

import os
from pathlib import Path

from writers.metadata import BetonMetadata, sidecar_path
from writers.output import remove_quietly


def publish(partial: Path, out: Path, meta: BetonMetadata) -> None:
    """Give a finished beton its final name: sidecar first, then the beton, each by atomic rename.

    On any failure
    (disk full while the sidecar is written, ...) nothing of this write is left.
    """
    sidecar = sidecar_path(out)
    tmp = partial.with_name(partial.name + ".json")
    try:
        tmp.write_text(meta.to_json())
        os.replace(tmp, sidecar)
        try:
            os.replace(partial, out)
        except BaseException:
            remove_quietly(sidecar, "sidecar")  # a sidecar must never describe a beton that is not there
            raise
    except BaseException:
        remove_quietly(tmp, "partial sidecar")
        remove_quietly(partial, "partial beton")
        raise
