"""ImageNet-scale work: epoch orders unchanged by the faster code, bounded writer memory, ``bench --scale``.

The scale measurements themselves run in ``jit-ffcv bench --scale`` (minutes, 28 GB); these
tests check the same code at tiny N and assert no speed.
"""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from jit_ffcv import bench
from jit_ffcv.bench.scale_beton import build_scale_beton, imagenet_labels
from jit_ffcv.order import _dense_page_ids, _stable_argsort_small, epoch_order, epoch_orders
from jit_ffcv.synthetic import make_image_folder
from writers.beton import read_indices, read_payloads
from writers.beton_file import partial_beton
from writers.metadata import read_metadata
from writers.shuffle import sample_permutation


def _digest(order: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


def _layouts() -> dict[str, np.ndarray]:
    n = 50_003
    with_holes = np.arange(n) // 97
    with_holes[::101] = -1 - np.arange(len(with_holes[::101]))  # samples without a page (pseudo-pages)
    return {"sorted": np.arange(n) // 97, "unsorted": np.random.default_rng(7).integers(0, 600, n),
            "holes": with_holes, "many_pages": np.arange(70_001) * 3}  # > 2**16 pages: no 16-bit radix sort


#: sha256[:16] of the orders computed by the implementation before the speed-up (np.unique + 64-bit argsort)
OLD_ORDERS = {
    ("sorted", 1): "21bf0158eda46d02", ("sorted", 3): "86df0d9c2119f9ff", ("sorted", 8): "6d0cb9ec2f6fbe50",
    ("sorted", "all8"): "6b24df396a58fb82",
    ("unsorted", 1): "8f09d893abc2845b", ("unsorted", 3): "3fec79a01c32a658", ("unsorted", 8): "fed9815632148f2e",
    ("unsorted", "all8"): "2e3832299f657981",
    ("holes", 1): "43e6f756b92db22b", ("holes", 3): "3a2f87cd868ee01d", ("holes", 8): "133b26a53a5b42df",
    ("holes", "all8"): "2b9956d1a8f8555c",
    ("many_pages", 1): "254a85679257a9e0", ("many_pages", 3): "f4f9802531692264",
    ("many_pages", 8): "3f960d2277172fe6", ("many_pages", "all8"): "33c26dde0744da98",
}


@pytest.mark.parametrize("layout", ["sorted", "unsorted", "holes", "many_pages"])
def test_quasi_random_orders_are_those_of_the_old_implementation(layout: str) -> None:
    pages = _layouts()[layout]
    indices = np.arange(len(pages))[::-1].copy()
    opts = dict(kind="quasi_random", seed=5, epoch=2, buffer_pages=16)
    for w in (1, 3, 8):
        assert _digest(epoch_order(pages, indices, num_replicas=w, rank=w - 1, **opts)) == OLD_ORDERS[(layout, w)]
    assert _digest(np.concatenate(epoch_orders(pages, indices, num_replicas=8, **opts))) == OLD_ORDERS[(layout, "all8")]


def test_sorted_pages_need_no_global_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sequentially written beton's pages are non-decreasing: page ids come from a running count."""
    pages = np.arange(10_000) // 37
    expected = epoch_order(pages, np.arange(10_000), kind="quasi_random", num_replicas=8, rank=7, seed=1, epoch=0)

    def no_unique(*args: object, **kwargs: object) -> None:
        raise AssertionError("np.unique over all samples called for sorted pages")

    monkeypatch.setattr(np, "unique", no_unique)
    got = epoch_order(pages, np.arange(10_000), kind="quasi_random", num_replicas=8, rank=7, seed=1, epoch=0)
    np.testing.assert_array_equal(got, expected)


def test_dense_page_ids_and_small_argsort_match_numpy() -> None:
    rng = np.random.default_rng(3)
    for pages in (np.sort(rng.integers(-5, 900, 5000)), rng.integers(0, 900, 5000), np.array([4]), np.zeros(0, int)):
        np.testing.assert_array_equal(_dense_page_ids(pages), np.unique(pages, return_inverse=True)[1].reshape(-1))
    for high in (7, 2**16, 2**20):
        keys = rng.integers(0, high, 20_000)
        np.testing.assert_array_equal(_stable_argsort_small(keys), np.argsort(keys, kind="stable"))


def test_writer_keeps_no_python_object_per_sample(tmp_path: Path) -> None:
    """FFCV's allocator kept a (sample, ptr, size) tuple per sample (~150 B); the table is preallocated."""
    n, payload = 20_000, bytes(range(200))
    with partial_beton(tmp_path / "m.beton", n, "jpg", 90) as beton:
        for i in range(100):
            beton.append(payload, 0, 64, i)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100, n):
            beton.append(payload, i % 7, 64, i)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    assert grown < 10 * n, f"writer memory grew {grown / n:.0f} B/sample"
    from writers.ffcv_api import Reader

    table = Reader(str(beton.path)).alloc_table
    np.testing.assert_array_equal(table["sample_id"], np.arange(n))
    np.testing.assert_array_equal(table["size"], np.full(n, 200))
    assert len(set(table["ptr"].tolist())) == n


