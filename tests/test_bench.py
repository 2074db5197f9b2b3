"""The benchmark command runs end to end (tiny settings) and writes what the README shows.

These tests check that ``jit-ffcv bench`` works and reports consistently; they
assert no speed (benchmarks measure, tests check).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from jit_ffcv import bench
from jit_ffcv.synthetic import make_image_folder

pytestmark = pytest.mark.slow  # the benchmark end to end in child processes: `make test` runs it, `make check` does not


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("bench_data"), num_classes=3, per_class=4, broken=False).root


def test_bench_end_to_end(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:cpu:start -->\nold\n<!-- bench:cpu:end -->\noutro\n")
    out = tmp_path / "out"
    args = bench.parse_args([
        "--data-path", str(tiny_dataset), "--sizes", "64", "--batch-size", "8", "--workers", "1",
        "--target-samples", "48", "--epochs", "2", "--min-seconds", "0", "--skip-writer",
        "--pipelines", "reference", "jit-ffcv DataModule, raw", "fast decode",
        "--out", str(out), "--readme", str(readme),
    ])
    assert bench.main(args) == 0
    # the cost first: 3 pipelines x 1 size x 1 round + the fixed-cost run, no writer runs
    assert capsys.readouterr().out.startswith("jit-ffcv bench: 4 fresh processes; roughly ")
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == ["reference (PIL + DataLoader)",
                                         "jit-ffcv DataModule, fast decode (biased), jpg q90",
                                         "jit-ffcv DataModule, raw"]
    assert all(float(r["img_per_s"]) > 0 and float(r["peak_rss_mib"]) > 0 for r in rows)
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["workers"] == 1 and "12 images replicated ×4 = 48 samples" in data["notes"][0]
    # the jpg limit is the accurate decode's, by 1 thread; the fast decode's rate is a note of its own
    assert [n.split(":")[0] for n in data["notes"][1:]] == ["64px jpg90, 1 thread", "64px raw, 1 thread",
                                                           "64px jpg90", "Fixed cost per batch (DataModule, 32 px raw "
                                                           "beton, batch 8, 1 thread)"]
    assert data["notes"][1].startswith("64px jpg90, 1 thread: honest limit ")
    assert "img/s (1 thread, each its own slice of the stored payloads, accurate decode at the same time); " \
           "one core × 1 = " in data["notes"][1]
    assert data["notes"][3].startswith("64px jpg90: one core's fast-IDCT decode (opt-in, biased) ")
    assert "64px (T = " in data["notes"][4] and "ms per batch for one thread)" in data["notes"][4]
    assert all(len(r["rounds"]) == 1 and len(r["first_batch_rounds"]) == 1 for r in data["results"])
    assert [len(r["limit_rounds"]) for r in data["results"]] == [0, 1, 1]
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:cpu:start -->\n| pipeline |")
    assert text.endswith("<!-- bench:cpu:end -->\noutro\n")
    assert "| 64px 1st batch s |" in text and "\nMachine: " in text
    assert "old" not in text and (out / "chart.png").stat().st_size > 1000


def test_update_doc_needs_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("no markers here\n")
    with pytest.raises(ValueError, match="bench:cpu:start"):
        bench.update_doc(doc, "cpu", "table")


def _bias_cell(decoded: list[np.ndarray], crops: list[np.ndarray]) -> str:
    """The table's bias cell, computed independently: mean over images of mean(decoded - crop) per channel."""
    means = np.mean([(d.astype(np.float64) - c).mean(axis=(0, 1))
                     for d, c in zip(decoded, crops, strict=True)], axis=0)
    return " / ".join(f"{m:+.2f}" for m in means)


def test_quality_table_rows(tiny_dataset: Path) -> None:
    from ffcv.libffcv import imdecode
    from PIL import Image

    from writers.encode import crop_file, encode_jpeg
    from writers.folder import scan_split

    scan = scan_split(tiny_dataset / "train")
    rows = (("4:2:0", 50), ("4:4:4", 100))
    table = bench.quality_table(scan, [32], rows=rows)
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| 32 | 4:2:0 | 50 |") and lines[3].startswith("| 32 | 4:4:4 | 100 |")
    assert lines[0].split("|")[6:8] == [" mean bias R / G / B ", " fast-decode bias R / G / B "]
    psnr50, psnr100 = float(lines[2].split("|")[4]), float(lines[3].split("|")[4])
    assert psnr100 > psnr50
    crops = [crop_file(path, 32) for path, _ in scan.samples]
    for line, (chroma, q) in zip(lines[2:], rows, strict=False):
        payloads = [encode_jpeg(c, q, subsampling=chroma) for c in crops]
        pillow = [np.array(Image.open(BytesIO(p)).convert("RGB")) for p in payloads]
        ffcv = []  # FFCV's own decode call: the fast IDCT the opt-in reproduces
        for p in payloads:
            ffcv.append(np.empty((32, 32, 3), dtype=np.uint8))
            imdecode(np.frombuffer(p, dtype=np.uint8), ffcv[-1], 32, 32, 32, 32, 0, 0, 1, 1, False, False)
        cells = [c.strip() for c in line.split("|")]
        assert cells[6] == _bias_cell(pillow, crops) and cells[7] == _bias_cell(ffcv, crops), line


