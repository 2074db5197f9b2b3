"""Class mixing of the default order: simulated class-sorted ImageNet, a real beton, old betons."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jit_ffcv.locality import max_open_pages, pages_touched
from jit_ffcv.mixing import (
    FolderOrderWarning,
    class_mixing,
    distinct_per_batch,
    simulated_layout,
    uniform_distinct,
)
from jit_ffcv.order import epoch_order
from jit_ffcv.traversal import reader_sample_pages
from writers.beton import read_indices, read_payloads, write_split
from writers.beton_file import partial_beton
from writers.folder import scan_split
from writers.metadata import file_sha256, read_metadata, sidecar_path
from writers.shuffle import sample_permutation

BATCH = 128
BUFFER = 2 * BATCH  # the loader's default buffer_pages


# --------------------------------------------------------------------------- #
# the metric itself
# --------------------------------------------------------------------------- #
def test_distinct_per_batch_counts_exactly() -> None:
    labels = np.array([3, 3, 1, 0, 2, 2, 2, 2, 5])
    assert distinct_per_batch(labels, 4).tolist() == [3, 1]  # the partial batch [5] is dropped


def test_uniform_distinct_matches_closed_forms() -> None:
    assert uniform_distinct([5, 5], 10) == pytest.approx(2.0)  # a batch of everything
    assert uniform_distinct([3, 3, 3], 1) == pytest.approx(1.0)
    # 2 of 4 samples, classes of 2: both from one class with prob 2/6 -> 1 + 4/6 distinct
    assert uniform_distinct([2, 2], 2) == pytest.approx(1 + 4 / 6)
    # ImageNet-1k-like: 1 - (1 - 1/1000)^128 per class, up to sampling without replacement
    assert uniform_distinct([1281] * 1000, BATCH) == pytest.approx(1000 * (1 - (1 - 1e-3) ** BATCH), rel=2e-3)


def test_sample_permutation_is_seeded_and_validated() -> None:
    a = sample_permutation(1000, 0)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, sample_permutation(1000, 0)) and not np.array_equal(a, sample_permutation(1000, 1))
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(ValueError, match=r"shuffle_seed must be an integer >= 0 \(or None"):
            sample_permutation(10, bad)


# --------------------------------------------------------------------------- #
# simulated class-sorted ImageNet-1k (1,000 classes x 1,281), written like the writer does
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def imagenet() -> tuple[np.ndarray, np.ndarray]:
    return simulated_layout(1000, 1281, shuffle_seed=0)  # the writer's permutation, ~370 samples per page


def _ranks(world: int) -> list[int]:
    """Every rank up to W=8; first, last and evenly spread ones beyond (keeps the test in seconds)."""
    return list(range(world)) if world <= 8 else np.linspace(0, world - 1, 8).round().astype(int).tolist()


@pytest.mark.parametrize("world", [1, 8, 64])
def test_default_order_mixes_like_a_shuffle_in_every_batch_position(imagenet, world: int) -> None:
    labels, pages = imagenet
    stats = class_mixing(labels, pages, num_replicas=world, batch_size=BATCH, ranks=_ranks(world),
                         epochs=range(4) if world == 1 else range(1))
    assert len(stats.per_position) == -(-len(labels) // world) // BATCH
    assert stats.mean >= 0.95, stats.mean
    assert stats.worst >= 0.90, (stats.worst, int(np.argmin(stats.per_position)))
    assert min(stats.first, stats.last) >= 0.90, (stats.first, stats.last)
    if world == 8:
        assert stats.classes_seen >= 0.95, stats.classes_seen


@pytest.mark.parametrize("world", [1, 8, 64])
def test_default_order_keeps_page_locality(imagenet, world: int) -> None:
    labels, pages = imagenet
    total = int(pages[-1]) + 1
    for rank in sorted({0, world - 1}):
        order = epoch_order(pages, np.arange(len(labels)), kind="quasi_random", num_replicas=world, rank=rank,
                            seed=0, epoch=1, buffer_pages=BUFFER)
        assert pages_touched(order, pages) <= total / world + 2
        assert max_open_pages(order, pages) <= BUFFER + 2


def test_folder_order_buffer_is_full_at_both_edges() -> None:
    """Old class-sorted betons: the first and last batch of each rank draw from ~a buffer of pages.

    Before, the buffer filled page by page and drained at the end: the first batch came from
    ~13 pages (13 classes against a shuffle's 120).
    """
    labels, pages = simulated_layout(1000, 1281, shuffle_seed=None)
    for rank in (0, 7):
        order = epoch_order(pages, np.arange(len(labels)), kind="quasi_random", num_replicas=8, rank=rank,
                            seed=0, epoch=0, buffer_pages=BUFFER)
        for batch in (order[:BATCH], order[-BATCH:]):
            assert len(np.unique(pages[batch])) >= 90
            assert len(np.unique(labels[batch])) >= 80


# --------------------------------------------------------------------------- #
# a real beton written by the writer from a class-sorted folder
# --------------------------------------------------------------------------- #
CLASSES, PER_CLASS, SIZE = 40, 30, 128  # raw 128 px: 48 KiB per sample, ~170 per 8 MiB page, 7 pages


def _flat_folder(root: Path) -> Path:
    """``root/train/cNN/iNN.png``: tiny solid images whose colour encodes (class, image)."""
    for c in range(CLASSES):
        d = root / "train" / f"c{c:02d}"
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.new("RGB", (16, 16), (c * 6, i * 8, 7)).save(d / f"i{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def sorted_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _flat_folder(tmp_path_factory.mktemp("sorted"))


@pytest.fixture(scope="module")
def shuffled_beton(sorted_folder: Path) -> Path:
    out = sorted_folder / "train.beton"
    write_split(sorted_folder, "train", out, img_size=SIZE, mode="raw", num_workers=0, progress=False)
    return out


def test_real_beton_index_traces_back_to_files(sorted_folder: Path, shuffled_beton: Path) -> None:
    from ffcv.reader import Reader

    scan = scan_split(sorted_folder / "train")
    indices = read_indices(shuffled_beton)
    assert indices.tolist() == sample_permutation(CLASSES * PER_CLASS, 0).tolist()
    payloads, labels = read_payloads(shuffled_beton)
    assert labels.tolist() == [scan.samples[i][1] for i in indices]
    for payload, i in zip(payloads, indices, strict=True):
        path = Path(scan.samples[i][0])
        c, k = int(path.parent.name[1:]), int(path.stem[1:])
        assert payload[:3] == bytes((c * 6, k * 8, 7)), scan.samples[i][0]  # solid colour survives the crop
    meta = read_metadata(shuffled_beton)
    assert (meta.sample_order, meta.shuffle_seed) == ("shuffled", 0)
    assert int(reader_sample_pages(Reader(str(shuffled_beton))).max()) + 1 >= 6  # several pages


@pytest.mark.parametrize("world", [1, 2])
def test_real_beton_mixes_like_a_shuffle(shuffled_beton: Path, world: int) -> None:
    from ffcv.reader import Reader

    _, labels = read_payloads(shuffled_beton, limit=None)
    pages = reader_sample_pages(Reader(str(shuffled_beton)))
    stats = class_mixing(labels, pages, num_replicas=world, batch_size=16, buffer_pages=2, epochs=range(32))
    assert stats.mean >= 0.95 and stats.worst >= 0.90, (stats.mean, stats.worst)
    assert stats.classes_seen == 1.0


# --------------------------------------------------------------------------- #
# betons written before the shuffle (class order, no index field, no sample_order)
# --------------------------------------------------------------------------- #
def _old_style_copy(src: Path, out: Path) -> Path:
    """``src``'s samples in folder order, as the writer before this change stored them."""
    meta = read_metadata(src)
    payloads, labels = read_payloads(src)
    order = np.argsort(read_indices(src))
    with partial_beton(out, len(payloads), meta.mode, meta.quality or 90, index_field=False) as beton:
        for k in order.tolist():
            beton.append(payloads[k], int(labels[k]), meta.img_size)
    data = json.loads(meta.to_json())
    del data["sample_order"], data["shuffle_seed"]  # an old sidecar has no layout keys
    data["size_bytes"], data["sha256"] = beton.path.stat().st_size, file_sha256(beton.path)
    sidecar_path(out).write_text(json.dumps(data))
    beton.path.rename(out)
    return out


@pytest.fixture(scope="module")
def old_beton(shuffled_beton: Path) -> Path:
    return _old_style_copy(shuffled_beton, shuffled_beton.with_name("old.beton"))


def test_old_beton_still_loads_and_warns_once(sorted_folder: Path, old_beton: Path) -> None:
    from jit_ffcv.datamodule import JiTDataModule

    assert read_metadata(old_beton).sample_order == "folder" and read_indices(old_beton) is None
    dm = JiTDataModule(str(sorted_folder), img_size=SIZE, mode="raw", batch_size=16, num_workers=1,
                       train_beton=str(old_beton), num_replicas=1, rank=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
        dm.setup("validate")
    mixing = [w for w in caught if issubclass(w.category, FolderOrderWarning)]
    assert len(mixing) == 1
    text = str(mixing[0].message)
    assert "class-sorted" in text and "~44% of the classes per epoch at W=8" in text
    assert f"jit-ffcv write --data-path {sorted_folder.resolve()} --split train --img-size {SIZE} --mode raw " \
           f"--out {old_beton}" in text
    images, labels = next(iter(dm.train_dataloader()))
    assert tuple(images.shape) == (16, 3, SIZE, SIZE) and labels.shape == (16,)


def test_shuffled_beton_does_not_warn(sorted_folder: Path, shuffled_beton: Path) -> None:
    from jit_ffcv.datamodule import JiTDataModule

    dm = JiTDataModule(str(sorted_folder), img_size=SIZE, mode="raw", batch_size=16, num_workers=1,
                       train_beton=str(shuffled_beton), num_replicas=1, rank=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FolderOrderWarning)
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 2  # the index field is not decoded into the batches
