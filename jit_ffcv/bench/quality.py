"""The JPEG quality table: PSNR and mean bias against the exact crop, size and decode time per setting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jit_ffcv.bench.limit import Payloads, one_core_rate
from writers.folder import FolderScan

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
            micros = 1e6 / one_core_rate(Payloads.of(payloads, size, True), seconds=0.5)
            lines.append(f"| {size} | {chroma} | {q} | {np.mean(psnrs):.1f} | {np.min(psnrs):.1f} | "
                         f"{_bias(bias, len(crops))} | {_bias(fast_bias, len(crops))} | {kib:.1f} | "
                         f"{100 * kib * 1024 / (size * size * 3):.1f}% | {micros:.0f} |")
    return "\n".join(lines)
