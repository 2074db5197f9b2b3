"""Fast unit tests of the benchmark's parts: the threaded limit, medians, interleaving, node shards, checks.

Tiny synthetic data, one repeat, no speed asserted (benchmarks measure, tests check).
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jit_ffcv.bench import limit
from jit_ffcv.bench.fixed import efficiency, fixed_note, overlapped_efficiency
from jit_ffcv.bench.limit import Payloads, slices, threaded_rate
from jit_ffcv.bench.pipelines import PIPELINES, child_config
from jit_ffcv.bench.report import Result, cells
from jit_ffcv.bench.stats import Spread, ratios


def test_slices_are_disjoint_and_cover() -> None:
    assert slices(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert slices(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match="needs 1 to 4 threads for 4 payloads"):
        slices(4, 5)


def test_limit_decodes_every_payload_of_each_slice_once(jpg_beton: Path) -> None:
    payloads = Payloads.read(jpg_beton)
    run = threaded_rate(payloads, 3, seconds=0.0)  # no deadline: each thread decodes its slice once
    np.testing.assert_array_equal(run.counts, np.ones(len(payloads), dtype=np.int64))
    assert run.images == len(payloads) and run.slices == slices(len(payloads), 3)


def test_limit_runs_its_threads_at_once(jpg_beton: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every thread's first call waits for all N inside the kernel: the run completes only if N ran together."""
    threads, together = 3, threading.Barrier(3, timeout=30)
    names: set[str] = set()
    real = limit._kernel()

    def kernel(flat: Any, offsets: Any, lo: int, hi: int, dst: Any, jpg: bool, flags: int, counts: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            return real(flat, offsets, lo, hi, dst, jpg, flags, np.zeros_like(counts))  # the untimed warm-up
        if threading.current_thread().name not in names:
            names.add(threading.current_thread().name)
            together.wait()  # BrokenBarrierError (the run fails) unless all threads are here at once
        real(flat, offsets, lo, hi, dst, jpg, flags, counts)

    monkeypatch.setattr(limit, "_kernel", lambda: kernel)
    payloads = Payloads.read(jpg_beton)
    run = threaded_rate(payloads, threads, seconds=0.2, chunk=2)
    assert names == {"limit-0", "limit-1", "limit-2"} and run.overlapped
    assert run.images == int(run.counts.sum()) and run.counts.min() >= 1


def test_spread_median_and_min_max() -> None:
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0, 3)
    assert Spread.of([1.0, 2.0, 3.0, 10.0]).median == 2.5
    assert Spread.of([1234.4, 1000.0, 1500.6]).text() == "1,234 (1,000–1,501)"
    assert Spread.of([0.5]).text(0, 100, "%") == "50%"
    assert ratios([90.0, 50.0, 120.0], [100.0, 100.0, 100.0]) == Spread(0.9, 0.5, 1.2, 3)
    with pytest.raises(ValueError, match="rounds must pair up"):
        ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one"):
        Spread.of([])


def test_cells_take_ratios_round_by_round() -> None:
    ref = Result("reference (PIL + DataLoader)", 64, 100.0, 1.0, 10.0, rounds=[100.0, 50.0, 200.0])
    row = Result("x", 64, 1000.0, 1.0, 20.0, limit_img_per_s=2000.0, rounds=[1000.0, 600.0, 1900.0],
                 limit_rounds=[2000.0, 1000.0, 2000.0], first_batch_rounds=[1.25, 1.0, 3.0])
    # x ref per round: 10, 12, 9.5 -> 10.0 (9.5-12.0); % limit per round: 50, 60, 95 -> 60% (50%-95%)
    assert cells(row, ref) == ["1,000 (600–1,900)", "10.0× (9.5×–12.0×)", "60% (50%–95%)", "1.2 (1.0–3.0)", "20"]
    assert cells(None, ref) == [""] * 5


