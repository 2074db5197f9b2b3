"""JiTLoader failure behaviour (thread errors, stale iterators, abandoned epochs) and batch layout."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import jit_ffcv.epoch
from jit_ffcv.loader import _allocate
from tests.helpers.data import read_beton
from tests.helpers.loader_child import BAD_INDEX, make_loader
from writers.ffcv_api import AllocationQuery, DatasetWriter, IntField, RGBImageField, SimpleRGBImageDecoder

pytestmark = pytest.mark.slow  # failure scenarios in child processes: `make test` runs it, `make check` does not

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).parent / "helpers" / "loader_child.py"
PAGED_N, PAGED_SIZE = 64, 256  # 192 KiB raw images on 2 MiB pages: about 10 samples (2.5 batches) per page


@pytest.fixture(scope="module")
def paged_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw beton on FFCV's smallest pages, labels = sample index: epochs read a new page every few batches."""
    path = tmp_path_factory.mktemp("paged") / "paged.beton"
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 256, (PAGED_SIZE, PAGED_SIZE, 3), dtype=np.uint8), i) for i in range(PAGED_N)]
    writer = DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                           page_size=1 << 21, num_workers=1)
    writer.from_indexed_dataset(samples)
    return path


def run_child(scenario: str, beton: Path, workers: int = 1, timeout: float = 120) -> dict[str, Any]:
    """Run a scenario of tests/helpers/loader_child.py; a hang fails the test at ``timeout`` instead of hanging it."""
    try:
        proc = subprocess.run([sys.executable, str(CHILD), scenario, str(beton), str(workers)],
                              capture_output=True, text=True,
                              timeout=timeout, cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"scenario {scenario!r} hung for {timeout} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- #
# failures in the decoding thread reach next()
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("workers", [1, 3])
def test_custom_op_error_reaches_next(paged_beton: Path, workers: int) -> None:
    result = run_child("op_error", paged_beton, workers)
    assert result["labels"] == [0, 1, 2, 3]  # batch 0 is delivered, batch 1 holds sample BAD_INDEX
    assert BAD_INDEX // 4 == 1
    assert result["type"] == "LoaderThreadError"
    assert "epoch 0 failed at batch 1" in result["message"] and "custom op failed on purpose" in result["message"]
    assert (result["cause"], result["cause_message"]) == ("ValueError", "custom op failed on purpose")
    assert "run_pipeline" in result["cause_traceback"]  # the thread's own traceback is chained
    assert result["seconds"] < 60  # includes numba compiling the pipeline


@pytest.mark.parametrize("workers", [1, 3])
def test_compile_error_in_the_thread_reaches_next(paged_beton: Path, workers: int) -> None:
    """A custom op numba cannot type fails to compile inside the decoding thread: the error reaches next()."""
    result = run_child("compile_error", paged_beton, workers)
    assert result["labels"] == [] and result["type"] == "LoaderThreadError"
    assert result["cause"] == "TypingError" and "not a number" in result["cause_message"]
    assert result["seconds"] < 60


# --------------------------------------------------------------------------- #
# two iterators, abandoned epochs
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("workers", [1, 3])
def test_stale_iterator_raises(paged_beton: Path, workers: int) -> None:
    result = run_child("stale", paged_beton, workers)
    assert result["first"] == [0, 1, 2, 3]
    assert sum(result["second"], []) == list(range(PAGED_N))  # the newer iterator runs its whole epoch
    assert result["type"] == "RuntimeError" and "ended by a newer iter(loader)" in result["message"]
    assert result["seconds"] < 1


@pytest.mark.parametrize("workers", [1, 3])
def test_abandoned_epochs_with_process_cache_do_not_stall(paged_beton: Path, workers: int) -> None:
    """os_cache=False, batches_ahead=4: each abandoned epoch used to cost a 10 s join and a stuck thread."""
    result = run_child("abandon", paged_beton, workers)
    # the first restart includes compiling; the others only wait for the batch being decoded (50 ms op)
    assert max(result["restart_seconds"][1:]) < 2.0, result["restart_seconds"]
    assert result["labels"] == list(range(4, PAGED_N))  # the 3rd epoch ran to the end (batch 0 was taken before)
    assert result["epoch"] == 3
    assert result["extra_threads"] == 0  # no page reader left behind
    assert result["decoders_busy"] == [False] * workers  # the loader's decoding threads, idle: no epoch left running


# --------------------------------------------------------------------------- #
# a consumer may hold two batches (Lightning prefetches one)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("workers", [1, 3])
def test_held_batch_survives_the_next_fetch(paged_beton: Path, workers: int) -> None:
    """Old slots (batches_ahead + 2) let the thread overwrite batch b - 1 as soon as batch b was taken."""
    images, _ = read_beton(paged_beton)
    loader = make_loader(str(paged_beton), [SimpleRGBImageDecoder()], batches_ahead=1, num_workers=workers)
    it = iter(loader)
    held = [next(it)]
    for b in range(1, PAGED_N // 4):
        held.append(next(it))  # batch b prefetched while batch b - 1 is still in use
        x, y = held.pop(0)
        time.sleep(0.02)  # the thread runs ahead meanwhile
        assert y.reshape(-1).tolist() == list(range(4 * (b - 1), 4 * b))
        assert np.array_equal(x.numpy(), images[4 * (b - 1): 4 * b].transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- #
# asynchronous GPU copies: a slot is not rewritten before the copy that reads it has run
# --------------------------------------------------------------------------- #
class PendingCopy:
    """Stands in for the CUDA event ``next()`` records: the GPU has not yet run the work queued before it."""

    def __init__(self, done: bool = False) -> None:
        self.done, self.waited = threading.Event(), threading.Event()
        if done:
            self.done.set()

    def synchronize(self) -> None:
        self.waited.set()
        if not self.done.wait(30):
            raise TimeoutError("PendingCopy was never completed")


@pytest.mark.parametrize("workers", [1, 3])
def test_slot_is_not_rewritten_while_a_gpu_copy_may_read_it(paged_beton: Path, monkeypatch: pytest.MonkeyPatch,
                                                            workers: int) -> None:
    """A consumer copies batch 0 with non_blocking=True and the GPU runs behind: slot 0 must wait for it."""
    images, _ = read_beton(paged_beton)
    events: list[PendingCopy] = []
    monkeypatch.setattr(jit_ffcv.epoch, "release_event",
                        lambda: events.append(PendingCopy(done=bool(events))) or events[-1])
    slots = jit_ffcv.epoch.slots_for(1, workers)  # 4 slots of 4 images with one thread, 6 with three
    loader = make_loader(str(paged_beton), [SimpleRGBImageDecoder()], batches_ahead=1, num_workers=workers)
    it = iter(loader)
    first, _ = next(it)  # batch 0, slot 0: its GPU copy is still queued (events[0] pending)
    for _ in range(slots - 1):
        next(it)  # batches 1 to slots - 1; asking for batch 2 recorded events[0], the release of batch 0
    assert events[0].waited.wait(10), "no thread asked whether slot 0 was free"
    time.sleep(0.3)  # a thread now wants slot 0 for batch `slots`
    assert np.array_equal(first.numpy(), images[0:4].transpose(0, 3, 1, 2))  # still batch 0
    events[0].done.set()  # the GPU catches up
    again, labels = next(it)
    assert labels.reshape(-1).tolist() == list(range(4 * slots, 4 * slots + 4))
    assert again.data_ptr() == first.data_ptr()  # same slot, rewritten only now
    assert np.array_equal(first.numpy(), images[4 * slots: 4 * slots + 4].transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- #
# pinning
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("pin", [True, False])
def test_buffers_are_pinned_only_when_asked(monkeypatch: pytest.MonkeyPatch, pin: bool) -> None:
    """With CUDA present FFCV pins every buffer; pin_memory=False must keep them pageable."""
    pinned = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(tuple(self.shape)) or self)
    _allocate(AllocationQuery((2, 3), np.dtype("uint8")), batch_size=4, slots=5, pin=pin)
    _allocate(AllocationQuery((7,), torch.float32), batch_size=4, slots=2, pin=pin)
    assert pinned == ([(5, 4, 2, 3), (4, 7), (4, 7)] if pin else [])
