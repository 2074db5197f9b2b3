"""Launching DDP and torchrun children in tests: a clean environment and a free port; pages read without jit_ffcv."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
from ffcv.reader import Reader

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_env() -> dict[str, str]:
    """Offline, 2-core friendly environment without any inherited launcher state."""
    launcher = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "PL_GLOBAL_SEED", "CUDA_VISIBLE_DEVICES")
    env = {k: v for k, v in os.environ.items()
           if k not in launcher and not k.startswith(("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_"))}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def min_pages(beton: Path) -> np.ndarray:
    """First page of each sample, read from the beton's allocation table (independent of jit_ffcv)."""
    reader = Reader(str(beton))
    table = reader.alloc_table
    pages = np.full(reader.num_samples, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(pages, table["sample_id"].astype(np.int64), (table["ptr"] // reader.page_size).astype(np.int64))
    return pages