def test_measure_size_interleaves_limits_and_pipelines(raw_beton: Path, jpg_beton: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from jit_ffcv.bench import run

    calls: list[str] = []
    honest = iter([100.0, 200.0, 300.0])
    monkeypatch.setattr(run, "build_betons", lambda *a, **k: {"raw": raw_beton, "jpg90": jpg_beton})
    monkeypatch.setattr(run, "limit_rates", lambda beton, threads: calls.append(f"limit {threads}") or {
        "honest": next(honest), "one_core": 60.0, "one_core_x_n": 120.0, "overlapped": True})

    def job(args: Any, j: Any, size: int, *rest: Any) -> dict[str, Any]:
        calls.append(j.name)
        return {"img_per_s": 50.0 + len(calls), "first_epoch_s": 2.0, "peak_rss_mib": 7.0, "first_batch_s": 0.5}

    monkeypatch.setattr(run, "run_job", job)
    spec = next(s for s in PIPELINES if s.name == "jit-ffcv DataModule, raw")
    args = argparse.Namespace(repeat=3, workers=2, batch_size=8)

    class Bar:
        def set_postfix_str(self, text: str) -> None: ...
        def update(self, n: int) -> None: ...

    jobs = [run.Job("a", spec, 2), run.Job("b", spec, 2)]
    results, notes, _ = run.measure_size(args, jobs, None, 1, 64, Path("."), Bar())
    assert calls == ["limit 2", "a", "b"] * 3
    assert results[0].rounds == [52.0, 55.0, 58.0] and results[0].limit_rounds == [100.0, 200.0, 300.0]
    assert results[0].img_per_s == 55.0 and results[0].limit_img_per_s == 200.0
    assert notes == ["64px raw, 2 threads: honest limit 200 (100–300) img/s (2 threads, each its own slice of the "
                     "stored payloads, copy at the same time); one core × 2 = 120 (120–120) img/s; "
                     "honest / (one core × N) = 167% (83%–250%)."]


def test_node_ranks_have_disjoint_shards_covering_the_epoch(raw_beton: Path) -> None:
    from jit_ffcv.bench.node import rank_loader
    from writers.metadata import read_metadata

    spec = next(s for s in PIPELINES if s.name == "jit-ffcv DataModule, raw")
    n = read_metadata(raw_beton).num_samples
    for procs in (2, 4):
        assert n % procs == 0, n  # a shard of equal size: no padding
        cfg = child_config(spec, 64, 2, 1, epochs=2, min_seconds=0.0, beton=raw_beton)
        shards = [list(rank_loader(cfg | {"procs": procs, "rank": i}).sampler) for i in range(procs)]
        assert [len(s) for s in shards] == [n // procs] * procs
        assert sorted(i for s in shards for i in s) == list(range(n))  # disjoint and covering


def test_steady_epochs_fit_the_slowest_rank() -> None:
    from jit_ffcv.bench.node import steady_epochs

    assert steady_epochs([0.5, 1.0], epochs=4, min_seconds=0.0) == 3
    assert steady_epochs([0.5, 1.0], epochs=2, min_seconds=3.5) == 4


def test_fixed_cost_estimate_and_overlap() -> None:
    assert efficiency(16, 0.001, 0.045) == pytest.approx(1 / (1 + 16 / 45))
    assert overlapped_efficiency(16, 0.001, 0.045) == pytest.approx(45 / 46)  # the GIL queue is not full
    assert overlapped_efficiency(64, 0.001, 0.045) == pytest.approx(45 / 64)  # it is: one batch per ms at most
    note = fixed_note(Spread.of([0.001]), 128, {256: 128 / 0.045}, threads=2)
    assert note.startswith("Fixed cost per batch (DataModule, 32 px raw beton, batch 128, 2 threads): 1.00 ms, "
                           "overlapped with decoding")
    assert note.endswith("256px (T = 45 ms per batch for one thread): N=16: 98%, N=64: 70% "
                         "(one batch at a time: 74%, 41%).")


def _bench(*argv: str, capsys: pytest.CaptureFixture[str], out: Path) -> tuple[int, str]:
    from jit_ffcv.cli import main

    code = main(["bench", "--out", str(out), *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--workers", "0"], "--workers must be >= 1 (decoding threads per process), got 0"),
    (["--workers", "-1"], "--workers must be >= 1 (decoding threads per process), got -1"),
    (["--epochs", "0"], "--epochs must be >= 2 (the first epoch is the warm-up, then at least one steady epoch), "
                        "got 0"),
    (["--repeat", "0"], "--repeat must be >= 1, got 0"),
    (["--procs", "0"], "--procs must be >= 1, got 0"),
    (["--sizes", "16"], "--sizes must be >= 32 (the DataModule's smallest img_size), got 16"),
    (["--device", "nonsense"], "--device 'nonsense' is not a torch device: give cpu, cuda or cuda:N"),
])
def test_bad_options_fail_up_front_in_one_line(argv: list[str], message: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _bench(*argv, capsys=capsys, out=tmp_path / "out")
    assert (code, err) == (1, f"jit-ffcv: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_fails_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _bench("--device", "cuda", capsys=capsys, out=tmp_path / "out")
    assert code == 1 and err.startswith("jit-ffcv: error: --device 'cuda' needs CUDA, which this machine's torch "
                                        "does not see") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_update_doc_names_the_missing_markers(tmp_path: Path) -> None:
    from jit_ffcv.bench.report import update_doc

    doc = tmp_path / "benchmarks.md"
    doc.write_text("a\n<!-- bench:node:start -->\nold\n<!-- bench:node:end -->\nb\n")
    update_doc(doc, "node", "| new |")
    assert doc.read_text() == "a\n<!-- bench:node:start -->\n| new |\n<!-- bench:node:end -->\nb\n"
    with pytest.raises(ValueError, match="has no <!-- bench:cpu:start --> ... <!-- bench:cpu:end --> block"):
        update_doc(doc, "cpu", "x")


def test_the_repository_doc_has_every_block_make_bench_writes() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    for tag in ("quality", "mixing", "pages", "scale", "cpu", "node", "gpu", "gpu-node"):
        assert f"<!-- bench:{tag}:start -->" in text and f"<!-- bench:{tag}:end -->" in text, tag


@pytest.mark.slow
def test_node_layout_end_to_end(raw_beton: Path, tmp_path: Path) -> None:
    """``--procs 2 --workers 1``: two ranks started together, each its own half; totals against the 2-thread limit."""
    from jit_ffcv.bench.node import run_layout

    spec = next(s for s in PIPELINES if s.name == "jit-ffcv DataModule, raw")
    cfg = child_config(spec, 64, 2, 1, epochs=2, min_seconds=0.0, beton=raw_beton)
    result = run_layout(cfg, 2)
    from writers.metadata import read_metadata

    n = read_metadata(raw_beton).num_samples
    assert result["epochs"] == 1 and result["images"] == [n // 2, n // 2]  # one steady epoch of each half
    assert result["img_per_s"] > 0 and result["first_batch_s"] > 0
    # timed from GO to the last rank's end, not to its exit (interpreter teardown took seconds in a smoke run)
    assert max(result["rank_seconds"]) <= result["seconds"] < max(result["rank_seconds"]) + 1.0
