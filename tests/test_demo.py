"""``jit-ffcv demo`` writes, trains a tiny JiT on the DataModule and compares it with the reference (tiny data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from jit_ffcv import demo
from jit_ffcv.cli import build_parser
from jit_ffcv.synthetic import make_image_folder
from writers.folder import scan_split

pytestmark = pytest.mark.slow  # the demo end to end: `make test` runs it, `make check` does not


def _args(*argv: str) -> object:
    return build_parser().parse_args(["demo", *argv])


def test_demo_writes_trains_and_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth = make_image_folder(tmp_path / "data", num_classes=3, per_class=4)  # 3 broken files, skipped by the writer
    out = tmp_path / "out"
    args = _args("--data-path", str(synth.root), "--out", str(out), "--img-size", "32", "--batch-size", "4",
                 "--steps", "5", "--bench-seconds", "0", "--workers", "1")
    assert demo.main(args) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    # (a) the beton: the 12 readable images
    assert summary["train_beton"] == str(out / "ffcv" / "train_32_jpg90.beton")
    assert Path(summary["train_beton"]).is_file()
    assert "(a) beton: 12 images, 3 classes" in text
    # (b) exactly --steps finite losses, printed as they are saved
    losses = summary["losses"]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert "    " + " ".join(f"{x:.3f}" for x in losses) + "\n" in text
    # (c) both rows, the reference first, its ratio 1.0x, the DataModule's its img/s over the reference's
    (ref, jit) = summary["throughput"]
    assert (ref["pipeline"], jit["pipeline"]) == ("reference (PIL + DataLoader)", "jit-ffcv DataModule, jpg q90")
    assert ref["img_per_s"] > 0 and jit["img_per_s"] > 0
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table == [
        "| pipeline | img/s | × reference |",
        f"| reference (PIL + DataLoader) | {ref['img_per_s']:,.0f} | 1.0× |",
        f"| jit-ffcv DataModule, jpg q90 | {jit['img_per_s']:,.0f} | {jit['img_per_s'] / ref['img_per_s']:,.1f}× |",
    ]
    # the whole first training batch (4 images of 32 px), captioned like `jit-ffcv show`
    from jit_ffcv.grid import grid_layout

    grid = Image.open(out / "batch.png")
    assert grid.size == grid_layout(4, 32).size
    assert f"saved {out / 'batch.png'} (the first training batch as trained on: 4 images, captioned with class " \
           f"and label like `jit-ffcv show`)" in text


def test_reference_reads_the_files_the_beton_holds(tmp_path: Path) -> None:
    """The reference row loads the same images: the ImageFolder files minus the ones the writer skipped."""
    from writers.beton import write_split

    synth = make_image_folder(tmp_path / "data", num_classes=2, per_class=3)
    beton = tmp_path / "train.beton"
    write_split(synth.root, "train", beton, img_size=32, mode="jpg", quality=90, num_workers=0, progress=False)
    samples = demo._reference_samples(synth.root, beton)
    every = scan_split(synth.root / "train").samples
    assert len(every) == 9 and len(synth.broken) == 3
    assert samples == [s for s in every if s[0] not in synth.broken]


@pytest.mark.parametrize(("argv", "message"), [
    (["--img-size", "36"], "--img-size must be a multiple of 8 and at least 32, got 36"),
    (["--img-size", "24"], "--img-size must be a multiple of 8 and at least 32, got 24"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--bench-seconds", "-1"], "--bench-seconds must be >= 0, got -1.0"),
    (["--workers", "0"], "--workers must be >= 1, got 0"),
])
def test_demo_refuses_bad_options_before_any_work(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ValueError) as err:
        demo.main(_args("--out", str(tmp_path / "out"), *argv))
    assert str(err.value) == message and not (tmp_path / "out").exists()
