"""Reports: the markdown table of the pipelines, the PNG chart and the generated blocks of docs/benchmarks.md."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jit_ffcv.bench.machine import describe
from jit_ffcv.bench.pipelines import PIPELINES
from jit_ffcv.bench.stats import Spread, ratios, threads

BLOCK_START, BLOCK_END = "<!-- bench:{tag}:start -->", "<!-- bench:{tag}:end -->"
#: the document ``make bench`` writes its blocks into
DOC = Path("docs/benchmarks.md")


@dataclass
class Result:
    """One measured row: medians over the rounds, and each round's figures (same order in every list)."""

    name: str
    img_size: int
    img_per_s: float
    first_epoch_s: float
    peak_rss_mib: float
    bytes_per_image: float | None = None
    limit_img_per_s: float | None = None  # the honest limit (median over rounds)
    extra: dict[str, Any] = field(default_factory=dict)
    rounds: list[float] = field(default_factory=list)  # img/s of each round
    limit_rounds: list[float] = field(default_factory=list)  # the honest limit measured in each round
    first_batch_rounds: list[float] = field(default_factory=list)  # seconds to the first batch, each round

    def __post_init__(self) -> None:
        if not self.rounds:
            self.rounds = [self.img_per_s]


def _fmt(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def cells(r: Result | None, ref: Result | None) -> list[str]:
    """img/s, × reference and % of the honest limit (medians of per-round figures, with spread), 1st batch, RSS."""
    if r is None:
        return [""] * 5
    pairs = ref is not None and len(ref.rounds) == len(r.rounds)
    ratio = ratios(r.rounds, ref.rounds).text(1, suffix="×") if pairs else ""
    pct = ratios(r.rounds, r.limit_rounds).text(0, 100, "%") if len(r.limit_rounds) == len(r.rounds) else ""
    first = Spread.of(r.first_batch_rounds).text(1) if r.first_batch_rounds else ""
    return [Spread.of(r.rounds).text(), ratio, pct, first, _fmt(r.peak_rss_mib)]


def markdown(results: list[Result], sizes: Sequence[int], info: dict[str, Any], notes: list[str]) -> str:
    """The table: one row per pipeline; per size img/s, × reference, % of the honest limit, first batch, RSS."""
    names = list(dict.fromkeys(r.name for r in results))
    by = {(r.name, r.img_size): r for r in results}
    head = ["pipeline"]
    for s in sizes:
        head += [f"{s}px img/s", f"{s}px × ref", f"{s}px % limit", f"{s}px 1st batch s", f"{s}px RSS MiB"]
    head += [f"KiB/img ({sizes[0]})"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        row = [name]
        for s in sizes:
            row += cells(by.get((name, s)), by.get((PIPELINES[0].name, s)))
        first = by.get((name, sizes[0]))
        row.append(_fmt(first.bytes_per_image / 1024, 1) if first and first.bytes_per_image else "")
        rows.append("| " + " | ".join(row) + " |")
    machine = describe(info) + f" {threads(info['workers'])} per loader (--workers)."
    return "\n".join(rows + ["", machine] + [f"- {n}" for n in notes])


def ratio_table(results: Sequence[Result]) -> str:
    """A short table: img/s of each result and its ratio to the first one (the reference)."""
    base = results[0].img_per_s
    rows = ["| pipeline | img/s | × reference |", "|---|---|---|"]
    rows += [f"| {r.name} | {_fmt(r.img_per_s)} | {_fmt(r.img_per_s / base, 1)}× |" for r in results]
    return "\n".join(rows)


def save_results(results: list[Result], sizes: Sequence[int], info: dict[str, Any], notes: list[str], table: str,
                 out: Path, chart_path: Path | None = None, name: str = "results") -> Path:
    """Write ``out``/``name``.md, .json, .csv and the chart (default ``out``/chart.png); returns the chart's path."""
    (out / f"{name}.md").write_text(table + "\n")
    (out / f"{name}.json").write_text(json.dumps({"machine": info, "results": [asdict(r) for r in results],
                                                  "notes": notes}, indent=2))
    lists = ("extra", "rounds", "limit_rounds", "first_batch_rounds")  # in the JSON only
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in asdict(results[0]) if k not in lists])
        writer.writeheader()
        for r in results:
            writer.writerow({k: v for k, v in asdict(r).items() if k not in lists})
    chart_path = chart_path or out / ("chart.png" if name == "results" else f"{name}_chart.png")
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


def update_doc(doc: Path, tag: str, text: str) -> None:
    """Replace the generated block between the ``bench:<tag>`` markers of ``doc`` with ``text``."""
    start, end = BLOCK_START.format(tag=tag), BLOCK_END.format(tag=tag)
    body = doc.read_text()
    if start not in body or end not in body:
        raise ValueError(f"{doc} has no {start} ... {end} block to update: add the two marker lines where the "
                         f"table belongs")
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{text}\n{end}{tail}")
