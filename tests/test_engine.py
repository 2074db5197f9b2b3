"""The decoding engine: whole batches on several threads give the same batches as one thread, in order.

Every batch of two epochs (images, flips, labels) must be identical for 1, 2 and 4 decoding
threads, more batches than buffer slots, with the OS cache and with FFCV's process cache (whose
page slots are reused while other threads may still read them), and with a slow consumer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jit_ffcv.epoch import slots_for
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import FlipDecoder, flip_mask
from jit_ffcv.page_schedule import in_flight_batches
from jit_ffcv.synthetic import make_image_folder
from jit_ffcv.traversal import QuasiRandomOrder, RandomOrder, SequentialOrder
from tests.helpers.data import pillow_images, read_beton
from writers.beton import write_split
from writers.ffcv_api import (
    DatasetWriter,
    IntDecoder,
    IntField,
    OrderOption,
    ProcessCacheManager,
    Reader,
    RGBImageField,
    ToTensor,
    compute_schedule,
)

B = 4  # samples per batch: 30 batches per epoch on the paged beton, 24 on the JPEG one
PAGED_N, PAGED_SIZE = 120, 256  # 192 KiB raw images on 2 MiB pages: 10 samples per page, 12 pages
THREADS = (1, 2, 4)


@pytest.fixture(scope="module")
def paged_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw beton on FFCV's smallest pages, label = sample index: every batch reads pages others may reuse."""
    path = tmp_path_factory.mktemp("engine") / "paged.beton"
    rng = np.random.default_rng(1)
    samples = [(rng.integers(0, 256, (PAGED_SIZE, PAGED_SIZE, 3), dtype=np.uint8), i) for i in range(PAGED_N)]
    writer = DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                           page_size=1 << 21, num_workers=1)
    writer.from_indexed_dataset(samples)
    return path


@pytest.fixture(scope="module")
def jpeg_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 JPEGs (varied sizes and modes, cropped to 64 px): the decode path with its per-thread scratch image."""
    folder = make_image_folder(tmp_path_factory.mktemp("engine_jpg"), per_class=24, broken=False, val=False)
    out = folder.root / "train.beton"
    write_split(folder.root, "train", out, img_size=64, mode="jpg", quality=90, num_workers=0, progress=False)
    return out


def epochs_of(beton: Path, workers: int, *, order: Any, os_cache: bool = True, ahead: int = 3,
              consumer_s: float = 0.0) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Every batch (copied) of epochs 0 and 1: images flipped by a seeded FlipDecoder that writes CHW, sample ids.

    The ids are the stored ``index`` field where the beton has one (jit-ffcv's writer), else the label.
    """
    ids = "index" if "index" in Reader(str(beton)).field_names else "label"
    pipelines: dict[str, Any] = {"image": [FlipDecoder(flip_prob=0.5, seed=5, chw=True), ToTensor()],
                                 "label": None, ids: [IntDecoder(), ToTensor()]}
    loader = JiTLoader(str(beton), batch_size=B, num_workers=workers, batches_ahead=ahead, os_cache=os_cache,
                       order=order, seed=3, drop_last=False, pipelines=pipelines, pin_memory=False)
    out = {}
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = []
        for x, y in loader:
            batches.append((x.numpy().copy(), y.numpy().reshape(-1).copy()))
            time.sleep(consumer_s)  # a slow consumer: the threads fill every slot and wait for releases
        out[epoch] = batches
    return out


def assert_same(got: dict, expected: dict, what: str) -> None:
    for epoch, batches in expected.items():
        assert len(got[epoch]) == len(batches), what
        for b, ((x, y), (ex, ey)) in enumerate(zip(got[epoch], batches, strict=True)):
            assert np.array_equal(y, ey), f"{what}: epoch {epoch} batch {b} labels"
            assert np.array_equal(x, ex), f"{what}: epoch {epoch} batch {b} pixels"


@pytest.mark.parametrize("os_cache", [True, False])
@pytest.mark.parametrize("kind", ["random", "quasi_random", "sequential"])
def test_raw_batches_are_identical_for_any_thread_count(paged_beton: Path, os_cache: bool, kind: str) -> None:
    images, labels = read_beton(paged_beton)
    order = {"random": RandomOrder(), "quasi_random": QuasiRandomOrder(buffer_pages=3),
             "sequential": SequentialOrder()}[kind]  # sequential: pages leave the cache every 2.5 batches
    one = epochs_of(paged_beton, 1, order=order, os_cache=os_cache)
    for epoch, batches in one.items():  # the one-thread batches are the stored images, flipped as hashed
        assert len(batches) == PAGED_N // B > slots_for(3, 4)
        index = np.concatenate([y for _, y in batches])
        assert sorted(index.tolist()) == list(range(PAGED_N))
        expected = images[index].copy()
        mask = flip_mask(5, epoch, index, 0.5)
        expected[mask] = expected[mask][:, :, ::-1]
        assert np.array_equal(np.concatenate([x for x, _ in batches]), expected.transpose(0, 3, 1, 2))
        assert np.array_equal(labels[index], index)
    for workers in THREADS[1:]:
        for ahead in (1, 3):
            assert_same(epochs_of(paged_beton, workers, order=order, os_cache=os_cache, ahead=ahead), one,
                        f"{workers} threads, batches_ahead={ahead}, os_cache={os_cache}, {kind}")