def test_pages_report_counts(raw_beton: Path) -> None:
    table = bench.pages_report(raw_beton, worlds=(1, 2))
    sim = [line for line in table.splitlines() if line.startswith("| simulated")]
    # 1,281,167 samples at 380 per page = 3,372 pages; a contiguous half is 1,686 pages (+ boundary pages)
    assert sim[0].split("|")[3].strip() == "3,372" and sim[0].split("|")[4].strip() == "3,372"
    assert 1686 <= int(sim[1].split("|")[4].strip().replace(",", "")) <= 1688
    assert sim[1].split("|")[6].strip() == "3,372"  # a strided split reads every page on every rank


def _bench_args(*argv: str) -> object:
    from jit_ffcv.cli import build_parser

    return build_parser().parse_args(["bench", *argv])


def test_missing_bench_extra_fails_before_measuring(tiny_dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what importlib sees when a module is not installed
    out = tmp_path / "out"
    args = _bench_args("--data-path", str(tiny_dataset), "--sizes", "32", "--pipelines", "reference", "--out", str(out))
    with pytest.raises(SystemExit) as exit_:
        bench.main(args)
    assert exit_.value.code == ('jit-ffcv: error: jit-ffcv bench needs matplotlib (the chart), which is not installed: '
                                'pip install -e ".[bench]" (or make install)')
    assert not out.exists()  # nothing written, nothing measured


def test_missing_dependency_is_one_line_from_the_command(tmp_path: Path) -> None:
    """The console script's view: exit status 1 and exactly one line on stderr (the whole bench extra gone)."""
    code = ("import sys; sys.modules['psutil'] = None; sys.modules['matplotlib'] = None\n"
            "from jit_ffcv.cli import main\n"
            f"sys.exit(main(['bench', '--out', {str(tmp_path / 'out')!r}]))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == ('jit-ffcv: error: jit-ffcv bench needs matplotlib (the chart) and psutil (worker memory), '
                           'which are not installed: pip install -e ".[bench]" (or make install)\n')
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "modules"), [
    (["--mixing"], ["numpy"]),
    (["--quality-table"], ["ffcv", "numba", "PIL"]),
    (["--pages"], ["ffcv", "numba", "PIL"]),
    (["--scale"], ["ffcv", "lightning", "numba"]),
    (["--pipelines", "reference"],
     ["matplotlib", "psutil", "tqdm", "lightning", "numba", "PIL", "torch", "torch", "PIL"]),
    (["--pipelines", "FFCV Loader, no flip, raw"],
     ["matplotlib", "psutil", "tqdm", "lightning", "numba", "PIL", "torch", "ffcv", "torch"]),
])
def test_needed_modules_follow_the_selection(argv: list[str], modules: list[str]) -> None:
    from jit_ffcv.bench.cli import needed_modules, specs_of

    args = _bench_args(*argv)
    specs = specs_of(args) if argv[0] == "--pipelines" else []
    assert needed_modules(args, specs) == modules


def test_bench_help_lists_every_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    from jit_ffcv.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    head = "pipelines (--pipelines takes a part of a name; the reference is the ratio's base):"
    listed = lines[lines.index(head) + 1:]
    width = max(len(s.name) for s in bench.PIPELINES)
    assert listed == [f"  {s.name:<{width}}  {s.about}" for s in bench.PIPELINES]
    assert all(s.about for s in bench.PIPELINES)


def test_unknown_pipeline_is_refused_before_measuring(tiny_dataset: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from jit_ffcv.cli import main

    out = tmp_path / "out"
    assert main(["bench", "--data-path", str(tiny_dataset), "--sizes", "32", "--out", str(out),
                 "--pipelines", "reference", "DataModule, jpg q80"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jit-ffcv: error: --pipelines 'DataModule, jpg q80' matches no pipeline; give a part of one "
                          "of: 'reference (PIL + DataLoader)'; 'FFCV Loader, no flip, jpg q90'; ")
    assert err.count("\n") == 1 and not out.exists()
