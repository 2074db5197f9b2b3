"""Each sample's stored bytes are checked against the checksum written with them (issue 18, section 2)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jit_ffcv.checksum import ChecksumError, bind_checksums, checksum_column, payload_hash
from jit_ffcv.epoch import LoaderThreadError
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import FlipDecoder
from jit_ffcv.synthetic import SyntheticFolder
from jit_ffcv.traversal import SequentialOrder
from tests.helpers.data import SMALL, pillow_images, read_beton
from writers.beton_file import partial_beton
from writers.checksum import payload_checksum
from writers.ffcv_api import IntDecoder, Reader
from writers.metadata import SidecarError, classes_sha256, read_metadata, sidecar_path
from writers.publish import publish
from writers.readers import read_payloads

DAMAGED = 7  # the stored sample the tests damage


def loader_of(beton: Path, *, verify: bool = True, os_cache: bool = True, workers: int = 1) -> JiTLoader:
    """Sequential HWC loader of every sample, no flips, its checksums bound as the DataModule binds them."""
    loader = JiTLoader(str(beton), batch_size=8, num_workers=workers, order=SequentialOrder(), drop_last=False,
                       os_cache=os_cache, pin_memory=False,
                       pipelines={"image": [FlipDecoder(flip_prob=0.0, verify_checksums=verify)],
                                  "label": [IntDecoder()], "index": None, "checksum": None})
    bind_checksums(loader.pipeline_specs, loader.reader)
    return loader


def images_of(loader: JiTLoader) -> np.ndarray:
    """Every image of one epoch, copied out of the loader's reused buffers."""
    return np.concatenate([np.array(images) for images, _ in loader])


def checksum_failure(batches: object) -> str:
    """The :class:`ChecksumError` message behind the loader error that iterating ``batches`` raises."""
    with pytest.raises(LoaderThreadError) as failure:
        list(batches)  # type: ignore[call-overload]
    assert isinstance(failure.value.__cause__, ChecksumError), failure.value
    return str(failure.value.__cause__)


def payload_at(beton: Path, sample: int) -> tuple[int, int]:
    """(file offset, size) of a stored payload."""
    reader = Reader(str(beton))
    pointer = int(reader.metadata["f0"]["data_ptr"][sample])
    table = reader.alloc_table
    return pointer, int(table["size"][np.flatnonzero(table["ptr"] == pointer)[0]])


def entropy_coded(payload: bytes) -> tuple[int, int]:
    """(start, end) of a baseline JPEG's entropy-coded data: after the SOS segment, before EOI."""
    sos = payload.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(payload[sos + 2:sos + 4], "big")
    return start, payload.rindex(b"\xff\xd9")


