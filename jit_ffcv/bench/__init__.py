"""Throughput benchmark: the JiT reference loader, bare FFCV and jit-ffcv, side by side, against an honest limit.

Every pipeline runs in a fresh child process (so peak RSS, numba compilation and FFCV's
process-wide thread settings never leak from one to the next) over the same dataset, at the
same batch size and number of decoding threads. The parent measures the limit no loader can
beat: N threads decoding disjoint slices of the stored JPEGs at the same time (next to one
core's rate × N). ``--repeat R`` interleaves the limit and every pipeline R times; tables show
medians with the spread. Results are markdown blocks of ``docs/benchmarks.md``, CSV, JSON and a chart.

Modules, one concept each: ``cli`` (options, the runs they select), ``checks`` (options checked
up front), ``cost`` (time and disk printed before a run), ``run`` (interleaved rounds), ``limit``
(the decode limit), ``pipelines`` (what is measured, in a child), ``spawn`` and ``child`` (fresh processes),
``node`` (P ranks × K threads), ``fixed`` (fixed cost per batch), ``stats`` (median and spread),
``measure`` (epoch timing, writer rates), ``memory`` (peak RSS), ``machine`` (the machine line),
``data`` (source split and betons), ``report`` (table, chart, generated blocks), ``quality``,
``pages``, ``scale`` and ``scale_beton`` (ImageNet-size measurements).
"""

from __future__ import annotations

from jit_ffcv.bench.cli import add_arguments, main, parse_args
from jit_ffcv.bench.data import build_betons, dataset_scan
from jit_ffcv.bench.limit import LimitRun, Payloads, limit_rates, one_core_rate, threaded_rate
from jit_ffcv.bench.machine import describe, machine_info
from jit_ffcv.bench.measure import writer_rates
from jit_ffcv.bench.memory import PeakRSS
from jit_ffcv.bench.pages import pages_report
from jit_ffcv.bench.pipelines import PIPELINES, Spec, run_child
from jit_ffcv.bench.quality import QUALITY_ROWS, quality_table
from jit_ffcv.bench.report import Result, chart, markdown, update_doc
from jit_ffcv.bench.stats import Spread

__all__ = [
    "PIPELINES", "QUALITY_ROWS", "LimitRun", "Payloads", "PeakRSS", "Result", "Spec", "Spread", "add_arguments",
    "build_betons", "chart", "dataset_scan", "describe", "limit_rates", "machine_info", "main", "markdown",
    "one_core_rate", "pages_report", "parse_args", "quality_table", "run_child", "threaded_rate", "update_doc",
    "writer_rates",
]
