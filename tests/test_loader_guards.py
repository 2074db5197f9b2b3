"""JiTLoader refuses or reports what would otherwise hang or train on the wrong data without an error.

Forked children (inherited iterators and loaders), CUDA pipelines without CUDA, zero-step epochs,
epochs counted from 0 by a loop that never calls set_epoch (a resumed run replays epoch 0), and a
beton rewritten under a running loader.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from jit_ffcv.loader import JiTLoader
from jit_ffcv.traversal import QuasiRandomOrder, SequentialOrder
from tests.helpers.data import read_beton
from writers.ffcv_api import IntDecoder, ToDevice, ToTensor
from writers.metadata import BetonMismatchError

ROOT = Path(__file__).resolve().parents[1]


def run_fork(scenario: str, beton: Path, timeout: float = 120) -> dict[str, Any]:
    """tests/helpers/fork_child.py's ``scenario`` in a fresh process; a hang fails at ``timeout``."""
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.helpers.fork_child", scenario, str(beton)],
                              capture_output=True, text=True, timeout=timeout, cwd=str(ROOT),
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"fork scenario {scenario!r} hung for {timeout} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "output": proc.stdout + proc.stderr}


# --------------------------------------------------------------------------- #
# forked children
# --------------------------------------------------------------------------- #
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, each epoch creates CUDA streams in the parent, and "
                    "a forked child then gets torch's 'Cannot re-initialize CUDA in forked subprocess' (an error, "
                    "not a hang)")
@pytest.mark.parametrize("scenario", ["inherited_iterator", "after_finished_epoch", "new_epoch_mid"])
def test_loader_in_a_forked_child_does_not_hang(raw_beton: Path, scenario: str) -> None:
    """The child inherits the decoding threads' objects, not the threads: it used to wait forever (or 10 s).

    Nor does the fork print numba's TBB 'Unable to join threads to shut down before fork()': the loader runs no
    parallel numba code (each thread decodes whole batches), so TBB has no worker to join (the one-batch-at-a-time
    engine printed it after any epoch with 2 threads, where TBB is numba's layer: 2+ CPUs and TBB installed).
    """
    stored = read_beton(raw_beton)[1].tolist()
    result = run_fork(scenario, raw_beton)
    assert "Unable to join threads" not in result["output"]
    assert not result["hung"] and result["status"] == 0
    assert result["epoch_labels"] == stored  # a fresh decoding thread ran the child's whole epoch
    assert result["seconds"] < 5  # no join of the parent's (absent) thread
    if scenario == "inherited_iterator":
        assert result["inherited"].startswith("ForkedLoaderError: this iterator of epoch 0 was started in process ")
        assert "start the epoch again in this process with iter(loader)" in result["inherited"]
        assert result["parent_rest"] == stored[8:]  # the parent's epoch went on, unharmed
    else:
        assert result["inherited"] is None


# --------------------------------------------------------------------------- #
# checked at construction
# --------------------------------------------------------------------------- #
def labels_loader(beton: Path, **options: Any) -> JiTLoader:
    kwargs: dict[str, Any] = dict(batch_size=2, num_workers=1, order=QuasiRandomOrder(), seed=0, drop_last=True,
                                  pipelines={"image": None, "label": [IntDecoder()], "index": None, "checksum": None})
    kwargs.update(options)
    return JiTLoader(str(beton), **kwargs)


def test_cuda_pipeline_without_cuda_fails_at_construction(raw_beton: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ops = [IntDecoder(), ToTensor(), ToDevice(torch.device("cuda"), non_blocking=True)]
    with pytest.raises(ValueError, match=r"pipeline 'label' copies batches to device='cuda' but CUDA is not available "
                                         r"here; use device='cpu'"):
        labels_loader(raw_beton, pipelines={"image": None, "label": ops})


def test_batch_larger_than_a_ranks_samples_is_refused(raw_beton: Path) -> None:
    n = len(read_beton(raw_beton)[1])
    per_rank = -(-n // 2)
    with pytest.raises(ValueError, match=rf"batch_size={per_rank + 1} is larger than the {per_rank} samples rank 1 "
                                         rf"of 2 gets per epoch \({n} in .*\), and drop_last=True drops that partial "
                                         rf"batch: every epoch would have 0 steps; use batch_size <= {per_rank},"):
        labels_loader(raw_beton, batch_size=per_rank + 1, order=QuasiRandomOrder(num_replicas=2, rank=1))
    assert len(labels_loader(raw_beton, batch_size=per_rank, order=QuasiRandomOrder(num_replicas=2, rank=1))) == 1
    assert len(labels_loader(raw_beton, batch_size=per_rank + 1, drop_last=False,
                             order=QuasiRandomOrder(num_replicas=2, rank=1))) == 1


# --------------------------------------------------------------------------- #
# epochs that advance without set_epoch
# --------------------------------------------------------------------------- #
def test_second_epoch_without_set_epoch_warns(raw_beton: Path) -> None:
    """JiT's single-process loop resumed at start_epoch=5 never calls set_epoch: it would replay epoch 0, 1, ..."""
    loader = labels_loader(raw_beton)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = [y.tolist() for y, in loader]  # "epoch 5" runs epoch 0: cannot be told from a fresh run
    with pytest.warns(UserWarning, match=r"JiTLoader starts epoch 1 but set_epoch was never called: .* a run resumed "
                                         r"at a later epoch is replaying epoch 0, 1, ...'s order and flips"):
        second = [y.tolist() for y, in loader]
    assert first != second and loader.sampler.epoch == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(loader)  # once per loader


@pytest.mark.parametrize("how", ["set_epoch", "load_state_dict", "sequential"])
def test_epochs_chosen_or_order_independent_do_not_warn(raw_beton: Path, how: str) -> None:
    order = SequentialOrder() if how == "sequential" else QuasiRandomOrder()
    loader = labels_loader(raw_beton, order=order)
    if how == "set_epoch":
        loader.set_epoch(0)
    elif how == "load_state_dict":
        loader.load_state_dict(loader.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            list(loader)
    assert loader.sampler.epoch == 3


# --------------------------------------------------------------------------- #
# a beton rewritten under a running loader
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("change", ["truncate", "same_size_rewrite", "replace"])
def test_beton_changed_under_the_loader_is_refused_at_the_next_epoch(raw_beton: Path, tmp_path: Path,
                                                                     change: str) -> None:
    """os_cache=False decoded a rewritten beton into wrong pixels, the epoch ending normally."""
    beton = tmp_path / "train.beton"
    shutil.copy(raw_beton, beton)
    loader = labels_loader(beton, os_cache=False)
    loader.set_epoch(0)
    first = [y.tolist() for y, in loader]
    data = beton.read_bytes()
    if change == "truncate":  # what `cp smaller.beton train.beton` does first
        beton.write_bytes(data[: len(data) // 2])
        match = rf"size {len(data)} -> {len(data) // 2}"
    elif change == "same_size_rewrite":
        stat = beton.stat()
        beton.write_bytes(data)
        os.utime(beton, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        match = r"mtime_ns \d+ -> \d+"
    else:  # a new file moved over it (another inode)
        other = tmp_path / "new.beton"
        shutil.copy(raw_beton, other)
        os.replace(other, beton)
        match = r"inode \d+ -> \d+"
    with pytest.raises(BetonMismatchError, match=rf"{beton} changed since this loader opened it \(.*{match}.*\): a "
                                                 r"beton rewritten under a running loader delivers wrong pixels"):
        list(loader)
    assert len(first) == len(loader)
