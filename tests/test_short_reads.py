"""A beton truncated or rewritten under a running ``os_cache=False`` loader is an error naming it (issue 18, 2)."""

from __future__ import annotations

import os
from pathlib import Path
from queue import Queue

import numpy as np
import pytest

from jit_ffcv.checksum import ChecksumError, bind_checksums
from jit_ffcv.epoch import LoaderThreadError
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import FlipDecoder
from jit_ffcv.traversal import SequentialOrder
from writers.beton_file import partial_beton
from writers.ffcv_api import BetonReadError, IntDecoder, PageReader, Reader

PAGE = 2**21  # FFCV's smallest page: a 24 MiB beton has 12 pages, read lazily as the epoch advances
SIZE = 64
SAMPLES = 2000


@pytest.fixture(scope="module")
def paged_beton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2000 raw 64 px samples of seeded noise on 2 MiB pages, ImageFolder index = stored id."""
    out = tmp_path_factory.mktemp("paged") / "paged.beton"
    rng = np.random.default_rng(0)
    with partial_beton(out, SAMPLES, "raw", 90, page_size=PAGE) as beton:
        for i in range(SAMPLES):
            beton.append(rng.integers(0, 256, SIZE * SIZE * 3, dtype=np.uint8).tobytes(), i % 4, SIZE, i)
    beton.path.rename(out)
    return out


def first_batch_then(beton: Path, change: str, tmp_path: Path, *, os_cache: bool = False,
                     verify: bool = False) -> BaseException:
    """Iterate a copy of ``beton`` lazily, apply ``change`` after the first batch; the error the epoch ends with."""
    copy = tmp_path / beton.name
    copy.write_bytes(beton.read_bytes())
    loader = JiTLoader(str(copy), batch_size=16, num_workers=1, order=SequentialOrder(), drop_last=False,
                       os_cache=os_cache, batches_ahead=1, pin_memory=False,
                       pipelines={"image": [FlipDecoder(flip_prob=0.0)], "label": [IntDecoder()], "index": None,
                                  "checksum": None})
    bind_checksums(loader.pipeline_specs, loader.reader, verify)
    batches = iter(loader)
    next(batches)
    if change == "truncate":
        os.truncate(copy, 3 * PAGE)
    else:  # rewritten in place, same size: the last page's bytes replaced
        with open(copy, "r+b") as f:
            f.seek(-PAGE, os.SEEK_END)
            f.write(bytes(PAGE))
    with pytest.raises(LoaderThreadError) as failure:
        for _ in batches:
            pass
    return failure.value.__cause__


def test_truncated_under_a_running_loader(paged_beton: Path, tmp_path: Path) -> None:
    error = first_batch_then(paged_beton, "truncate", tmp_path)
    assert isinstance(error, BetonReadError)
    assert str(error) == (f"{tmp_path / paged_beton.name}: the file changed (size {paged_beton.stat().st_size} -> "
                          f"{3 * PAGE}) while this loader read it: it was truncated or rewritten under a running job; "
                          f"restore the beton and restart")


def test_a_short_page_read_is_an_error(paged_beton: Path, tmp_path: Path) -> None:
    """Truncated before the reader opened it (after the epoch start's check): the read itself comes back short."""
    short = tmp_path / "short.beton"
    short.write_bytes(paged_beton.read_bytes()[: 3 * PAGE + 100])
    queries: Queue = Queue()
    loaded: Queue = Queue()
    for query in ((2, 0), (3, 1), None):
        queries.put(query)
    PageReader(str(short), queries, loaded, np.zeros((2, PAGE), dtype=np.uint8)).run()  # in this thread
    assert loaded.get_nowait() == 2
    error = loaded.get_nowait()
    assert isinstance(error, BetonReadError) and str(error).startswith(
        f"{short}: page 3 came back short (100 of {PAGE} bytes at offset {3 * PAGE}) while this loader read it")


@pytest.mark.parametrize("verify", [False, True])
def test_rewritten_in_place_under_a_running_loader(paged_beton: Path, tmp_path: Path, verify: bool) -> None:
    """The page reader sees the change before any byte reaches the decoder, checksums verified or not."""
    error = first_batch_then(paged_beton, "rewrite", tmp_path, verify=verify)
    assert isinstance(error, BetonReadError)
    size = paged_beton.stat().st_size
    assert str(error).startswith(f"{tmp_path / paged_beton.name}: the file changed (size {size} -> {size}) while")


def test_rewritten_in_place_under_mmap_fails_the_checksum(paged_beton: Path, tmp_path: Path) -> None:
    """``os_cache=True`` maps the file: the new bytes are read as they are, and the first changed sample fails."""
    error = first_batch_then(paged_beton, "rewrite", tmp_path, os_cache=True, verify=True)
    reader = Reader(str(paged_beton))
    ptrs = reader.metadata["f0"]["data_ptr"].astype(np.int64)
    zeroed = paged_beton.stat().st_size - PAGE  # the rewrite zeroed the file's last PAGE bytes
    first = int(np.flatnonzero(ptrs + SIZE * SIZE * 3 > zeroed)[0])
    assert isinstance(error, ChecksumError)
    assert str(error).startswith(f"sample {first} of {tmp_path / paged_beton.name}: its stored bytes do not match")
