"""Tests for jit_ffcv.order: sharding contract, determinism, page locality, FFCV integration."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jit_ffcv.locality import max_open_pages, pages_touched
from jit_ffcv.order import KINDS, epoch_order
from jit_ffcv.traversal import QuasiRandomOrder, RandomOrder, SequentialOrder

SEED = 1234
SHUFFLED = ("quasi_random", "random")


def make_pages(n: int, layout: str) -> np.ndarray:
    """Page of each sample id 0..n-1: pages of 10, or uneven page sizes 1..17."""
    if layout == "uniform10":
        return np.arange(n, dtype=np.int64) // 10
    sizes = (np.arange(n) * 7) % 17 + 1  # deterministic, uneven
    return np.repeat(np.arange(len(sizes)), sizes)[:n].astype(np.int64)


def all_ranks(n: int, world: int, kind: str, epoch: int, drop_last: bool = False,
              pages: np.ndarray | None = None, indices: np.ndarray | None = None,
              buffer_pages: int = 4, seed: int = SEED) -> list[np.ndarray]:
    """epoch_order for every rank of a world."""
    indices = np.arange(n) if indices is None else indices
    pages = make_pages(len(indices), "uniform10") if pages is None else pages
    return [
        epoch_order(pages, indices, kind=kind, num_replicas=world, rank=r, seed=seed,
                    epoch=epoch, drop_last=drop_last, buffer_pages=buffer_pages)
        for r in range(world)
    ]


# --------------------------------------------------------------------------- #
# sharding contract
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("layout", ["uniform10", "uneven"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [1, 7, 100, 1003])
def test_sharding_properties(n: int, world: int, drop_last: bool, kind: str, layout: str) -> None:
    pages = make_pages(n, layout)
    per_rank = n // world if drop_last else math.ceil(n / world)
    for epoch in range(3):
        orders = all_ranks(n, world, kind, epoch, drop_last, pages=pages)
        assert all(o.dtype == np.int64 and len(o) == per_rank for o in orders)
        flat = np.concatenate(orders)
        assert set(flat.tolist()) <= set(range(n))
        if drop_last:
            assert len(set(flat.tolist())) == len(flat) == n - n % world
        else:
            assert set(flat.tolist()) == set(range(n))
            assert len(flat) - len(set(flat.tolist())) == per_rank * world - n


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 3, 8])
@pytest.mark.parametrize("kind", ["random", "sequential"])
def test_global_sequence_independent_of_world(kind: str, world: int, drop_last: bool) -> None:
    """Ranks' chunks concatenate to the (padded / truncated) single-process sequence."""
    n = 103
    (single,) = all_ranks(n, 1, kind, epoch=2)
    per_rank = n // world if drop_last else math.ceil(n / world)
    expected = np.resize(single, per_rank * world)  # cyclic padding, or truncation
    assert np.array_equal(np.concatenate(all_ranks(n, world, kind, 2, drop_last)), expected)
    if kind == "sequential":
        assert np.array_equal(single, np.arange(n))


def test_padding_is_cyclic_when_n_smaller_than_pad() -> None:
    out = np.concatenate(all_ranks(3, 8, "sequential", 0))
    assert out.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert Counter(out.tolist()) == {0: 3, 1: 3, 2: 2}


@pytest.mark.parametrize("n, world", [(100, 3), (1003, 8), (7, 2)])
@pytest.mark.parametrize("kind", KINDS)
def test_dropped_samples_change_with_epoch(kind: str, n: int, world: int) -> None:
    dropped = [
        frozenset(range(n)) - frozenset(np.concatenate(all_ranks(n, world, kind, e, True)).tolist())
        for e in range(3)
    ]
    assert all(len(d) == n % world for d in dropped)
    if kind == "sequential":
        assert len(set(dropped)) == 1
    else:
        assert len(set(dropped)) >= 2


# --------------------------------------------------------------------------- #
# determinism
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("world, rank", [(1, 0), (3, 2)])
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_epoch_dependent(kind: str, world: int, rank: int) -> None:
    pages = make_pages(1003, "uneven")
    indices = np.arange(1003)

    def call(epoch: int, seed: int = SEED) -> np.ndarray:
        return epoch_order(pages, indices, kind=kind, num_replicas=world, rank=rank,
                           seed=seed, epoch=epoch, buffer_pages=8)

    assert np.array_equal(call(0), call(0))
    if kind == "sequential":
        assert np.array_equal(call(0), call(1))
        assert np.array_equal(call(0, seed=0), call(0, seed=1))
    else:
        assert not np.array_equal(call(0), call(1))
        assert not np.array_equal(call(0, seed=0), call(0, seed=1))


@pytest.mark.parametrize("kind", KINDS)
def test_independent_of_thread_count(kind: str) -> None:
    numba = pytest.importorskip("numba")
    torch = pytest.importorskip("torch")
    old_numba, old_torch = numba.get_num_threads(), torch.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)
            results.append(np.concatenate(all_ranks(1003, 3, kind, epoch=1)))
    finally:
        numba.set_num_threads(old_numba)
        torch.set_num_threads(old_torch)
    assert np.array_equal(results[0], results[1])


