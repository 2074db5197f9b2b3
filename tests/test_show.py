"""``jit-ffcv show`` (tiles are the val loader's pixels, captions its labels) and ``jit-ffcv info``'s figures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jit_ffcv.cli import main
from jit_ffcv.grid import caption, grid_layout
from jit_ffcv.inspect_beton import ClassCounts, payload_sizes, pick_ids, show
from jit_ffcv.synthetic import SyntheticFolder
from writers.beton import read_indices, read_payloads, write_split
from writers.metadata import read_metadata

SMALL = 64  # conftest's crop size


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jit-ffcv: error: "), err
    return lines[0]


def val_batches(beton: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of ``beton`` as the DataModule's val loader delivers it: (N,3,H,W) uint8 and labels."""
    from jit_ffcv.datamodule import JiTDataModule

    meta = read_metadata(beton)
    dm = JiTDataModule(str(tmp_path / "no-data"), img_size=meta.img_size, batch_size=meta.num_samples, num_workers=1,
                       mode=meta.mode, quality=meta.quality or 90, train_beton=str(beton), val_beton=str(beton),
                       pin_memory=False)
    dm.setup("fit")
    (images, labels), = list(dm.val_dataloader())
    return images.numpy().copy(), labels.numpy().copy()


# ------------------------------------------------------------------------------------------------ show
def test_tiles_are_the_val_loaders_pixels(jpg_beton: Path, synthetic: SyntheticFolder, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    samples = show(jpg_beton, out, n=5, seed=3)
    ids = [s.sample_id for s in samples]
    assert ids == sorted(np.random.default_rng(3).choice(20, size=5, replace=False).tolist())
    images, labels = val_batches(jpg_beton, tmp_path)
    grid = np.asarray(Image.open(out).convert("RGB"))
    # 5 tiles: 3 columns x 2 rows of cells 180 wide (64 px images are narrower than a caption) and 64 + 30 high
    assert grid.shape == (2 * (64 + 30 + 4) + 4, 3 * (180 + 4) + 4, 3) == (200, 556, 3)
    layout = grid_layout(5, SMALL)
    indices = read_indices(jpg_beton)
    for k, sample in enumerate(samples):
        expected = images[sample.sample_id].transpose(1, 2, 0)
        assert np.array_equal(sample.image, expected)
        x, y = layout.origin(k)
        assert np.array_equal(grid[y:y + SMALL, x:x + SMALL], expected), f"tile {k}"
        assert sample.label == labels[sample.sample_id]
        assert sample.class_name == synthetic.classes[sample.label]
        assert sample.index == indices[sample.sample_id]
        assert caption(sample) == (f"{synthetic.classes[labels[sample.sample_id]]} (label {labels[sample.sample_id]})",
                                   f"sample {sample.sample_id}, folder idx {indices[sample.sample_id]}")


def test_show_command_with_indices(raw_beton: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "three.png"
    code, stdout, _ = run(["show", str(raw_beton), "--out", str(out), "--indices", "19", "0", "7"], capsys)
    assert (code, stdout) == (0, f"saved 3 samples of {raw_beton} to {out}\n")
    assert Image.open(out).size == (2 * (180 + 4) + 4, 2 * (64 + 30 + 4) + 4)  # 2 x 2 cells, one empty
    payloads, _ = read_payloads(raw_beton)  # a raw beton stores the exact HWC pixels
    grid = np.asarray(Image.open(out).convert("RGB"))
    layout = grid_layout(3, SMALL)
    for k, sample_id in enumerate([19, 0, 7]):
        x, y = layout.origin(k)
        expected = np.frombuffer(payloads[sample_id], dtype=np.uint8).reshape(SMALL, SMALL, 3)
        assert np.array_equal(grid[y:y + SMALL, x:x + SMALL], expected)


def test_pick_ids() -> None:
    assert pick_ids(20, 50, 0).tolist() == list(range(20))  # n above N shows every sample
    assert pick_ids(20, 4, 1).tolist() == sorted(np.random.default_rng(1).choice(20, 4, replace=False).tolist())
    assert pick_ids(20, 4, 1, [5, 2, 5]).tolist() == [5, 2, 5]


@pytest.mark.parametrize(("extra", "message"), [
    (["--indices", "20"], "--indices 20 is out of range: this beton holds samples 0 to 19"),
    (["--indices", "3", "-1"], "--indices -1 is out of range: this beton holds samples 0 to 19"),
    (["--n", "0"], "--n must be at least 1, got 0"),
    (["--seed", "-2"], "--seed must be an integer >= 0, got -2"),
])
def test_show_bad_choice_is_one_line(raw_beton: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     extra: list[str], message: str) -> None:
    out = tmp_path / "x.png"
    code, _, err = run(["show", str(raw_beton), "--out", str(out), *extra], capsys)
    assert code == 1 and one_error_line(err) == f"jit-ffcv: error: {message}"
    assert not out.exists()


def test_show_bad_paths_are_one_line(raw_beton: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "gone.beton"
    code, _, err = run(["show", str(missing), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 1 and one_error_line(err) == (
        f"jit-ffcv: error: beton not found: {missing}; write it with `jit-ffcv write` or check the path")
    code, _, err = run(["show", str(raw_beton), "--out", str(tmp_path / "x.jpg")], capsys)
    assert code == 1 and one_error_line(err) == (
        f"jit-ffcv: error: --out must name a .png file, got {tmp_path / 'x.jpg'}")
    out = tmp_path / "no" / "x.png"
    code, _, err = run(["show", str(raw_beton), "--out", str(out)], capsys)
    assert code == 1 and one_error_line(err) == (
        f"jit-ffcv: error: --out {out}: folder {out.parent} does not exist; create it or choose another --out")


# ------------------------------------------------------------------------------------------------ info
def _folder(root: Path, counts: dict[str, int]) -> Path:
    """An ImageFolder with ``counts[class]`` small RGB PNGs per class."""
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "train" / name / f"{i}.png")
    return root


def _info_line(stdout: str, key: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith(f"{key}:")]
    return re.sub(r"^[^:]+:\s+", "", line)


def test_info_counts_per_class_and_raw_payload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path / "data", {"ant": 2, "bee": 1, "cat": 4})
    beton = tmp_path / "t.beton"
    write_split(root, "train", beton, img_size=32, mode="raw", num_workers=0, progress=False)
    code, stdout, _ = run(["info", str(beton)], capsys)
    assert code == 0
    assert _info_line(stdout, "per class") == "min 1 (bee), median 2, max 4 samples over 3 classes"
    file_per_image = beton.stat().st_size / 7
    assert _info_line(stdout, "bytes/image") == (  # a raw 32 px crop is exactly 32 * 32 * 3 bytes
        f"payload mean 3,072 B (3.0 KiB), max 3,072 B; "
        f"file {file_per_image:,.0f} B/image ({file_per_image / 1024:.1f} KiB, pages and tables included)")
    assert payload_sizes(beton).tolist() == [3072] * 7


def test_class_counts_name_ties_and_empty_classes() -> None:
    counts = ClassCounts(np.array([3, 0, 7, 0, 5]), ["a", "b", "c", "d", "e"])
    assert counts.line() == "min 0 (b and 1 more), median 3, max 7 samples over 5 classes"
    assert ClassCounts(np.array([2, 5]), ["a", "b"]).line() == "min 2 (a), median 3.5, max 5 samples over 2 classes"


def _jpeg_lengths(beton: Path) -> list[int]:
    """Each stored JPEG's length found in the file itself: from its data pointer to its EOI marker (FFD9).

    In entropy-coded JPEG data every 0xFF byte is followed by 0x00, so the first FFD9 is the end of the image.
    """
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    data = beton.read_bytes()
    lengths = []
    for ptr in reader.metadata["f0"]["data_ptr"].tolist():
        assert data[ptr:ptr + 2] == b"\xff\xd8"  # the payload starts with a JPEG SOI marker
        lengths.append(data.index(b"\xff\xd9", ptr) + 2 - ptr)
    return lengths


def test_jpeg_payload_is_the_stored_jpeg_bytes(jpg_beton: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lengths = np.array(_jpeg_lengths(jpg_beton))
    assert payload_sizes(jpg_beton).tolist() == lengths.tolist()
    assert int(lengths.sum()) == read_metadata(jpg_beton).payload_bytes  # what the writer counted
    code, stdout, _ = run(["info", str(jpg_beton)], capsys)
    assert code == 0
    assert _info_line(stdout, "bytes/image").startswith(
        f"payload mean {lengths.mean():,.0f} B ({lengths.mean() / 1024:.1f} KiB), max {lengths.max():,} B; ")
    assert _info_line(stdout, "per class") == "min 5 (n00000000 and 3 more), median 5, max 5 samples over 4 classes"


def test_parser_does_not_import_ffcv() -> None:
    """`jit-ffcv write` builds the same parser, then forks workers: FFCV, numba and torch stay out of it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from jit_ffcv.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('ffcv', 'numba', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert (out.returncode, out.stdout) == (0, "[]\n"), out.stderr[-2000:]
