"""The benchmark command runs end to end (tiny settings) and writes what the README shows.

These tests check that ``jit-ffcv bench`` works and reports consistently; they
assert no speed (benchmarks measure, tests check).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jit_ffcv import bench
from jit_ffcv.synthetic import make_image_folder


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("bench_data"), num_classes=3, per_class=4, broken=False).root


def test_bench_end_to_end(tiny_dataset: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:cpu:start -->\nold\n<!-- bench:cpu:end -->\noutro\n")
    out = tmp_path / "out"
    args = bench.parse_args([
        "--data-path", str(tiny_dataset), "--sizes", "64", "--batch-size", "8", "--workers", "1",
        "--target-samples", "48", "--epochs", "2", "--min-seconds", "0", "--skip-writer",
        "--pipelines", "reference", "jit-ffcv DataModule, raw", "--out", str(out), "--readme", str(readme),
    ])
    assert bench.main(args) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["name"] for r in rows] == ["reference (PIL + DataLoader)", "jit-ffcv DataModule, raw"]
    assert all(float(r["img_per_s"]) > 0 and float(r["peak_rss_mib"]) > 0 for r in rows)
    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["workers"] == 1 and "12 images replicated ×4 = 48 samples" in data["notes"][0]
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:cpu:start -->\n| pipeline |") and text.endswith("<!-- bench:cpu:end -->\noutro\n")
    assert "old" not in text and (out / "chart.png").stat().st_size > 1000


def test_update_readme_needs_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="bench:cpu:start"):
        bench.update_readme(readme, "cpu", "table")


def test_quality_table_rows(tiny_dataset: Path) -> None:
    from writers.folder import scan_split

    table = bench.quality_table(scan_split(tiny_dataset / "train"), [32], rows=(("4:2:0", 50), ("4:4:4", 100)))
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 32 | 4:2:0 | 50 |") and lines[3].startswith("| 32 | 4:4:4 | 100 |")
    psnr50, psnr100 = float(lines[2].split("|")[4]), float(lines[3].split("|")[4])
    assert psnr100 > psnr50


def test_pages_report_counts(raw_beton: Path) -> None:
    table = bench.pages_report(raw_beton, worlds=(1, 2))
    sim = [line for line in table.splitlines() if line.startswith("| simulated")]
    # 1,281,167 samples at 380 per page = 3,372 pages; a contiguous half is 1,686 pages (+ boundary pages)
    assert sim[0].split("|")[3].strip() == "3,372" and sim[0].split("|")[4].strip() == "3,372"
    assert 1686 <= int(sim[1].split("|")[4].strip().replace(",", "")) <= 1688
    assert sim[1].split("|")[6].strip() == "3,372"  # a strided split reads every page on every rank
