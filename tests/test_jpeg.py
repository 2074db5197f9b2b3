"""Exact JPEG decoding: jpg batches equal Pillow's decode of the stored bytes, pixel for pixel.

Kernel checks (status codes, bounds, threads) run on the synthetic betons; the
DataModule checks run on the synthetic betons and, when present, on every image of
the shared real ImageNet sample at 256 and 512 px, flip on and off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from io import BytesIO
from pathlib import Path

import numba
import numpy as np
import pytest
from PIL import Image

from jit_ffcv import jpeg
from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.ops import flip_mask
from tests.helpers.data import SMALL, pillow_images, read_beton, shared_sample
from writers.beton import read_payloads, write_beton, write_split
from writers.folder import scan_split

ROOT = Path(__file__).resolve().parents[1]
SEED = 3
GUARD = 0xAB


def expected_batches(reference: np.ndarray, order: list[int], seed: int, epoch: int, prob: float) -> np.ndarray:
    """``reference[order]`` with exactly the images ``flip_mask`` picks mirrored left-right."""
    out = reference[order].copy()
    flips = flip_mask(seed, epoch, np.array(order), prob)
    out[flips] = out[flips][:, :, ::-1]
    return out


def delivered(loader, epoch: int) -> tuple[list[int], np.ndarray]:  # type: ignore[no-untyped-def]
    """(sampler order, all images as N,H,W,3 uint8) of one epoch of a JiTLoader."""
    loader.set_epoch(epoch)
    order = list(loader.sampler)
    images = [x.permute(0, 2, 3, 1).numpy().copy() for x, _ in loader]
    return order, np.concatenate(images)


def datamodule(beton: Path, tmp_path: Path, **kwargs: object) -> JiTDataModule:
    """A DataModule on an existing train beton (no val, nothing to write)."""
    size = int(Image.open(BytesIO(read_payloads(beton, limit=1)[0][0])).size[0])
    options: dict = dict(data_path=str(tmp_path), train_beton=str(beton), img_size=size, batch_size=4, num_workers=2,
                         seed=SEED, mode="jpg", quality=90)
    options.update(kwargs)
    dm = JiTDataModule(**options)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def guarded(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(buffer filled with GUARD, its HxWx3 view starting at byte 16): detects writes out of bounds."""
    buffer = np.full(height * width * 3 + 32, GUARD, dtype=np.uint8)
    return buffer, buffer[16 : 16 + height * width * 3].reshape(height, width, 3)


# --------------------------------------------------------------------------- #
# the kernel
# --------------------------------------------------------------------------- #
def test_decode_rgb_equals_pillow_and_fast_is_opt_in(jpg_beton: Path) -> None:
    payloads, _ = read_payloads(jpg_beton)
    reference = pillow_images(jpg_beton)
    fast_differs = 0
    for payload, ref in zip(payloads, reference, strict=True):
        src = np.frombuffer(payload, dtype=np.uint8)
        buffer, dst = guarded(SMALL, SMALL)
        assert jpeg.decode_rgb(src, dst, 0) == jpeg.OK
        assert np.array_equal(dst, ref)
        assert np.all(buffer[:16] == GUARD) and np.all(buffer[-16:] == GUARD)
        assert jpeg.decode_rgb(src, dst, jpeg.decode_flags("fast")) == jpeg.OK
        fast_differs += not np.array_equal(dst, ref)
    assert fast_differs > 0  # the fast IDCT is not Pillow's decode


def test_fast_decode_is_ffcvs_decode(jpg_beton: Path) -> None:
    """The opt-in fast decode gives exactly the pixels FFCV's own decoder gives."""
    ffcv_images, _ = read_beton(jpg_beton)
    payloads, _ = read_payloads(jpg_beton)
    dst = np.empty((SMALL, SMALL, 3), dtype=np.uint8)
    for payload, ffcv in zip(payloads, ffcv_images, strict=True):
        assert jpeg.decode_rgb(np.frombuffer(payload, dtype=np.uint8), dst, jpeg.TJFLAG_FASTDCT) == jpeg.OK
        assert np.array_equal(dst, ffcv)