def test_jpeg_batches_are_identical_for_any_thread_count(jpeg_beton: Path) -> None:
    reference = pillow_images(jpeg_beton)  # Pillow's decode of each stored JPEG, in stored order
    one = epochs_of(jpeg_beton, 1, order=RandomOrder())
    for batches in one.values():  # every sample once (ids: the stored ImageFolder index)
        assert sorted(np.concatenate([y for _, y in batches]).tolist()) == list(range(len(reference)))
    for workers in THREADS[1:]:
        assert_same(epochs_of(jpeg_beton, workers, order=RandomOrder()), one, f"{workers} threads, jpg")
    sequential = epochs_of(jpeg_beton, 4, order=SequentialOrder())[1]
    expected = reference.copy()
    mask = flip_mask(5, 1, np.arange(len(reference)), 0.5)
    expected[mask] = expected[mask][:, :, ::-1]
    assert np.array_equal(np.concatenate([x for x, _ in sequential]), expected.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("os_cache", [True, False])
def test_slow_consumer_gets_the_same_batches(paged_beton: Path, os_cache: bool) -> None:
    """Threads run ahead until every slot is taken, then wait for releases: nothing is overwritten early."""
    one = epochs_of(paged_beton, 1, order=RandomOrder(), os_cache=os_cache, ahead=1)
    slow = epochs_of(paged_beton, 4, order=RandomOrder(), os_cache=os_cache, ahead=1, consumer_s=0.01)
    assert_same(slow, one, f"slow consumer, 4 threads, os_cache={os_cache}")


# --------------------------------------------------------------------------- #
# the process cache's page schedule with batches in flight
# --------------------------------------------------------------------------- #
def _reuse_violations(manager: Any, real: list[np.ndarray], scheduled: list[np.ndarray], lag: int) -> int:
    """Page slots FFCV's schedule hands to a new page while a batch up to ``lag`` before may still read the old one.

    A slot is reused when batch ``b`` starts; threads may still be decoding batches ``b - lag .. b - 1``.
    """
    pages = [set().union(*(manager.sample_to_pages[s] for s in batch.tolist())) for batch in scheduled]
    real_pages = [set().union(*(manager.sample_to_pages[s] for s in batch.tolist())) for batch in real]
    schedule = compute_schedule(pages)
    occupant: dict[int, int] = {}
    violations = 0
    for b in range(len(real)):
        for page in schedule.can_prefetch_at[b]:
            slot = schedule.page_to_slot[page]
            old = occupant.get(slot)
            if old is not None and old != page:
                violations += sum(old in real_pages[k] for k in range(max(0, b - lag), b + 1))
            occupant[slot] = page
    return violations


def test_page_slots_are_not_reused_under_a_batch_in_flight(paged_beton: Path) -> None:
    loader = JiTLoader(str(paged_beton), batch_size=B, num_workers=1, os_cache=False, order=SequentialOrder(),
                       seed=3, pipelines={"image": None, "label": [IntDecoder()]})
    manager = loader.memory_manager
    assert isinstance(manager, ProcessCacheManager)
    batches = [np.asarray(b) for b in np.array_split(loader.next_traversal_order(), PAGED_N // B)]
    lag = slots_for(3, 4)
    assert _reuse_violations(manager, batches, batches, lag) > 0  # FFCV's schedule assumes one batch at a time
    lagged = in_flight_batches(manager, batches, lag)
    assert _reuse_violations(manager, batches, lagged, lag) == 0
    for batch, scheduled in zip(batches, lagged, strict=True):
        assert np.array_equal(scheduled[: len(batch)], batch)  # each batch still needs its own samples
    os_loader = JiTLoader(str(paged_beton), batch_size=B, num_workers=1, order=OrderOption.SEQUENTIAL,
                          pipelines={"image": None, "label": [IntDecoder()]})
    assert in_flight_batches(os_loader.memory_manager, batches, lag) is batches  # the OS cache has no schedule


def test_engine_stress_trials_deliver_exact_batches() -> None:
    """60 random trials of tests/helpers/engine_stress.py (make stress runs 1,000): every batch exact, every failure
    after exactly the batches before it. Its control: without the page schedule's lag, 28 of 300 trials failed."""
    from tests.helpers.engine_stress import main

    assert main(["--trials", "60", "--seed", "5"]) == 0
