"""Throughput benchmark: the JiT reference loader, bare FFCV and jit-ffcv, side by side.

Every pipeline runs in a fresh child process (so peak RSS, numba compilation and
FFCV's process-wide thread settings never leak from one to the next) over the
same dataset, at the same batch size and number of CPU workers. The parent
also measures the bounds the loaders cannot beat: one core's JPEG decode rate
(and memory-copy rate for raw) times the cores used. Results are printed as a
markdown table and saved as markdown, CSV, JSON and a PNG chart.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from jit_ffcv.synthetic import SHARED_SAMPLE, make_image_folder
from writers.beton import read_payloads, replicate_beton, write_beton
from writers.folder import FolderScan, scan_split

README_START, README_END = "<!-- bench:{tag}:start -->", "<!-- bench:{tag}:end -->"


@dataclass(frozen=True)
class Spec:
    """One pipeline to measure: what loads which beton, with or without flip."""

    name: str
    kind: str  # reference | ffcv | jit
    beton: str | None = None  # jpg90 | jpg95 | raw (None for the reference)
    flip: bool = True
    output: str = "uint8"
    jpeg_decode: str = "accurate"  # jit rows: the DataModule's jpeg_decode option


PIPELINES: tuple[Spec, ...] = (
    Spec("reference (PIL + DataLoader)", "reference"),
    Spec("FFCV Loader, no flip, jpg q90", "ffcv", "jpg90", flip=False),
    Spec("FFCV Loader + RandomHorizontalFlip, jpg q90", "ffcv", "jpg90"),
    Spec("jit-ffcv DataModule, jpg q90", "jit", "jpg90"),
    Spec("jit-ffcv DataModule, no flip, jpg q90", "jit", "jpg90", flip=False),
    Spec("jit-ffcv DataModule, fast decode (biased), jpg q90", "jit", "jpg90", jpeg_decode="fast"),
    Spec("jit-ffcv DataModule, jpg q95", "jit", "jpg95"),
    Spec("FFCV Loader, no flip, raw", "ffcv", "raw", flip=False),
    Spec("FFCV Loader + RandomHorizontalFlip, raw", "ffcv", "raw"),
    Spec("jit-ffcv DataModule, raw", "jit", "raw"),
)


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


# --------------------------------------------------------------------------- machine
def machine_info(workers: int) -> dict[str, Any]:
    """CPU model, cores, RAM and library versions: printed with every table."""
    import lightning
    import numba
    import PIL
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kib = 0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": workers,
        "ram_gib": round(mem_kib / 2**20, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ffcv": importlib.metadata.version("ffcv"),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "lightning": lightning.__version__,
    }


# --------------------------------------------------------------------------- data
def dataset_scan(data_path: str | None, work: Path) -> tuple[FolderScan, str]:
    """The source split: ``--data-path``, else the shared ImageNet sample, else synthetic."""
    if data_path:
        return scan_split(Path(data_path) / "train"), str(data_path)
    if (SHARED_SAMPLE / "train").is_dir():
        return scan_split(SHARED_SAMPLE / "train"), f"{SHARED_SAMPLE} (real ImageNet JPEGs)"
    synth = make_image_folder(work / "synthetic", num_classes=10, per_class=10, broken=False, val=False)
    return scan_split(synth.root / "train"), "synthetic ImageFolder (no shared sample found)"


def _mode_quality(name: str) -> tuple[str, int]:
    return ("raw", 90) if name == "raw" else ("jpg", int(name[3:]))


def build_betons(scan: FolderScan, img_size: int, names: Iterable[str], replicate: int, work: Path, workers: int,
                 progress: bool) -> dict[str, Path]:
    """Write each unique beton once (cached in ``work``) and a ``replicate``-times copy of it."""
    out: dict[str, Path] = {}
    for name in names:
        mode, quality = _mode_quality(name)
        unique = work / f"unique_{img_size}_{name}_{len(scan.samples)}.beton"
        if not unique.exists():
            write_beton(scan, unique, img_size=img_size, mode=mode, quality=quality, num_workers=workers,
                        progress=progress)
        big = work / f"bench_{img_size}_{name}_{len(scan.samples)}x{replicate}.beton"
        if not big.exists():
            replicate_beton(unique, big, replicate)
        out[name] = big
    return out


def writer_rates(scan: FolderScan, img_size: int, work: Path, workers: Sequence[int],
                 min_images: int = 900) -> dict[int, float]:
    """Writer img/s (jpg q90, whole run: pool start, crop, encode, write, SHA-256) per worker count."""
    times = -(-min_images // len(scan.samples))
    scan = FolderScan(scan.root, scan.classes, scan.samples * times, scan.ignored)
    rates = {}
    for n in workers:
        meta = write_beton(scan, work / f"writer_{img_size}_{n}.beton", img_size=img_size, mode="jpg", quality=90,
                           num_workers=n, progress=False, force=True)  # re-measured on every run
        rates[n] = meta.images_per_second
    return rates


#: (chroma subsampling, quality) rows of the quality table; Pillow's default 4:2:0 is what the writer stores
QUALITY_ROWS: tuple[tuple[str, int], ...] = (("4:2:0", 75), ("4:2:0", 85), ("4:2:0", 90), ("4:2:0", 95),
                                             ("4:2:0", 100), ("4:4:4", 90), ("4:4:4", 95))


def _bias(total: np.ndarray, count: int) -> str:
    """Per-channel mean bias as ``R / G / B`` grey levels, signed, 2 decimals."""
    return " / ".join(f"{b:+.2f}" for b in total / count)


def quality_table(scan: FolderScan, sizes: Sequence[int], rows: Sequence[tuple[str, int]] = QUALITY_ROWS) -> str:
    """Markdown table of JPEG settings vs PSNR and mean bias (to the exact crop), size and one core's decode time.

    PSNR and decode time are those of the loader's default, accurate decode; the mean
    bias (decoded - exact crop, per channel) is shown for it and for the opt-in fast IDCT.
    """
    from jit_ffcv.jpeg import decode_flags, decode_rgb
    from writers.encode import crop_file, encode_jpeg

    lines = ["| img_size | chroma | quality | mean PSNR dB | min PSNR dB | mean bias R / G / B | "
             "fast-decode bias R / G / B | KiB/image | vs raw | decode µs/img (1 core) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fast = decode_flags("fast")
    for size in sizes:
        crops = []
        for path, _ in scan.samples:
            try:
                crops.append(crop_file(path, size))
            except Exception:  # noqa: BLE001 - unreadable files are the writer's business, not this table's
                continue
        dst = np.empty((size, size, 3), dtype=np.uint8)
        for chroma, q in rows:
            payloads = [encode_jpeg(ref, q, subsampling=chroma) for ref in crops]
            psnrs, bias, fast_bias = [], np.zeros(3), np.zeros(3)
            for ref, payload in zip(crops, payloads, strict=True):
                src = np.frombuffer(payload, dtype=np.uint8)
                for flags, total in ((fast, fast_bias), (0, bias)):  # accurate last: dst is its decode below
                    if decode_rgb(src, dst, flags) != 0:
                        raise RuntimeError(f"libturbojpeg could not decode a {size} px q{q} {chroma} JPEG")
                    total += (dst.astype(np.float64) - ref).mean(axis=(0, 1))
                mse = float(np.mean((dst.astype(np.float64) - ref) ** 2))
                psnrs.append(99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse))
            kib = sum(len(p) for p in payloads) / len(payloads) / 1024
            micros = 1e6 / payload_rate_one_core(payloads, size, True, seconds=0.5)
            lines.append(f"| {size} | {chroma} | {q} | {np.mean(psnrs):.1f} | {np.min(psnrs):.1f} | "
                         f"{_bias(bias, len(crops))} | {_bias(fast_bias, len(crops))} | {kib:.1f} | "
                         f"{100 * kib * 1024 / (size * size * 3):.1f}% | {micros:.0f} |")
    return "\n".join(lines)


def pages_report(beton: Path | None, worlds: Sequence[int] = (1, 2, 8), seed: int = 0) -> str:
    """Markdown table: pages each rank reads per epoch, quasi-random vs DistributedSampler-style.

    Uses the page of every sample in ``beton`` if given, and a simulated ImageNet-1k
    train beton (1,281,167 samples, 380 per 8 MiB page, about 22 KiB each at 256 q90).
    """
    from jit_ffcv._ffcv import Reader
    from jit_ffcv.order import epoch_order, max_open_pages, pages_touched, reader_sample_pages

    layouts: list[tuple[str, np.ndarray]] = []
    if beton is not None:
        page = reader_sample_pages(Reader(str(beton)))
        layouts.append((f"{beton.name} ({len(page):,} samples)", page))
    layouts.append(("simulated ImageNet-1k 256 q90 (1,281,167 samples)", np.arange(1_281_167) // 380))
    rows = ["| beton | W | pages in file | quasi-random: pages per rank (max) | max open pages | "
            "strided DistributedSampler: pages per rank |", "|---|---|---|---|---|---|"]
    for name, page in layouts:
        indices = np.arange(len(page))
        total = len(np.unique(page))
        for w in worlds:
            quasi = [epoch_order(page, indices, kind="quasi_random", num_replicas=w, rank=r, seed=seed, epoch=0,
                                 buffer_pages=256) for r in range(w)]
            perm = np.random.default_rng(seed).permutation(len(page))
            strided = [perm[r::w] for r in range(w)]  # torch DistributedSampler: indices[rank::W]
            rows.append(f"| {name} | {w} | {total:,} | {max(pages_touched(o, page) for o in quasi):,} | "
                        f"{max(max_open_pages(o, page) for o in quasi):,} | "
                        f"{max(pages_touched(o, page) for o in strided):,} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- bounds
def payload_rate_one_core(payloads: Sequence[bytes], size: int, jpg: bool, seconds: float = 1.5,
                          jpeg_decode: str = "accurate") -> float:
    """Images/s one core decodes (JPEG, :func:`jit_ffcv.jpeg.decode_rgb`) or copies (raw) ``payloads``.

    The loop is numba-compiled and single-threaded, exactly the call jit-ffcv's decoder
    makes per image (accurate IDCT unless ``jpeg_decode="fast"``), so it is the per-core
    ceiling of a loader that delivers these pixels.
    """
    from numba import njit

    from jit_ffcv._ffcv import Compiler, memcpy
    from jit_ffcv.jpeg import decode_flags, decode_rgb

    flat = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    offsets = np.cumsum([0] + [len(p) for p in payloads]).astype(np.int64)
    dst = np.empty((size, size, 3), dtype=np.uint8)
    copy_c, flags = Compiler.compile(memcpy), decode_flags(jpeg_decode)

    @njit(nogil=True)
    def one_pass(flat: np.ndarray, offsets: np.ndarray, dst: np.ndarray) -> None:
        for i in range(len(offsets) - 1):
            src = flat[offsets[i] : offsets[i + 1]]
            if jpg:
                decode_rgb(src, dst, flags)
            else:
                copy_c(src, dst)

    one_pass(flat, offsets, dst)  # compile
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one_pass(flat, offsets, dst)
        done += len(payloads)
    return done / (time.perf_counter() - start)


def decode_rate_one_core(beton: Path, seconds: float = 1.5, jpeg_decode: str = "accurate") -> float:
    """:func:`payload_rate_one_core` of the first 600 images stored in ``beton``."""
    from writers.metadata import read_metadata

    meta = read_metadata(beton)
    payloads, _ = read_payloads(beton, limit=600)
    return payload_rate_one_core(payloads, meta.img_size, meta.mode == "jpg", seconds, jpeg_decode)


# --------------------------------------------------------------------------- children
def _own_peak_mib() -> float:
    """This process's peak resident memory since its ``exec``, from /proc (Linux) or psutil."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class PeakRSS:
    """Peak memory of this process plus its worker processes, in MiB.

    This process's own peak is the kernel's exact high-water mark (``VmHWM``; not
    ``ru_maxrss``, which survives ``exec`` and would report the parent's size);
    workers (the reference's DataLoader processes) are sampled every 0.5 s.
    Sampling more often costs measurable CPU (psutil walks /proc).
    """

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        own = _own_peak_mib()
        workers = 0
        for child in self._proc.children(recursive=True):
            try:
                workers += child.memory_info().rss
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                pass
        return own + workers / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def _time_epochs(iterate_epoch: Callable[[int], int], epochs: int, min_seconds: float) -> tuple[float, float]:
    """(first epoch seconds, steady img/s over at least ``epochs - 1`` epochs and ``min_seconds``)."""
    start = time.perf_counter()
    iterate_epoch(0)
    first = time.perf_counter() - start
    images, epoch, start = 0, 1, time.perf_counter()
    while epoch < epochs or time.perf_counter() - start < min_seconds:
        images += iterate_epoch(epoch)
        epoch += 1
    return first, images / (time.perf_counter() - start)