# --------------------------------------------------------------------------- #
# page locality
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("world, random_min", [(2, 90), (8, 50)])
def test_quasi_random_rank_touches_its_share_of_pages(world: int, random_min: int) -> None:
    pages = make_pages(1000, "uniform10")  # 100 pages of 10
    for epoch in range(3):
        for order in all_ranks(1000, world, "quasi_random", epoch, pages=pages):
            assert pages_touched(order, pages) <= 100 / world + 2
        for order in all_ranks(1000, world, "random", epoch, pages=pages):
            assert pages_touched(order, pages) > random_min  # ~100 * (1 - (1 - 1/W) ** 10)


def test_quasi_random_single_rank_is_a_local_permutation() -> None:
    pages = make_pages(1000, "uniform10")
    for epoch in range(3):
        (order,) = all_ranks(1000, 1, "quasi_random", epoch, pages=pages, buffer_pages=4)
        assert sorted(order.tolist()) == list(range(1000))
        assert max_open_pages(order, pages) <= 4 + 2
        # ...yet it is not page-sequential: neighbours usually come from different pages
        assert np.mean(pages[order][1:] == pages[order][:-1]) < 0.5
        (rand,) = all_ranks(1000, 1, "random", epoch, pages=pages)
        assert pages_touched(rand, pages) > 90
        assert max_open_pages(rand, pages) > 50


def test_default_buffer_bounds_open_pages_on_large_input() -> None:
    n, buffer_pages = 200_000, 64
    pages = np.arange(n) // 37
    order = epoch_order(pages, np.arange(n), kind="quasi_random", num_replicas=1, rank=0,
                        seed=0, epoch=0, buffer_pages=buffer_pages)
    assert max_open_pages(order, pages) <= buffer_pages + 2


def test_metrics_accept_mappings() -> None:
    order = np.array([3, 1, 2, 3, 0])
    page_of = {0: 0, 1: 1, 2: 1, 3: 2}
    assert pages_touched(order, page_of) == pages_touched(order, np.array([0, 1, 1, 2])) == 3
    assert max_open_pages(order, page_of) == 2  # page 2 open from pos 0 to 3, page 1 at pos 1-2
    assert max_open_pages(np.array([], dtype=np.int64), page_of) == 0


