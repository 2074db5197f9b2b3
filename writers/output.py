"""The output path of a write: checked before any work, partial files named and cleaned up.

A beton is written as ``.NAME.<host>-<pid>.partial`` beside its final name and renamed when
complete. Everything that can be known up front (the path names a directory, the folder is
not writable, a finished beton would be overwritten) fails before a single image is read,
and partial files left by writers that died on this host are removed on the next run.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

from writers.metadata import sidecar_path

log = logging.getLogger("jit_ffcv.writer")


class OutputError(ValueError):
    """The output path cannot be written (a directory, a read-only folder, ...)."""


class BetonExistsError(OutputError):
    """A finished beton is already at the output path and overwriting was not asked for."""


#: Folder of a dataset's betons, relative to its root (``JiTDataModule``'s ``beton_dir`` default).
BETON_DIRNAME = "ffcv"


def beton_name(split: str, img_size: int, mode: str, quality: int | None) -> str:
    """Default file name of a beton, e.g. ``train_256_jpg90.beton`` or ``val_512_raw.beton``.

    ``jit-ffcv write --out-dir`` and ``JiTDataModule`` both use it, so ``prepare_data`` finds what ``write`` made.
    """
    return f"{split}_{img_size}_{mode}{quality if mode == 'jpg' else ''}.beton"


def default_beton_dir(data_path: str | os.PathLike) -> Path:
    """Where betons of the dataset at ``data_path`` live by default: ``data_path/ffcv``."""
    return Path(data_path) / BETON_DIRNAME


def partial_path(out: Path) -> Path:
    """Hidden temporary name of ``out`` while it is written, unique per host and process."""
    return out.with_name(f".{out.name}.{socket.gethostname()}-{os.getpid()}.partial")


def partial_files(out: Path) -> list[Path]:
    """This process's partial beton and partial sidecar of ``out`` (they may not exist)."""
    partial = partial_path(out)
    return [partial, partial.with_name(partial.name + ".json")]


def check_output(out: Path, *, force: bool, create: bool = True, force_hint: str = "force=True") -> None:
    """Fail now, before any work, if ``out`` cannot become a beton; create its folder (``create``: else only check).

    Without ``create`` the nearest existing folder above ``out`` must be writable, so a command can
    check all its outputs first and still create nothing when a later check fails. ``force_hint`` is
    how the caller overwrites (``force=True`` from Python, ``--force`` on the command line).
    """
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; name a file such as {out / 'train_256_jpg90.beton'}")
    if sidecar_path(out).is_dir():
        raise OutputError(f"{sidecar_path(out)} is a directory, so the beton's sidecar cannot be written; remove it")
    folder = out.parent
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {folder}: {exc.strerror}; "
                              f"choose another output") from exc
    else:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"cannot create the output folder {out.parent}: {folder} is not a folder; "
                              f"choose another output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {folder} (read-only?); choose another output")
    if out.exists() and not force:
        raise BetonExistsError(
            f"{out} already exists; pass {force_hint} to overwrite it, or choose another output"
        )


def remove_quietly(path: Path, what: str = "file") -> None:
    """Delete ``path`` during cleanup; a failure (a folder turned read-only) is logged, so it never hides the cause."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the %s %s (%s); delete it by hand", what, path, exc.strerror)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Delete partial files of ``out`` left by dead writers on this host; return what was removed.

    Partials of other hosts are left alone: their pids mean nothing here.
    """
    host = socket.gethostname()
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{re.escape(host)}-(\d+)\.partial(\.json)?")
    removed = []
    for path in out.parent.glob(f".{out.name}.{host}-*.partial*"):
        match = pattern.fullmatch(path.name)
        if match and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.warning("removed %d partial file(s) of dead writers: %s", len(removed), ", ".join(map(str, removed)))
    return removed
