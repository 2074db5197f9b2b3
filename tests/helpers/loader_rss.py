"""RSS of a process that builds a train loader, takes a batch and drops it, N times (Lightning's reload per epoch).

    python tests/helpers/loader_rss.py BETON [--loaders 50] [--batch-size 16] [--img-size 64] [--workers 1]

Prints one JSON line: the RSS (MiB) after the first loader and after the last, each after ``gc.collect()``.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path


def rss_mib() -> float:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("beton")
    p.add_argument("--loaders", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1, help="decoding threads per loader")
    args = p.parse_args()
    from jit_ffcv.datamodule import JiTDataModule

    dm = JiTDataModule(data_path=str(Path(args.beton).parent), train_beton=args.beton, img_size=args.img_size,
                       batch_size=args.batch_size, num_workers=args.workers, pin_memory=False, num_replicas=1, rank=0,
                       mode="raw" if "raw" in Path(args.beton).name else "jpg")
    dm.setup("fit")
    rss = []
    for _ in range(args.loaders):
        loader = dm.train_dataloader()
        next(iter(loader))
        del loader
        gc.collect()
        rss.append(rss_mib())
    print(json.dumps({"first_mib": rss[0], "last_mib": rss[-1], "loaders": args.loaders}))


if __name__ == "__main__":
    main()