def test_bad_inputs_return_a_status_and_write_nothing_out_of_bounds(jpg_beton: Path) -> None:
    payload = read_payloads(jpg_beton, limit=1)[0][0]
    src = np.frombuffer(payload, dtype=np.uint8)
    # a JPEG of another size: nothing written at all
    for height, width in ((SMALL // 2, SMALL // 2), (SMALL, SMALL + 1), (SMALL * 2, SMALL * 2)):
        buffer, dst = guarded(height, width)
        assert jpeg.decode_rgb(src, dst, 0) == jpeg.SIZE_MISMATCH
        assert np.all(buffer == GUARD)
    # not a JPEG, empty, bad start marker: nothing written
    no_soi = src.copy()
    no_soi[1] = 0  # FF D8 -> FF 00
    for bad in (np.zeros(500, dtype=np.uint8), np.zeros(0, dtype=np.uint8), no_soi):
        buffer, dst = guarded(SMALL, SMALL)
        assert jpeg.decode_rgb(bad, dst, 0) == jpeg.NOT_A_JPEG
        assert np.all(buffer == GUARD)
    # truncated scan data: reported as corrupt, writes stay inside the destination
    buffer, dst = guarded(SMALL, SMALL)
    scan_start = bytes(src).index(b"\xff\xda")  # SOS: cut the entropy-coded data, keep the whole header
    assert jpeg.decode_rgb(src[: scan_start + (len(src) - scan_start) // 2].copy(), dst, 0) == jpeg.CORRUPT
    assert np.all(buffer[:16] == GUARD) and np.all(buffer[-16:] == GUARD)
    # a destination TurboJPEG cannot fill row by row
    wide = np.full((SMALL, 2 * SMALL, 3), GUARD, dtype=np.uint8)
    assert jpeg.decode_rgb(src, wide[:, ::2], 0) == jpeg.BAD_DESTINATION
    assert np.all(wide == GUARD)
    assert jpeg.decode_rgb(src, np.empty((SMALL, SMALL, 4), dtype=np.uint8), 0) == jpeg.BAD_DESTINATION


@numba.njit(parallel=True)
def _decode_all(flat: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> np.ndarray:
    """decode_rgb from numba prange threads, as FFCV's parallel decode calls it."""
    status = np.empty(len(out), dtype=np.int32)
    for i in numba.prange(len(out)):
        status[i] = jpeg.decode_rgb(flat[offsets[i] : offsets[i + 1]], out[i], 0)
    return status


def test_decode_is_thread_safe(jpg_beton: Path) -> None:
    payloads, _ = read_payloads(jpg_beton)
    payloads = payloads * 20  # 400 decodes spread over the numba threads
    reference = np.concatenate([pillow_images(jpg_beton)] * 20)
    flat = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    offsets = np.cumsum([0] + [len(p) for p in payloads]).astype(np.int64)
    out = np.empty((len(payloads), SMALL, SMALL, 3), dtype=np.uint8)
    assert np.array_equal(_decode_all(flat, offsets, out), np.zeros(len(payloads), dtype=np.int32))
    assert np.array_equal(out, reference)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])  # our orders pass int64, FFCV's SEQUENTIAL uint64
def test_failure_message_names_the_sample(dtype: type) -> None:
    jpeg.raise_on_failure(np.zeros(3, dtype=np.int32), np.array([4, 5, 6], dtype=dtype))  # all decoded: no error
    statuses = np.array([0, jpeg.CORRUPT, jpeg.NOT_A_JPEG], dtype=np.int32)
    with pytest.raises(RuntimeError) as err:
        jpeg.raise_on_failure(statuses, np.array([4, 1234567, 6], dtype=dtype))
    assert str(err.value) == ("cannot decode the JPEG of sample 1234567: the JPEG data is corrupt or truncated; "
                              "check the beton with `jit-ffcv info BETON --verify` or write it again")


def test_decode_option_is_validated() -> None:
    assert jpeg.decode_flags("accurate") == 0 and jpeg.decode_flags("fast") == jpeg.TJFLAG_FASTDCT
    with pytest.raises(ValueError, match=r"jpeg_decode must be one of \('accurate', 'fast'\), got 'exact'"):
        jpeg.decode_flags("exact")
    with pytest.raises(ValueError, match="jpeg_decode must be one of"):
        JiTDataModule("/nonexistent", jpeg_decode="slow")  # type: ignore[arg-type]


def test_missing_library_says_what_to_install() -> None:
    with pytest.raises(ImportError, match=r"libturbojpeg.*apt-get install libturbojpeg0"):
        jpeg.load_turbojpeg(("libturbojpeg-missing.so.9", "turbojpeg_missing"))


# --------------------------------------------------------------------------- #
# through the DataModule: synthetic betons (always available)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("prob", [0.5, 0.0])
def test_datamodule_batches_equal_pillow(jpg_beton: Path, tmp_path: Path, prob: float) -> None:
    reference = pillow_images(jpg_beton)
    assert not np.array_equal(reference, read_beton(jpg_beton)[0])  # FFCV's own decode differs from Pillow's
    loader = datamodule(jpg_beton, tmp_path, flip_prob=prob).train_dataloader()
    for epoch in (0, 1):
        order, images = delivered(loader, epoch)
        assert sorted(order) == list(range(len(reference)))
        flips = flip_mask(SEED, epoch, np.array(order), prob)
        assert (0 < flips.sum() < len(order)) if prob else not flips.any()
        assert np.array_equal(images, expected_batches(reference, order, SEED, epoch, prob))


def test_fast_decode_is_opt_in_and_equals_ffcvs(jpg_beton: Path, tmp_path: Path) -> None:
    ffcv_images, _ = read_beton(jpg_beton)
    order, images = delivered(datamodule(jpg_beton, tmp_path, jpeg_decode="fast").train_dataloader(), 0)
    assert np.array_equal(images, expected_batches(ffcv_images, order, SEED, 0, 0.5))
    assert not np.array_equal(images, expected_batches(pillow_images(jpg_beton), order, SEED, 0, 0.5))


def test_val_loader_decodes_exactly(synthetic, jpg_beton: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    val = tmp_path / "val_64_jpg90.beton"
    write_split(synthetic.root, "val", val, img_size=SMALL, mode="jpg", quality=90, num_workers=0, progress=False)
    dm = datamodule(jpg_beton, tmp_path, val_beton=str(val), flip_prob=1.0)
    order, images = delivered(dm.val_dataloader(), 0)
    assert order == [0, 1, 2, 3]
    assert np.array_equal(images, pillow_images(val))  # sequential, never flipped, exact


CORRUPT_SCRIPT = """
import os, sys, threading
from writers.ffcv_api import IntDecoder, Loader
from ffcv.loader import OrderOption
from jit_ffcv.ops import EpochCell, FlipDecoder

def report(args):  # the error surfaced in FFCV's decode thread
    print("ERROR", args.exc_value, flush=True)
    os._exit(3)

threading.excepthook = report
loader = Loader(sys.argv[1], batch_size=8, num_workers=2, order=OrderOption.SEQUENTIAL, drop_last=False,
                pipelines={"image": [FlipDecoder(flip_prob=0.5, epoch_cell=EpochCell())], "label": [IntDecoder()]})
try:
    batches = sum(1 for _ in loader)
except Exception as exc:  # the error surfaced in the consumer
    print("ERROR", exc, flush=True)
    sys.exit(3)
print("DECODED", batches, "batches", flush=True)
"""


def test_corrupt_payload_raises_naming_the_sample(jpg_beton: Path, tmp_path: Path) -> None:
    """A payload whose JPEG header is broken is an error naming sample 7, not garbage pixels or a crash."""
    from writers.ffcv_api import Reader

    beton = tmp_path / "corrupt.beton"
    shutil.copy(jpg_beton, beton)
    pointer = int(Reader(str(beton)).metadata["f0"]["data_ptr"][7])
    with open(beton, "r+b") as f:
        f.seek(pointer)
        f.write(b"\x00\x00")  # the SOI marker
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CORRUPT_SCRIPT), str(beton)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert ("ERROR cannot decode the JPEG of sample 7: the payload is not a readable JPEG (bad header); check the "
            "beton with `jit-ffcv info BETON --verify` or write it again") in proc.stdout


# --------------------------------------------------------------------------- #
# through the DataModule: every image of the real ImageNet sample
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="session")
def real_betons(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """jpg q90 betons of the shared sample's 300 real images at 256 and 512 px (written once)."""
    scan = scan_split(shared_sample() / "train")
    out = tmp_path_factory.mktemp("real")
    betons = {}
    for size in (256, 512):
        betons[size] = out / f"train_{size}_jpg90.beton"
        write_beton(scan, betons[size], img_size=size, mode="jpg", quality=90, num_workers=2, progress=False)
    return betons


@pytest.mark.parametrize("size", [256, 512])
def test_real_images_equal_pillow_flip_on_and_off(real_betons: dict[int, Path], tmp_path: Path, size: int) -> None:
    reference = pillow_images(real_betons[size])
    assert len(reference) == 300
    for prob in (0.5, 0.0):
        loader = datamodule(real_betons[size], tmp_path, flip_prob=prob, batch_size=50).train_dataloader()
        order, images = delivered(loader, 0)
        assert sorted(order) == list(range(300))
        assert np.array_equal(images, expected_batches(reference, order, SEED, 0, prob)), (size, prob)
