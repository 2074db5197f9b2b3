"""GPU decode measurements (``make gpu-check``, tests/helpers/gpu_session.sh): fidelity and throughput, as markdown.

Fidelity: every image of a jpg beton decoded by nvImageCodec's hardware and CUDA backends against the
CPU decode (libjpeg-turbo's accurate IDCT, Pillow's pixels): per-channel mean bias (GPU - CPU),
PSNR, maximum absolute difference, bit-exact images. Throughput: the CPU path with every core and
the GPU path in one process, each in its own subprocess, img/s and the cores it kept busy
(process CPU time / wall time), after one warm-up epoch (compilation).
Paths: ``cpu`` (the DataModule, every core), ``gpu-BACKEND-THREADS`` (GatherJpegBytes on 2 loader
threads, nvImageCodec with that backend and THREADS CPU threads). Appends its tables to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jit_ffcv.gpu_decode import CpuDecoder, NvImageCodecDecoder  # noqa: E402
from jit_ffcv.gpu_gather import stored_payloads  # noqa: E402

CHUNK = 64  # images per nvImageCodec call in the fidelity pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file the tables are appended to")
    parser.add_argument("--sample", type=Path, default=None, help="ImageFolder root with train/ (else synthetic)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for betons (default: a temp dir)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--samples", type=int, default=12_000, help="samples per epoch in the throughput runs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one throughput row
    parser.add_argument("--beton", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ data
def source_folder(sample: Path | None, work: Path) -> tuple[Path, str]:
    """The ImageFolder to write betons from, and how to name it in the results."""
    if sample is not None and (sample / "train").is_dir():
        return sample, f"{sample.name} ({sum(1 for _ in (sample / 'train').rglob('*.*'))} images)"
    from jit_ffcv.synthetic import make_image_folder

    return make_image_folder(work / "synthetic").root, "synthetic ImageFolder (no sample found)"


def write_beton(root: Path, size: int, work: Path) -> Path:
    from writers.beton import write_split

    out = work / f"train_{size}_jpg90.beton"
    if not out.exists():
        write_split(root, "train", out, img_size=size, mode="jpg", quality=90, num_workers=os.cpu_count() or 1,
                    progress=False)
    return out


# ------------------------------------------------------------------ fidelity
def gpu_decode_all(decoder: NvImageCodecDecoder, payloads: list[np.ndarray],
                   size: int) -> tuple[torch.Tensor, list[int]]:
    """Decode every payload; images the backend refuses are decoded one by one and reported (zeros there)."""
    out = torch.zeros(len(payloads), size, size, 3, dtype=torch.uint8)
    failed: list[int] = []
    for start in range(0, len(payloads), CHUNK):
        chunk = payloads[start: start + CHUNK]
        try:
            out[start: start + len(chunk)] = decoder.decode(chunk, size, size).cpu()
        except RuntimeError:
            for i, payload in enumerate(chunk):
                try:
                    out[start + i] = decoder.decode([payload], size, size).cpu()[0]
                except RuntimeError:
                    failed.append(start + i)
    return out, failed


def fidelity_rows(beton: Path, size: int) -> list[str]:
    payloads = stored_payloads(beton)
    cpu = CpuDecoder().decode(payloads, size, size)
    rows = []
    for backend in ("hardware", "cuda"):
        try:
            gpu, failed = gpu_decode_all(NvImageCodecDecoder("cuda", backend=backend), payloads, size)
        except Exception as error:  # noqa: BLE001 - a backend that does not start is a result too
            rows.append(f"| {size} | {backend} | {len(payloads)} | failed: {type(error).__name__}: {error} | | | |")
            continue
        keep = torch.ones(len(payloads), dtype=torch.bool)
        keep[failed] = False
        diff = gpu[keep].to(torch.int16) - cpu[keep].to(torch.int16)
        bias = diff.double().mean(dim=(0, 1, 2)).tolist()
        mse = diff.double().pow(2).mean().item()
        psnr = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
        exact = int((diff.flatten(1).abs().amax(1) == 0).sum())
        rows.append(f"| {size} | {backend} | {int(keep.sum())} (refused {len(failed)}) | "
                    f"{bias[0]:+.3f} / {bias[1]:+.3f} / {bias[2]:+.3f} | {psnr:.2f} | {int(diff.abs().max())} | "
                    f"{exact} |")
    return rows


# ------------------------------------------------------------------ throughput
def one_row(kind: str, beton: Path, sample_root: Path, size: int, batch: int, epochs: int) -> dict[str, Any]:
    """Run one loader (``cpu`` or ``gpu-BACKEND-THREADS``) in this process; img/s and cores busy."""
    from jit_ffcv.datamodule import JiTDataModule
    from tests.helpers.gpu_decode import GatherDataModule

    workers = os.cpu_count() or 1
    options: dict[str, Any] = {"device": "cpu", "num_workers": workers}
    cls: type[JiTDataModule] = JiTDataModule
    if kind.startswith("gpu"):
        _, backend, threads = kind.split("-")

        class Nv(GatherDataModule):
            @staticmethod
            def decoder_factory() -> NvImageCodecDecoder:
                return NvImageCodecDecoder("cuda", backend=backend, cpu_threads=int(threads))

        cls, options = Nv, {"device": "cuda", "num_workers": 2, "channels_last": True}
    dm = cls(str(sample_root), img_size=size, batch_size=batch, train_beton=str(beton), seed=0, **options)
    dm.setup("fit")
    loader = dm.train_dataloader()
    rates, cores, count = [], [], 0
    for epoch in range(epochs + 1):
        loader.set_epoch(epoch)
        wall, cpu = time.perf_counter(), time.process_time()
        count = 0
        for x, _ in loader:
            count += len(x)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if epoch > 0:  # epoch 0 compiles
            rates.append(count / wall)
            cores.append(cpu / wall)
    return {"kind": kind, "size": size, "img_s": float(np.mean(rates)), "cores": float(np.mean(cores)),
            "samples": count, "workers": options["num_workers"]}


def throughput_rows(args: argparse.Namespace, betons: dict[int, Path], root: Path) -> None:
    """Append one row per (size, path) to ``args.out`` as soon as it is measured (a timeout keeps the earlier ones)."""
    from writers.beton import replicate_beton
    from writers.ffcv_api import Reader

    for size, beton in betons.items():
        times = max(1, args.samples // int(Reader(str(beton)).num_samples))
        big = beton.with_name(f"{beton.stem}_x{times}.beton")
        if not big.exists():
            replicate_beton(beton, big, times)
        for kind in ("cpu", "gpu-auto-2", "gpu-cuda-2"):
            command = [sys.executable, __file__, "--out", str(args.out), "--one", kind, "--beton", str(big),
                       "--sample", str(root), "--sizes", str(size), "--batch-size", str(args.batch_size),
                       "--epochs", str(args.epochs)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
            except subprocess.TimeoutExpired:
                done = subprocess.CompletedProcess(command, -1, "", "timed out after 120 s")
            if done.returncode != 0:
                row = f"| {size} | {kind} | failed: {done.stderr.strip().splitlines()[-1:]} | | |"
            else:
                r = json.loads(done.stdout.strip().splitlines()[-1])
                row = f"| {size} | {kind} | {r['img_s']:.0f} | {r['cores']:.2f} | {r['workers']} |"
            with args.out.open("a") as out:
                out.write(row + "\n")


def main(args: argparse.Namespace) -> None:
    if args.one:
        print(json.dumps(one_row(args.one, args.beton, args.sample, args.sizes[0], args.batch_size, args.epochs)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_measure_"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    root, described = source_folder(args.sample, work)
    betons = {size: write_beton(root, size, work) for size in args.sizes}
    lines = [f"\n## Fidelity against the CPU decode ({described}, jpg q90)\n",
             "| px | backend | images | mean bias R / G / B (GPU - CPU) | PSNR dB | max abs | bit-exact |",
             "|---|---|---|---|---|---|---|"]
    for size, beton in betons.items():
        lines += fidelity_rows(beton, size)
    with args.out.open("a") as out:
        out.write("\n".join(lines) + "\n")
    lines = [f"\n## Throughput ({args.samples} samples per epoch, batch {args.batch_size}, mean of {args.epochs} "
             f"epochs after a warm-up; {os.cpu_count()} cores)\n",
             "| px | path | img/s | cores busy (CPU time / wall) | loader threads |", "|---|---|---|---|---|"]
    with args.out.open("a") as out:
        out.write("\n".join(lines) + "\n")
    throughput_rows(args, betons, root)


if __name__ == "__main__":
    main(parse_args())