# --------------------------------------------------------------------------- #
# subsets
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_subset_indices(kind: str, world: int, drop_last: bool) -> None:
    subset = np.random.default_rng(0).permutation(np.arange(0, 1000, 3)).astype(np.uint64)
    pages = (subset // 10).astype(np.int64)
    orders = all_ranks(len(subset), world, kind, 1, drop_last, pages=pages, indices=subset)
    flat = set(np.concatenate(orders).tolist())
    assert flat <= set(subset.tolist())
    if drop_last:
        assert len(flat) == len(subset) - len(subset) % world
    else:
        assert flat == set(subset.tolist())
    if kind == "sequential" and world == 1:
        assert np.array_equal(orders[0], subset.astype(np.int64))


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #
GOOD = dict(kind="random", num_replicas=2, rank=0, seed=0, epoch=0, drop_last=False, buffer_pages=4)


@pytest.mark.parametrize("override, option", [
    ({"rank": 2}, r"rank must .*\[0, num_replicas=2\).*got 2"),
    ({"rank": -1}, "rank"),
    ({"num_replicas": 0}, r"num_replicas .*>= 1.*got 0"),
    ({"kind": "shuffle"}, r"kind must be one of \('quasi_random', 'random', 'sequential'\), got 'shuffle'"),
    ({"buffer_pages": 0}, "buffer_pages"),
    ({"seed": -1}, "seed"),
    ({"epoch": 1.5}, "epoch"),
    ({"drop_last": "yes"}, "drop_last"),
])
def test_epoch_order_validation(override: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        epoch_order(np.zeros(10, dtype=np.int64), np.arange(10), **{**GOOD, **override})


def test_epoch_order_validates_lengths_and_dtypes() -> None:
    with pytest.raises(ValueError, match="sample_pages"):
        epoch_order(np.zeros(9, dtype=np.int64), np.arange(10), **GOOD)
    with pytest.raises(ValueError, match="indices"):
        epoch_order(np.zeros(10, dtype=np.int64), np.linspace(0, 1, 10), **GOOD)


@pytest.mark.parametrize("cls, kwargs, option", [
    (QuasiRandomOrder, {"num_replicas": 2, "rank": 2}, "rank"),
    (RandomOrder, {"num_replicas": 0}, "num_replicas"),
    (SequentialOrder, {"rank": -1}, "rank"),
    (QuasiRandomOrder, {"buffer_pages": 0}, "buffer_pages"),
    (RandomOrder, {"drop_last": None}, "drop_last"),
])
def test_class_validation(cls: type, kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        cls(**kwargs)


# --------------------------------------------------------------------------- #
# binding (fake loader) and real FFCV Loader
# --------------------------------------------------------------------------- #
def fake_loader(n: int, batch_size: int = 4, seed: int = 7) -> SimpleNamespace:
    page_size = 1 << 21
    rows = [(i, (i // 10 + k) * page_size, 8) for i in range(n) if i % 13 for k in (1, 0)]  # some samples page-less
    alloc_table = np.array(rows, dtype=[("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
    return SimpleNamespace(indices=np.arange(n, dtype=np.uint64), seed=seed, distributed=False,
                           batch_size=batch_size,
                           reader=SimpleNamespace(num_samples=n, page_size=page_size, alloc_table=alloc_table))


@pytest.mark.parametrize("cls", [QuasiRandomOrder, RandomOrder, SequentialOrder])
def test_call_binds_a_copy(cls: type) -> None:
    config = cls(num_replicas=3, rank=1, drop_last=True)
    with pytest.raises(RuntimeError, match="config"):
        config.sample_order(0)
    a, b = config(fake_loader(100)), config(fake_loader(40, batch_size=2, seed=9))
    assert config.indices is None and not hasattr(a, "loader")  # the bound copy keeps no loader (no cycle)
    assert a is not config and a.seed == 7 and b.seed == 9
    assert (a.num_samples(), b.num_samples()) == (33, 13)
    assert len(a.sample_order(0)) == 33 and len(b.sample_order(5)) == 13
    # min page per sample; page-less samples get distinct negative pseudo-pages
    assert a.sample_pages[25] == 2 and a.sample_pages[0] < 0 and a.sample_pages[13] < 0
    assert a.sample_pages[0] != a.sample_pages[13]
    expected = epoch_order(a.sample_pages, a.indices, kind=cls.kind, num_replicas=3, rank=1,
                           seed=7, epoch=4, drop_last=True, buffer_pages=a.buffer_pages or 1)
    assert np.array_equal(a.sample_order(4), expected)
    if cls is QuasiRandomOrder:
        assert (a.buffer_pages, b.buffer_pages) == (8, 4)  # 2 * batch_size
        assert QuasiRandomOrder(buffer_pages=5)(fake_loader(10)).buffer_pages == 5
        assert config.buffer_pages is None


@pytest.fixture(scope="module")
def tiny_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Tiny:
        def __len__(self) -> int:
            return 50

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            return np.zeros((8, 8, 3), dtype=np.uint8), i

    path = tmp_path_factory.mktemp("beton") / "tiny.beton"
    DatasetWriter(str(path), {"image": RGBImageField(write_mode="raw"), "label": IntField()},
                  num_workers=1).from_indexed_dataset(Tiny())
    return path


def test_ffcv_loader_integration(tiny_beton: Path) -> None:
    from ffcv.fields.decoders import IntDecoder
    from ffcv.loader import Loader
    from ffcv.transforms import ToTensor

    config = QuasiRandomOrder(num_replicas=2, rank=1)
    loader = Loader(str(tiny_beton), batch_size=4, order=config, seed=3, drop_last=True,
                    pipelines={"image": None, "label": [IntDecoder(), ToTensor()]},
                    num_workers=1, os_cache=True)
    assert isinstance(loader.traversal_order, QuasiRandomOrder)
    assert loader.traversal_order is not config and config.indices is None
    assert len(loader) == math.ceil(50 / 2) // 4

    s2p = loader.memory_manager.sample_to_pages
    pages = np.array([min(s2p[i]) for i in range(50)], dtype=np.int64)
    for epoch in range(2):
        # FFCV reuses its output buffers (batches_ahead + 2 slots): copy each batch.
        labels = np.concatenate([batch[0].numpy().reshape(-1).copy() for batch in loader])
        expected = epoch_order(pages, np.arange(50), kind="quasi_random", num_replicas=2, rank=1,
                               seed=3, epoch=epoch, drop_last=False, buffer_pages=8)
        assert np.array_equal(labels, expected[:len(loader) * 4])


@pytest.mark.parametrize("num_pages", [6, 40, 60, 500])
def test_quasi_random_buffer_full_at_both_edges_and_bounded(num_pages: int) -> None:
    """First and last 32 samples come from ~20 of the B=32 buffered pages (not ~6), yet at most ~B are open.

    num_pages 40 and 60 (between B and 2B) have segments widened at both ends.
    """
    buffer_pages, per_page = 32, 50
    pages = np.arange(num_pages * per_page) // per_page
    (order,) = all_ranks(len(pages), 1, "quasi_random", 0, pages=pages, buffer_pages=buffer_pages)
    assert sorted(order.tolist()) == list(range(len(pages)))
    assert max_open_pages(order, pages) <= min(num_pages, buffer_pages + 2)
    for edge in (order[:32], order[-32:]):
        assert len(np.unique(pages[edge])) >= min(num_pages, 14)
