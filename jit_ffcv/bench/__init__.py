"""Throughput benchmark: the JiT reference loader, bare FFCV and jit-ffcv, side by side.

Every pipeline runs in a fresh child process (so peak RSS, numba compilation and
FFCV's process-wide thread settings never leak from one to the next) over the
same dataset, at the same batch size and number of CPU workers. The parent
also measures the bounds the loaders cannot beat: one core's JPEG decode rate
(and memory-copy rate for raw) times the cores used. Results are printed as a
markdown table and saved as markdown, CSV, JSON and a PNG chart.

Modules, one concept each: ``pipelines`` (what is measured, in a child process),
``measure`` (timing, memory, decode bound, writer rates, machine), ``data`` (source
split and betons), ``report`` (table, chart, README block), ``quality`` (JPEG
quality table), ``pages`` (pages per rank), ``scale`` (ImageNet-size measurements),
``cli`` (``jit-ffcv bench``).
"""

from __future__ import annotations

from jit_ffcv.bench.cli import add_arguments, main, parse_args
from jit_ffcv.bench.data import build_betons, dataset_scan
from jit_ffcv.bench.measure import PeakRSS, decode_rate_one_core, machine_info, payload_rate_one_core, writer_rates
from jit_ffcv.bench.pages import pages_report
from jit_ffcv.bench.pipelines import PIPELINES, Spec, run_child
from jit_ffcv.bench.quality import QUALITY_ROWS, quality_table
from jit_ffcv.bench.report import Result, chart, markdown, update_readme

__all__ = [
    "PIPELINES", "QUALITY_ROWS", "PeakRSS", "Result", "Spec", "add_arguments", "build_betons", "chart",
    "dataset_scan", "decode_rate_one_core", "machine_info", "main", "markdown", "pages_report", "parse_args",
    "payload_rate_one_core", "quality_table", "run_child", "update_readme", "writer_rates",
]