def _reference_epochs(cfg: dict[str, Any]) -> Callable[[int], int]:
    """The seed's pipeline: ImageFolder -> PIL -> RGB -> center_crop_arr -> flip -> uint8 CHW."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, DistributedSampler

    from jit_ffcv.crop import center_crop_arr
    from writers.encode import load_rgb

    class Reference(Dataset):
        def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
            self.samples, self.size = samples, size

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            path, label = self.samples[i]
            img = center_crop_arr(load_rgb(path), self.size)
            if torch.rand(1) < 0.5:  # torchvision RandomHorizontalFlip
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            return torch.from_numpy(np.array(img)).permute(2, 0, 1), label  # PILToTensor

    samples = [tuple(s) for s in cfg["samples"]] * cfg["replicate"]
    dataset = Reference(samples, cfg["img_size"])
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=cfg["batch_size"], sampler=sampler, num_workers=cfg["workers"],
                        drop_last=True, persistent_workers=True, pin_memory=torch.cuda.is_available())

    def epoch(e: int) -> int:
        sampler.set_epoch(e)
        return sum(len(y) for _, y in loader)

    return epoch


def _ffcv_epochs(cfg: dict[str, Any]) -> Callable[[int], int]:
    """A bare FFCV Loader as its docs suggest: QUASI_RANDOM, FFCV's own flip."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    image = [SimpleRGBImageDecoder()] + ([RandomHorizontalFlip()] if cfg["flip"] else []) + [ToTensor(), ToTorchImage()]
    loader = Loader(cfg["beton"], batch_size=cfg["batch_size"], num_workers=cfg["workers"], os_cache=True,
                    order=OrderOption.QUASI_RANDOM, seed=0, drop_last=True,
                    pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()], "index": None})
    return lambda e: sum(len(y) for _, y in loader)


