"""examples/jit/main_jit.py under torchrun: 2 gloo ranks, disjoint shards that cover each epoch, JiT's resume.

Two launches of ``python -m torch.distributed.run --standalone``: epochs 0-1 from scratch on 2 ranks, then
``--resume`` on 1 rank (JiT's checkpoints are epoch-granular, so the GPU count may change) with ``--epochs 3
--max_steps 2``, which must continue at epoch 2. Each rank logs the labels and pixel sums of every sample it
trained on (a flip keeps a sample's pixel sum), and the test checks them against Pillow's decode of the
stored JPEGs and the order ``jit_ffcv.order.epoch_order`` predicts. (The resume launch uses one rank to keep
the test short: every process pays ~10 s of CPU importing torch, Lightning and FFCV.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jit_ffcv.order import epoch_order
from jit_ffcv.synthetic import make_image_folder
from tests.helpers.ddp import ddp_env, min_pages
from writers.beton import read_payloads

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "jit" / "main_jit.py"
W, BATCH, IMG, SEED = 2, 4, 32, 5
N = 4 * 6  # 4 classes x 6 readable images (the 3 broken files are skipped by the writer)
STEPS = {2: N // 2 // BATCH, 1: N // BATCH}  # steps per epoch and rank at world size 2 (no padding) and 1
RESUMED_STEPS = 2  # --max_steps of the resumed run (1 rank: 2 of its 6 steps)

pytestmark = pytest.mark.slow


def launch(data: Path, out: Path, world: int, *extra: str) -> str:
    """Run the example on ``world`` gloo ranks; return its output (fail the test with it on a non-zero exit)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), str(SCRIPT),
           "--data_path", str(data), "--img_size", str(IMG), "--patch_size", "8", "--class_num", "4",
           "--batch_size", str(BATCH), "--num_workers", "1", "--seed", str(SEED), "--save_last_freq", "1",
           "--output_dir", str(out), "--resume", str(out), "--device", "cpu", "--log_samples", *extra]
    proc = subprocess.run(cmd, env=ddp_env(), cwd=str(out), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"example failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def records(out: Path) -> dict[int, list[dict]]:
    """Per rank, the epoch records its run(s) appended, in order."""
    return {r: [json.loads(line) for line in (out / f"samples_rank{r}.jsonl").read_text().splitlines()]
            for r in range(W)}


def stored(beton: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixel sums of Pillow's decode of every stored JPEG (what the accurate decode delivers) and the labels."""
    payloads, labels = read_payloads(beton)
    sums = np.array([np.asarray(Image.open(BytesIO(p)).convert("RGB"), dtype=np.int64).sum() for p in payloads])
    return sums, labels


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = make_image_folder(tmp_path_factory.mktemp("jit_example_data"), num_classes=4, per_class=6, val=False).root
    out = tmp_path_factory.mktemp("jit_example_out")
    first = launch(data, out, W, "--epochs", "2")
    after_first = records(out)
    epoch_after_first = torch.load(out / "checkpoint-last.pth", weights_only=True)["epoch"]
    second = launch(data, out, 1, "--epochs", "3", "--max_steps", str(RESUMED_STEPS))
    return {"beton": data / "ffcv" / f"train_{IMG}_jpg90.beton", "first": first, "second": second,
            "after_first": after_first, "records": records(out), "epoch_after_first": epoch_after_first,
            "checkpoint": torch.load(out / "checkpoint-last.pth", weights_only=True), "out": out}


def predicted(beton: Path, world: int, rank: int, epoch: int) -> list[int]:
    return epoch_order(min_pages(beton), np.arange(N), kind="quasi_random", num_replicas=world, rank=rank,
                       seed=SEED, epoch=epoch, buffer_pages=2 * BATCH).tolist()


def check_trained_on(beton: Path, record: dict, world: int, rank: int, epoch: int, steps: int) -> list[int]:
    """The record's samples are exactly the first ``steps`` batches of this rank's predicted order."""
    sums, labels = stored(beton)
    assert len(set(sums.tolist())) == N  # pixel sums identify samples in this data set
    order = predicted(beton, world, rank, epoch)
    assert (record["epoch"], record["rank"], record["world_size"]) == (epoch, rank, world)
    assert record["order"] == order and record["len_loader"] == STEPS[world] and record["steps"] == steps
    seen = order[: steps * BATCH]
    assert record["labels"] == labels[seen].tolist()
    assert record["pixel_sums"] == sums[seen].tolist()
    return seen


def test_both_ranks_train_disjoint_shards_that_cover_each_epoch(runs: dict) -> None:
    first = runs["after_first"]
    assert [[r["epoch"] for r in first[rank]] for rank in range(W)] == [[0, 1], [0, 1]]
    assert "training from scratch" in runs["first"]
    for epoch in (0, 1):
        shards = [check_trained_on(runs["beton"], first[rank][epoch], W, rank, epoch, STEPS[W]) for rank in range(W)]
        assert sorted(shards[0] + shards[1]) == list(range(N))  # disjoint and complete: 12 + 12 = 24
    assert first[0][0]["order"] != first[0][1]["order"]  # set_epoch reached the loader
    assert runs["epoch_after_first"] == 1


def test_resume_continues_at_the_next_epoch(runs: dict) -> None:
    ckpt = runs["out"] / "checkpoint-last.pth"
    assert f"resumed {ckpt}: epoch 1 done, continuing at epoch 2" in runs["second"]
    resumed = runs["records"][0][2:]
    assert [r["epoch"] for r in resumed] == [2]  # epochs 0 and 1 were not trained again
    check_trained_on(runs["beton"], resumed[0], 1, 0, 2, RESUMED_STEPS)  # --max_steps 2 of 6
    assert runs["records"][1] == runs["after_first"][1]  # no rank 1 in the resumed run
    assert runs["checkpoint"]["epoch"] == 2
    assert set(runs["checkpoint"]) == {"model", "optimizer", "epoch"}
