"""A real 2-process DDP fit on CPU (gloo), 2 decoding threads per rank: each rank trains on its predicted shard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jit_ffcv.ops import flip_mask
from jit_ffcv.order import epoch_order
from jit_ffcv.synthetic import SyntheticFolder, make_image_folder
from tests.helpers.data import read_beton
from tests.helpers.ddp import ddp_env, min_pages
from tests.helpers.ddp_fit import BATCH, FLIP, SEED
from writers.beton import write_split

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "helpers" / "ddp_fit.py"
N, W = 20, 2
PER_RANK = -(-N // W)
STEPS = PER_RANK // BATCH  # drop_last=True: 2 batches of 4 per rank and epoch
VAL_N = 36  # val: 18 samples per rank in batches of 4, 4, 4, 4, 2: more than the 4 buffer slots
VAL_SIZES = [4, 4, 4, 4, 2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_run(synthetic: SyntheticFolder, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    beton_dir = tmp_path_factory.mktemp("ddp_betons")
    out = tmp_path_factory.mktemp("ddp_out")
    # a larger val beton, with the same class names, from a second synthetic folder's train split
    val_source = make_image_folder(tmp_path_factory.mktemp("ddp_val"), per_class=VAL_N // 4, broken=False, val=False)
    val_beton = beton_dir / "val36.beton"
    write_split(val_source.root, "train", val_beton, img_size=64, mode="raw", num_workers=0, progress=False)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(synthetic.root), str(beton_dir), str(out),
                           str(val_beton)],
                          env=ddp_env(), cwd=str(out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"DDP run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    runs = {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(W)}
    pixels = {r: dict(np.load(out / f"rank{r}.npz")) for r in range(W)}
    return beton_dir / "train_64_raw.beton", runs, pixels, val_beton


def test_world_seen_by_every_rank(ddp_run: tuple) -> None:
    _, runs, _, _ = ddp_run
    assert sorted(run["global_rank"] for run in runs.values()) == [0, 1]
    for rank, run in runs.items():
        assert run["global_rank"] == rank and run["world_size"] == W
        assert run["dm_world"] == [W, rank] and run["order_shard"] == [W, rank] and run["distributed"]
        assert run["info"] == {"num_replicas": W, "rank": rank, "samples_per_rank": PER_RANK, "batches_per_rank": STEPS}
        # Lightning kept our loader and its sampler view (no DataLoader / DistributedSampler injected)
        assert (run["loader_type"], run["sampler_type"]) == ("JiTLoader", "EpochSampler")
        assert sorted(run["epochs"]) == ["0", "1"]


def test_each_rank_trains_on_its_predicted_shard(ddp_run: tuple) -> None:
    beton, runs, pixels, _ = ddp_run
    images, labels = read_beton(beton)
    pages = min_pages(beton)
    for rank, run in runs.items():
        for epoch in (0, 1):
            record = run["epochs"][str(epoch)]
            predicted = epoch_order(pages, np.arange(N), kind="quasi_random", num_replicas=W, rank=rank, seed=SEED,
                                    epoch=epoch, buffer_pages=2 * BATCH).tolist()
            assert record["sampler_epoch"] == epoch
            assert record["sampler"] == predicted
            assert record["len_loader"] == STEPS and record["positions"] == list(range(STEPS))
            delivered = predicted[: STEPS * BATCH]
            assert [len(b) for b in record["labels"]] == [BATCH] * STEPS
            assert sum(record["labels"], []) == labels[delivered].tolist()
            expected = images[delivered].copy()
            flips = flip_mask(SEED, epoch, delivered, FLIP)
            expected[flips] = expected[flips][:, :, ::-1]
            assert np.array_equal(pixels[rank][str(epoch)], expected.transpose(0, 3, 1, 2))


def test_ranks_partition_each_epoch(ddp_run: tuple) -> None:
    _, runs, _, _ = ddp_run
    for epoch in ("0", "1"):
        shards = [runs[r]["epochs"][epoch]["sampler"] for r in range(W)]
        assert [len(s) for s in shards] == [PER_RANK] * W
        union = shards[0] + shards[1]
        assert len(union) - N == PER_RANK * W - N == 0  # 20 = 2 * 10: no padding
        assert sorted(union) == list(range(N))  # disjoint and complete
    for rank in range(W):
        assert runs[rank]["epochs"]["0"]["sampler"] != runs[rank]["epochs"]["1"]["sampler"]


def test_each_rank_validates_its_contiguous_shard(ddp_run: tuple) -> None:
    """Sanity check (2 batches), then full validation after each epoch; exact, unflipped pixels."""
    _, runs, pixels, val_beton = ddp_run
    images, labels = read_beton(val_beton)
    assert len(labels) == VAL_N
    per_rank = VAL_N // W
    for rank, run in runs.items():
        shard = list(range(rank * per_rank, (rank + 1) * per_rank))
        assert [r["sanity"] for r in run["val_runs"]] == [True, False, False]
        for i, val_run in enumerate(run["val_runs"]):
            sizes = VAL_SIZES[:2] if val_run["sanity"] else VAL_SIZES
            assert [len(b) for b in val_run["labels"]] == sizes
            seen = shard[: sum(sizes)]
            assert sum(val_run["labels"], []) == labels[seen].tolist()
            assert np.array_equal(pixels[rank][f"val{i}"], images[seen].transpose(0, 3, 1, 2))