def _jit_epochs(cfg: dict[str, Any]) -> Callable[[int], int]:
    """jit-ffcv's DataModule train loader, defaults except the beton and sizes."""
    from jit_ffcv.datamodule import JiTDataModule

    mode, quality = _mode_quality(cfg["beton_name"])
    dm = JiTDataModule(data_path=str(Path(cfg["beton"]).parent), img_size=cfg["img_size"],
                       batch_size=cfg["batch_size"], num_workers=cfg["workers"], mode=mode, quality=quality,
                       train_beton=cfg["beton"], val_beton=str(Path(cfg["beton"]).with_suffix(".none")),
                       flip_prob=0.5 if cfg["flip"] else 0.0, output=cfg["output"], os_cache=cfg["os_cache"],
                       buffer_pages=cfg.get("buffer_pages"), device=cfg.get("device"),
                       jpeg_decode=cfg.get("jpeg_decode", "accurate"))
    dm.setup("fit")
    loader = dm.train_dataloader()

    def epoch(e: int) -> int:
        import torch

        loader.sampler.set_epoch(e)
        n = sum(len(y) for _, y in loader)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # count only batches that really arrived on the device
        return n

    return epoch


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Measure one pipeline in this (fresh) process; returns first-epoch s, img/s, peak RSS."""
    build = {"reference": _reference_epochs, "ffcv": _ffcv_epochs, "jit": _jit_epochs}[cfg["kind"]]
    with PeakRSS() as rss:
        iterate = build(cfg)
        first, rate = _time_epochs(iterate, cfg["epochs"], cfg.get("min_seconds", 0.0))
    return {"first_epoch_s": first, "img_per_s": rate, "peak_rss_mib": rss.peak}


def _spawn(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`run_child` in a fresh interpreter and parse its JSON line."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "jit_ffcv.bench", "--child", json.dumps(cfg)],
                          capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {cfg['kind']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- report
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


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options of ``jit-ffcv bench``."""
    p = argparse.ArgumentParser(prog="jit-ffcv bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the benchmark's options on ``p``."""
    p.add_argument("--data-path", default=None, help="dataset root with train/ (default: shared sample, else synthetic)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    p.add_argument("--target-samples", type=int, default=3000, help="replicate the source up to about this many samples")
    p.add_argument("--epochs", type=int, default=4, help="FFCV epochs per pipeline (the first is warm-up)")
    p.add_argument("--min-seconds", type=float, default=3.0, help="run FFCV pipelines at least this long (steady part)")
    p.add_argument("--out", default="bench_out", help="folder for the table, CSV, JSON, chart and cached betons")
    p.add_argument("--pipelines", nargs="*", default=None, help="substrings selecting pipelines (default: all)")
    p.add_argument("--skip-writer", action="store_true", help="skip the writer and memory-bound measurements")
    p.add_argument("--readme", default=None, help="README to update between <!-- bench:TAG --> markers")
    p.add_argument("--tag", default="cpu", help="marker tag used with --readme")
    p.add_argument("--quality-table", action="store_true", help="only print the JPEG quality/PSNR/size table")
    p.add_argument("--device", default="cpu", help="also measure jit-ffcv with batches delivered on this device "
                   "(e.g. cuda): uint8 and JiT's float x/255*2-1")
    p.add_argument("--pages", action="store_true", help="only print pages read per rank for W=1,2,8")
    p.add_argument("--mixing", action="store_true", help="only print quasi-random class mixing vs a shuffle "
                   "on a simulated class-sorted ImageNet-1k (W=1,8,64)")
    p.add_argument("--chart", default=None, help="where to save the PNG chart (default: OUT/chart.png)")
    from jit_ffcv.scale import add_arguments as add_scale_arguments

    return add_scale_arguments(p)


def main(args: argparse.Namespace) -> int:
    """Run every selected pipeline at every size; print and save the results."""
    from tqdm import tqdm

    if args.scale:
        from jit_ffcv.scale import main as scale_main

        return scale_main(args)
    if args.mixing:
        from jit_ffcv.mixing import mixing_report

        table = mixing_report(batch_size=args.batch_size)
        print(table)
        if args.readme:
            update_readme(Path(args.readme), "mixing", table)
        return 0
    out = Path(args.out)
    work = out / "betons"
    work.mkdir(parents=True, exist_ok=True)
    scan, source = dataset_scan(args.data_path, work)
    replicate = max(1, round(args.target_samples / len(scan.samples)))
    if args.pages:
        unique = build_betons(scan, args.sizes[0], ["jpg90"], replicate, work, args.workers, progress=False)["jpg90"]
        table = pages_report(unique)
        print(table)
        (out / "pages.md").write_text(table + "\n")
        if args.readme:
            update_readme(Path(args.readme), "pages", table)
        return 0
    if args.quality_table:
        table = quality_table(scan, args.sizes)
        print(f"JPEG quality vs PSNR against the exact crop, on {source}:\n{table}")
        (out / "quality.md").write_text(table + "\n")
        if args.readme:
            update_readme(Path(args.readme), "quality", table)
        return 0
    specs = [s for s in PIPELINES if not args.pipelines or any(k in s.name for k in args.pipelines)]
    if args.device != "cpu":
        specs += [Spec(f"jit-ffcv DataModule → {args.device} {out}, jpg q90", "jit", "jpg90", output=out)
                  for out in ("uint8", "float")]
    info = machine_info(args.workers)
    results: list[Result] = []
    notes = [f"Data: {source}, {len(scan.samples)} images replicated ×{replicate} = "
             f"{len(scan.samples) * replicate} samples per epoch; batch {args.batch_size}; "
             f"FFCV rows: {args.epochs - 1} steady epochs after 1 warm-up epoch (compile), os_cache=True."]
    bar = tqdm(total=len(specs) * len(args.sizes), desc="bench", unit="run")
    for size in args.sizes:
        names = sorted({s.beton for s in specs if s.beton})
        betons = build_betons(scan, size, names, replicate, work, args.workers, progress=False)
        limits = {n: decode_rate_one_core(p) * args.workers for n, p in betons.items()}
        for spec in specs:
            bar.set_postfix_str(f"{size}px {spec.name}")
            cfg = {"kind": spec.kind, "img_size": size, "batch_size": args.batch_size, "workers": args.workers,
                   "flip": spec.flip, "output": spec.output, "os_cache": True, "jpeg_decode": spec.jpeg_decode,
                   "device": args.device if spec.name.startswith("jit-ffcv DataModule →") else None,
                   "epochs": 2 if spec.kind == "reference" else args.epochs,
                   "min_seconds": 0.0 if spec.kind == "reference" else args.min_seconds}
            if spec.kind == "reference":
                cfg |= {"samples": scan.samples, "replicate": replicate}
            else:
                cfg |= {"beton": str(betons[spec.beton]), "beton_name": spec.beton}
            r = _spawn(cfg)
            bpi = None
            if spec.beton:
                from writers.metadata import read_metadata

                meta = read_metadata(betons[spec.beton])
                bpi = meta.payload_bytes / meta.num_samples
            results.append(Result(spec.name, size, r["img_per_s"], r["first_epoch_s"], r["peak_rss_mib"], bpi,
                                  limits.get(spec.beton) if spec.beton else None))
            bar.update(1)
        for n in names:
            notes.append(f"{size}px {n}: limit = one core's {'accurate decode' if n != 'raw' else 'copy'} rate "
                         f"{limits[n] / args.workers:,.0f} img/s × {args.workers} workers = {limits[n]:,.0f} img/s.")
        if any(s.jpeg_decode == "fast" for s in specs):
            fast = decode_rate_one_core(betons["jpg90"], jpeg_decode="fast")
            notes.append(f"{size}px jpg90: one core's fast-IDCT decode (opt-in, biased) {fast:,.0f} img/s; the "
                         f"accurate decode costs {100 * (fast * args.workers / limits['jpg90'] - 1):.1f}% more time "
                         f"per image.")
    bar.close()
    if not args.skip_writer:
        notes += _writer_and_memory_notes(scan, args, work)
    table = markdown(results, args.sizes, info, notes)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"machine": info, "results": [asdict(r) for r in results],
                                                  "notes": notes}, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in asdict(results[0]) if k != "extra"])
        writer.writeheader()
        for r in results:
            writer.writerow({k: v for k, v in asdict(r).items() if k != "extra"})
    chart_path = Path(args.chart) if args.chart else out / "chart.png"
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    chart(results, args.sizes, chart_path)
    if args.readme:
        update_readme(Path(args.readme), args.tag, table)
    print(f"\nsaved {out}/results.md, results.csv, results.json and {chart_path}")
    return 0