def test_imagenet_labels_are_imagefolder_classes() -> None:
    labels = imagenet_labels(2500, 1000)
    np.testing.assert_array_equal(np.bincount(labels), [3] * 500 + [2] * 500)
    assert (np.diff(labels) >= 0).all()
    assert len(imagenet_labels(1_281_167)) == 1_281_167
    np.testing.assert_array_equal(np.bincount(imagenet_labels(1_281_167)), [1282] * 167 + [1281] * 833)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("scale_data"), num_classes=3, per_class=4, broken=False).root


def test_scale_beton_copies_payloads_in_the_writers_layout(tiny_source: Path, tmp_path: Path) -> None:
    from jit_ffcv.bench.scale_beton import source_beton

    src, _ = source_beton(str(tiny_source), tmp_path, 1)
    out = tmp_path / "scale.beton"
    meta = build_scale_beton(src, out, 3000)
    perm = sample_permutation(3000, 0)
    np.testing.assert_array_equal(read_indices(out), perm)
    payloads, labels = read_payloads(out)
    src_payloads, _ = read_payloads(src)
    assert payloads == [src_payloads[i % len(src_payloads)] for i in perm.tolist()]
    np.testing.assert_array_equal(labels, imagenet_labels(3000)[perm])
    assert (meta.num_samples, meta.sample_order, meta.shuffle_seed) == (3000, "shuffled", 0)
    assert meta.class_counts == [3] * 1000 and read_metadata(out).size_bytes == out.stat().st_size


def test_bench_scale_end_to_end(tiny_source: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:scale:start -->\nold\n<!-- bench:scale:end -->\noutro\n")
    out = tmp_path / "out"
    args = bench.parse_args(["--scale", "--scale-samples", "5000", "--scale-batches", "2", "--workers", "1",
                             "--data-path", str(tiny_source), "--out", str(out), "--readme", str(readme)])
    assert bench.main(args) == 0
    table = (out / "scale.md").read_text()
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:] if line.startswith("| ")]
    assert rows == [
        "build N=500", "writer peak RSS N=500", "build N=5,000", "writer peak RSS N=5,000",
        "writer memory per sample", "DataModule.setup()",
        "train_dataloader() (W=8, rank 7)", "quasi_random order of one epoch, W=1",
        "quasi_random order of one epoch, W=8", "quasi_random order of one epoch, W=64",
        "resume, same world W=8", "resume, elastic W=8->4", "loader peak RSS, os_cache=False",
        "loader peak RSS, os_cache=True", "pages per rank, W=1", "pages per rank, W=8", "pages per rank, W=64",
    ]
    assert "| loader peak RSS, os_cache=False |" in table and "2 batches of 128" in table
    expected = f"intro\n<!-- bench:scale:start -->\n{table.rstrip()}\n<!-- bench:scale:end -->\noutro\n"
    assert readme.read_text() == expected
    assert (out / "betons" / "imagenet_scale_5000.beton.build.json").exists()  # a rerun reuses beton + record


def test_header_check_does_not_sort_all_samples(jpg_beton: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """setup()'s header check compares each sample's size; np.unique (a sort) only to report a mismatch."""
    from jit_ffcv.betons import check_header

    meta = read_metadata(jpg_beton)

    def no_unique(*args: object, **kwargs: object) -> None:
        raise AssertionError("np.unique over all samples called for a matching header")

    monkeypatch.setattr(np, "unique", no_unique)
    check_header(jpg_beton, meta)
