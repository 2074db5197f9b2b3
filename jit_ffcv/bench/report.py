"""Reports: the markdown table, the PNG chart and the README block they replace."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jit_ffcv.bench.pipelines import PIPELINES

README_START, README_END = "<!-- bench:{tag}:start -->", "<!-- bench:{tag}:end -->"


@dataclass
class Result:
    """One measured row."""

    name: str
    img_size: int
    img_per_s: float
    first_epoch_s: float
    peak_rss_mib: float
    bytes_per_image: float | None = None
    limit_img_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)



def _fmt(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def markdown(results: list[Result], sizes: Sequence[int], info: dict[str, Any], notes: list[str]) -> str:
    """The table: one row per pipeline, img/s, x reference, % of the decode/copy limit per size."""
    names = list(dict.fromkeys(r.name for r in results))
    by = {(r.name, r.img_size): r for r in results}
    head = ["pipeline"]
    for s in sizes:
        head += [f"{s}px img/s", f"{s}px × ref", f"{s}px % limit", f"{s}px 1st epoch s", f"{s}px RSS MiB"]
    head += [f"KiB/img ({sizes[0]})"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        cells = [name]
        for s in sizes:
            r, ref = by.get((name, s)), by.get((PIPELINES[0].name, s))
            if r is None:
                cells += [""] * 5
                continue
            ratio = r.img_per_s / ref.img_per_s if ref else None
            pct = 100 * r.img_per_s / r.limit_img_per_s if r.limit_img_per_s else None
            cells += [_fmt(r.img_per_s), f"{_fmt(ratio, 1)}×" if ratio else "", f"{_fmt(pct)}%" if pct else "",
                      _fmt(r.first_epoch_s, 1), _fmt(r.peak_rss_mib)]
        r256 = by.get((name, sizes[0]))
        cells.append(_fmt(r256.bytes_per_image / 1024, 1) if r256 and r256.bytes_per_image else "")
        rows.append("| " + " | ".join(cells) + " |")
    machine = (f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, GPU: {info['gpu']}; "
               f"{info['workers']} loader workers; python {info['python']}, torch {info['torch']}, ffcv {info['ffcv']}, "
               f"numba {info['numba']}, numpy {info['numpy']}, pillow {info['pillow']}.")
    return "\n".join(rows + ["", machine] + [f"- {n}" for n in notes])


def ratio_table(results: Sequence[Result]) -> str:
    """A short table: img/s of each result and its ratio to the first one (the reference)."""
    base = results[0].img_per_s
    rows = ["| pipeline | img/s | × reference |", "|---|---|---|"]
    rows += [f"| {r.name} | {_fmt(r.img_per_s)} | {_fmt(r.img_per_s / base, 1)}× |" for r in results]
    return "\n".join(rows)


def save_results(results: list[Result], sizes: Sequence[int], info: dict[str, Any], notes: list[str], table: str,
                 out: Path, chart_path: Path | None = None) -> Path:
    """Write ``out``/results.md, .json, .csv and the chart (default ``out``/chart.png); returns the chart's path."""
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"machine": info, "results": [asdict(r) for r in results],
                                                  "notes": notes}, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in asdict(results[0]) if k != "extra"])
        writer.writeheader()
        for r in results:
            writer.writerow({k: v for k, v in asdict(r).items() if k != "extra"})
    chart_path = chart_path or out / "chart.png"
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    chart(results, sizes, chart_path)
    return chart_path


def chart(results: list[Result], sizes: Sequence[int], path: Path) -> None:
    """Horizontal bars of img/s per pipeline and size, log scale, each bar labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.name for r in results))
    by = {(r.name, r.img_size): r.img_per_s for r in results}
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) * len(sizes) + 1.2))
    height = 0.8 / len(sizes)
    for k, s in enumerate(sizes):
        ys = np.arange(len(names)) + k * height
        values = [by.get((n, s), 0) for n in names]
        bars = ax.barh(ys, values, height=height, label=f"{s}px")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
    ax.set_yticks(np.arange(len(names)) + height * (len(sizes) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(by.values()) * 4)
    ax.set_xlabel("images / second, log scale (higher is better)")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(readme: Path, tag: str, text: str) -> None:
    """Replace the block between the ``bench:<tag>`` markers of the README with ``text``."""
    start, end = README_START.format(tag=tag), README_END.format(tag=tag)
    body = readme.read_text()
    if start not in body or end not in body:
        raise ValueError(f"{readme} has no {start} ... {end} block to update")
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")