def damaged_copy(beton: Path, tmp_path: Path, offset: int, width: int) -> Path:
    """A copy of ``beton`` (and its sidecar) with ``width`` bytes of sample DAMAGED's payload XORed at ``offset``."""
    out = tmp_path / beton.name
    shutil.copy(beton, out)
    shutil.copy(beton.with_name(beton.name + ".json"), out.with_name(out.name + ".json"))
    pointer, _ = payload_at(beton, DAMAGED)
    with open(out, "r+b") as f:
        f.seek(pointer + offset)
        old = f.read(width)
        f.seek(pointer + offset)
        f.write(bytes(b ^ 0x55 for b in old))
    return out


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 15, 16, 17, 100, 4099, 12288])
def test_writer_and_kernel_hash_agree(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    assert np.uint64(payload_checksum(data.tobytes()) % 2**64) == payload_hash(data)


def test_every_byte_flip_of_a_payload_changes_its_checksum() -> None:
    data = np.random.default_rng(5).integers(0, 256, 203, dtype=np.uint8)
    original = payload_hash(data)
    for i in range(data.size):
        for bit in range(8):
            data[i] ^= 1 << bit
            assert payload_hash(data) != original, (i, bit)
            data[i] ^= 1 << bit


def test_writer_stores_each_payloads_checksum(jpg_beton: Path) -> None:
    payloads, _ = read_payloads(jpg_beton)
    assert checksum_column(Reader(str(jpg_beton))).tolist() == [payload_checksum(p) for p in payloads]


@pytest.mark.parametrize(("where", "width"), [(0.5, 1), (0.25, 1), (0.75, 8)])
def test_flipped_bytes_in_a_jpegs_entropy_coded_data_raise(jpg_beton: Path, tmp_path: Path, where: float,
                                                            width: int) -> None:
    payload = read_payloads(jpg_beton)[0][DAMAGED]
    start, end = entropy_coded(payload)
    beton = damaged_copy(jpg_beton, tmp_path, start + int((end - start - width) * where), width)
    assert checksum_failure(loader_of(beton)) == (
        f"sample {DAMAGED} of {beton}: its stored bytes do not match the checksum written with them (1 such sample(s) "
        f"in this batch): the file was damaged or changed after it was written; check it with `jit-ffcv info BETON "
        f"--verify`, then copy or write it again")


@pytest.mark.parametrize(("os_cache", "workers"), [(True, 1), (False, 2)])  # both kernel variants, both caches
def test_a_flipped_byte_in_a_raw_payload_raises(raw_beton: Path, tmp_path: Path, os_cache: bool, workers: int) -> None:
    beton = damaged_copy(raw_beton, tmp_path, SMALL * SMALL * 3 // 2, 1)
    failure = checksum_failure(loader_of(beton, os_cache=os_cache, workers=workers))
    assert failure.startswith(f"sample {DAMAGED} of {beton}: ")


@pytest.mark.parametrize(("fixture", "verify", "checked"), [("jpg_beton", None, True), ("raw_beton", None, False),
                                                          ("raw_beton", True, True), ("jpg_beton", False, False)])
def test_datamodule_verifies_jpg_by_default_raw_train_on_request(
        fixture: str, verify: bool | None, checked: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Default: JPEG train betons are checked (under 1% of decode); raw train ones (about half the copy) on request."""
    from jit_ffcv.datamodule import JiTDataModule

    source = request.getfixturevalue(fixture)
    beton = damaged_copy(source, tmp_path, 100, 1)  # inside the JPEG's header, or a pixel
    mode = read_metadata(beton).mode
    dm = JiTDataModule(data_path=str(tmp_path), train_beton=str(beton), img_size=SMALL, batch_size=10, num_workers=1,
                       mode=mode, order="sequential", pin_memory=False, verify_checksums=verify)
    dm.setup("fit")
    if checked:
        assert checksum_failure(dm.train_dataloader()).startswith(f"sample {DAMAGED} of {beton}: ")
    else:  # unchecked, the damaged byte (a pixel, a JPEG quantisation table entry) is decoded without an error
        assert len(list(dm.train_dataloader())) == len(read_payloads(beton)[0]) // 10


def test_info_verify_names_the_damaged_samples(jpg_beton: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from jit_ffcv.cli import main

    payload = read_payloads(jpg_beton)[0][DAMAGED]
    start, end = entropy_coded(payload)
    beton = damaged_copy(jpg_beton, tmp_path, (start + end) // 2, 1)
    assert main(["info", str(jpg_beton), "--verify"]) == 0
    capsys.readouterr()
    assert main(["info", str(beton), "--verify"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"jit-ffcv: error: {beton}: 1 stored sample(s) fail their checksum (ids {DAMAGED}): the file was damaged or "
        f"changed after it was written; copy or write it again")


@pytest.mark.parametrize("fixture", ["raw_beton", "jpg_beton"])
def test_untouched_beton_decodes_exact_pixels_verified(fixture: str, request: pytest.FixtureRequest) -> None:
    beton = request.getfixturevalue(fixture)
    loader = loader_of(beton)
    assert loader.pipeline_specs["image"].decoder.checksums.size == read_metadata(beton).num_samples
    expected = pillow_images(beton) if fixture == "jpg_beton" else read_beton(beton)[0]  # exactly Pillow's pixels
    np.testing.assert_array_equal(images_of(loader), expected)


def test_verification_off_decodes_the_damaged_bytes(raw_beton: Path, tmp_path: Path) -> None:
    beton = damaged_copy(raw_beton, tmp_path, 0, 1)
    images = images_of(loader_of(beton, verify=False))
    expected = read_beton(raw_beton)[0].copy()
    expected[DAMAGED, 0, 0, 0] ^= 0x55
    np.testing.assert_array_equal(images, expected)


def test_beton_written_without_checksums_still_loads(raw_beton: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A beton as written before the field: no checksum field, decoded unverified, same pixels; info says so."""
    from jit_ffcv.cli import main

    payloads, labels = read_payloads(raw_beton)
    out = tmp_path / "old.beton"
    meta = read_metadata(raw_beton)
    with partial_beton(out, len(payloads), "raw", 90, checksum_field=False) as beton:
        for i, (payload, label) in enumerate(zip(payloads, labels.tolist(), strict=True)):
            beton.append(payload, label, SMALL, i)
    meta.size_bytes = beton.path.stat().st_size
    publish(beton.path, out, meta)
    assert Reader(str(out)).field_names == ["image", "label", "index"]
    loader = loader_of(out)
    assert not bind_checksums(loader.pipeline_specs, loader.reader)
    np.testing.assert_array_equal(images_of(loader), read_beton(raw_beton)[0])
    assert main(["info", str(out)]) == 0 and main(["info", str(raw_beton)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("checksums:")]
    assert lines == ["checksums:    none (written before jit-ffcv stored them): samples are decoded unverified; "
                     "write the beton again to have them checked",
                     "checksums:    one per sample (words64/1), checked before decoding (DataModule default: all but "
                     "raw train betons)"]


# --------------------------------------------------------------------------- the sidecar's class list
def sidecar_copy(beton: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of ``beton`` whose sidecar's JSON was changed by ``edit``."""
    out = tmp_path / beton.name
    shutil.copy(beton, out)
    data = json.loads(sidecar_path(beton).read_text())
    edit(data)
    sidecar_path(out).write_text(json.dumps(data))
    return out


def test_a_reordered_class_list_is_refused_also_by_info_verify(raw_beton: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from jit_ffcv.cli import main

    beton = sidecar_copy(raw_beton, tmp_path, lambda data: data["classes"].reverse())
    message = (f"{sidecar_path(beton)}: its class list does not match the digest written with it (classes_sha256): "
               f"the sidecar was edited or damaged, and labels would name the wrong classes; rewrite the beton with "
               f"`jit-ffcv write --force`")
    with pytest.raises(SidecarError) as error:
        read_metadata(beton)
    assert str(error.value) == message
    assert main(["info", str(beton), "--verify"]) == 1
    assert capsys.readouterr().err.strip() == f"jit-ffcv: error: {message}"


def test_sidecar_records_the_class_list_digest(raw_beton: Path) -> None:
    meta = read_metadata(raw_beton)
    digest = hashlib.sha256(json.dumps(meta.classes).encode()).hexdigest()
    assert json.loads(sidecar_path(raw_beton).read_text())["classes_sha256"] == digest == classes_sha256(meta.classes)


def test_a_sidecar_from_before_the_digest_still_loads(raw_beton: Path, tmp_path: Path) -> None:
    beton = sidecar_copy(raw_beton, tmp_path, lambda data: data.pop("classes_sha256"))
    assert read_metadata(beton).classes == read_metadata(raw_beton).classes


def test_the_cost_benchmark_runs(synthetic: SyntheticFolder) -> None:
    """``python -m jit_ffcv.bench.checksum`` on the synthetic folder: one row per size and mode."""
    from jit_ffcv.bench.checksum import main

    lines: list[str] = []
    main(["--data", str(synthetic.root / "train"), "--sizes", "32", "--repeat", "1"], echo=lines.append)
    assert len(lines) == 3 and lines[0].startswith(f"source: {synthetic.root / 'train'}; 1 runs each")
    assert [line.split(":")[0] for line in lines[1:]] == ["  32 px jpg", "  32 px raw"]
    assert all("% of decode" in line for line in lines[1:])


def test_a_hand_built_loader_verifies_and_never_outputs_the_checksum(raw_beton: Path, tmp_path: Path) -> None:
    """Without bind_checksums or a "checksum" pipeline: the loader binds them itself, batches stay (image, label)."""
    beton = damaged_copy(raw_beton, tmp_path, SMALL * SMALL * 3 // 2, 1)
    loader = JiTLoader(str(beton), batch_size=8, num_workers=2, order=SequentialOrder(), drop_last=False,
                       pin_memory=False, pipelines={"image": [FlipDecoder(flip_prob=0.0)], "label": [IntDecoder()],
                                                    "index": None})
    assert checksum_failure(loader).startswith(f"sample {DAMAGED} of {beton}: ")
    good = JiTLoader(str(raw_beton), batch_size=8, num_workers=2, order=SequentialOrder(), drop_last=False,
                     pin_memory=False, pipelines={"image": [FlipDecoder(flip_prob=0.0)], "label": [IntDecoder()],
                                                  "index": None})
    assert all(len(batch) == 2 for batch in good)
    assert np.array_equal(images_of(good), read_beton(raw_beton)[0])