def _writer_and_memory_notes(scan: FolderScan, args: argparse.Namespace, work: Path) -> list[str]:
    """Writer speed-up from 1 to N workers and loader RSS for two beton sizes (process cache)."""
    notes = []
    imagenet = 1_281_167
    for size in args.sizes:
        rates = writer_rates(scan, size, work, sorted({1, args.workers}))
        r1, rn = rates[1], rates[max(rates)]
        eff = rn / (r1 * max(rates))
        minutes = imagenet / (r1 * 16 * min(eff, 1.0)) / 60
        notes.append(f"Writer {size}px jpg q90: {r1:,.0f} img/s with 1 worker, {rn:,.0f} with {max(rates)} "
                     f"({100 * eff:.0f}% linear); ImageNet-1k train (1,281,167 images) on 16 such cores ≈ "
                     f"{minutes:.0f} min, extrapolated at that efficiency, files in the page cache.")
    size = args.sizes[0]
    unique = build_betons(scan, size, ["raw"], 1, work, args.workers, progress=False)["raw"]
    rss = []
    for times in (4, 20):  # payloads 5x apart
        big = work / f"rss_{size}_raw_x{times}.beton"
        if not big.exists():
            replicate_beton(unique, big, times)
        cfg = {"kind": "jit", "img_size": size, "batch_size": args.batch_size, "workers": args.workers,
               "flip": True, "output": "uint8", "os_cache": False, "buffer_pages": 8, "epochs": 2,
               "beton": str(big), "beton_name": "raw"}
        rss.append((times, big.stat().st_size / 2**20, _spawn(cfg)["peak_rss_mib"]))
    notes.append("RSS: the loading process's peak (VmHWM) plus its worker processes sampled every 0.5 s "
                 "(the reference's DataLoader workers share pages with it, so its figure over-counts somewhat).")
    notes.append("Loader RSS with FFCV's process cache (os_cache=False, buffer_pages=8): " + "; ".join(
        f"beton {mib:,.0f} MiB → peak RSS {peak:,.0f} MiB" for _, mib, peak in rss) + ".")
    return notes


def _entry(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print("RESULT " + json.dumps(run_child(json.loads(argv[1]))), flush=True)
        return 0
    return main(parse_args(argv))


if __name__ == "__main__":
    sys.exit(_entry())
