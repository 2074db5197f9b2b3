"""Mid-epoch resume of JiTLoader: same world (exact stream), elastic (exactly once), refusals, Lightning."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jit_ffcv.datamodule import JiTDataModule
from jit_ffcv.loader import JiTLoader
from jit_ffcv.ops import flip_mask
from jit_ffcv.order import KINDS, epoch_order, epoch_orders
from jit_ffcv.resume import ResumeTracker
from jit_ffcv.synthetic import make_image_folder
from tests.helpers.data import read_beton

N, B, SEED, FLIP = 45, 3, 5, 0.5  # 5 classes x 9 images


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset root, beton dir) with a 45-image raw train beton."""
    root = tmp_path_factory.mktemp("resume_data")
    make_image_folder(root, num_classes=5, per_class=9, broken=False, val=False)
    dm = JiTDataModule(data_path=str(root), img_size=64, batch_size=B, mode="raw", write_workers=0,
                       beton_dir=str(root / "ffcv"))
    dm.prepare_data()
    return root, root / "ffcv"


@pytest.fixture(scope="module")
def reference(data: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    return read_beton(data[1] / "train_64_raw.beton")


def make_dm(data: tuple[Path, Path], world: int = 1, rank: int = 0, **kwargs: Any) -> JiTDataModule:
    options: dict[str, Any] = dict(data_path=str(data[0]), img_size=64, batch_size=B, num_workers=2, mode="raw",
                                   beton_dir=str(data[1]), seed=SEED, flip_prob=FLIP, num_replicas=world, rank=rank)
    options.update(kwargs)
    return JiTDataModule(**options)


_LOADERS: dict[tuple, JiTLoader] = {}


def make_loader(data: tuple[Path, Path], world: int = 1, rank: int = 0, copy: int = 0, **kwargs: Any) -> JiTLoader:
    """A loader for rank ``rank`` of ``world``, as a fresh process would build it.

    Building one compiles its pipeline (seconds on 2 cores), so loaders are cached and reused
    with their position forgotten; ``copy`` tells apart loaders that must coexist.
    """
    key = (data, world, rank, copy, tuple(sorted(kwargs.items())))
    if key not in _LOADERS:
        _LOADERS[key] = make_dm(data, world, rank, **kwargs).train_dataloader()
    loader = _LOADERS[key]
    loader.resume = ResumeTracker()
    loader.set_epoch(0)
    return loader


class Stream:
    """Samples a loader delivered: indices (from its sampler), labels and NCHW pixels, per epoch."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.labels: list[int] = []
        self.pixels: list[np.ndarray] = []
        self.epochs: list[int] = []

    def take(self, loader: JiTLoader, batches: int | None = None) -> None:
        """Run ``batches`` batches (all if None) of the loader's next epoch."""
        epoch, order = loader.sampler.epoch, list(loader.sampler)
        done = 0
        for x, y in loader:
            y = y.reshape(-1)  # the DataModule's Squeeze makes a 1-sample batch's labels 0-d
            self.labels += y.tolist()
            self.pixels.append(x.numpy().copy())
            self.indices += order[done:done + len(y)]
            self.epochs += [epoch] * len(y)
            done += len(y)
            if batches is not None and done >= batches * B:
                break

    def check(self, reference: tuple[np.ndarray, np.ndarray]) -> None:
        """Labels and pixels (flips included) are exactly those of the recorded indices and epochs."""
        images, labels = reference
        assert self.labels == labels[self.indices].tolist()
        if not self.indices:
            return
        expected = images[self.indices].copy()
        for epoch in set(self.epochs):
            at = np.flatnonzero(np.array(self.epochs) == epoch)
            flips = at[flip_mask(SEED, epoch, np.array(self.indices)[at], FLIP)]
            expected[flips] = expected[flips][:, :, ::-1]
        assert np.array_equal(np.concatenate(self.pixels), expected.transpose(0, 3, 1, 2))


_STREAMS: dict[tuple, Stream] = {}


def uninterrupted(data: tuple[Path, Path], world: int, rank: int, epochs: int = 2, **kwargs: Any) -> Stream:
    """What rank ``rank`` of ``world`` delivers in epochs 0..epochs-1 without interruption (cached)."""
    key = (data, world, rank, epochs, tuple(sorted(kwargs.items())))
    if key not in _STREAMS:
        _STREAMS[key] = _uninterrupted(data, world, rank, epochs, **kwargs)
    return _STREAMS[key]


def _uninterrupted(data: tuple[Path, Path], world: int, rank: int, epochs: int, **kwargs: Any) -> Stream:
    stream, loader = Stream(), make_loader(data, world, rank, copy=3, **kwargs)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        stream.take(loader)
    return stream


# --------------------------------------------------------------------------- #
# all ranks' orders at once
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 3, 8])
def test_epoch_orders_equal_epoch_order(kind: str, drop_last: bool, world: int) -> None:
    pages = np.repeat(np.arange(9), 5)[np.random.default_rng(0).permutation(N)]
    indices = np.arange(100, 100 + N)
    orders = epoch_orders(pages, indices, kind=kind, num_replicas=world, seed=7, epoch=3, drop_last=drop_last,
                          buffer_pages=2)
    assert len(orders) == world
    for rank, order in enumerate(orders):
        expected = epoch_order(pages, indices, kind=kind, num_replicas=world, rank=rank, seed=7, epoch=3,
                               drop_last=drop_last, buffer_pages=2)
        assert order.dtype == expected.dtype and np.array_equal(order, expected)


# --------------------------------------------------------------------------- #
# same world: the resumed stream is the uninterrupted one
# --------------------------------------------------------------------------- #
def _stops(steps: int) -> list[int]:
    """Interruption points: before the first step, after the first, a random one, after the last but one and last."""
    rng = np.random.default_rng(steps)
    return sorted({0, 1, int(rng.integers(2, steps - 1)), steps - 1, steps})


@pytest.mark.filterwarnings("error")  # same-world resume never warns
@pytest.mark.parametrize(("world", "options"), [
    (1, {}), (1, {"drop_last": False}), (2, {}), (3, {"sampler_drop_last": True, "order": "random"}),
])
def test_same_world_resume_is_exact(data: tuple[Path, Path], reference: tuple, world: int,
                                    options: dict[str, Any]) -> None:
    full = [uninterrupted(data, world, r, epochs=3, **options) for r in range(world)]
    steps = len(make_loader(data, world, 0, **options))
    per_epoch = len(full[0].indices) // 3
    for epoch in (0, 1):
        for stop in _stops(steps):
            before = [make_loader(data, world, r, **options) for r in range(world)]  # the run that stops
            heads = [Stream() for _ in range(world)]
            for loader, head in zip(before, heads, strict=False):
                loader.set_epoch(epoch)
                head.take(loader, stop) if stop else None
            states = [loader.state_dict() for loader in before]
            assert all(s == states[0] for s in states)  # rank-independent: rank 0's state serves everyone
            state = json.loads(json.dumps(states[0]))  # plain data: survives any checkpoint format
            for rank in range(world):
                after = make_loader(data, world, rank, copy=1, **options)  # the run that resumes
                after.load_state_dict(state)
                assert len(after) == steps  # counted from the epoch's start, as Lightning expects
                tail = Stream()
                tail.take(after)  # the rest of `epoch`, then the next epoch, without any set_epoch
                assert after.state_dict()["segments"] == [[world, per_epoch]]
                tail.take(after)
                seen = heads[rank].indices + tail.indices
                start = epoch * per_epoch
                assert seen == full[rank].indices[start:start + 2 * per_epoch], (epoch, stop, rank)
                assert heads[rank].labels + tail.labels == full[rank].labels[start:start + 2 * per_epoch]
                pixels = np.concatenate(heads[rank].pixels + tail.pixels)
                assert np.array_equal(pixels, np.concatenate(full[rank].pixels)[start:start + 2 * per_epoch])
                tail.check(reference)


def test_resumed_epoch_skips_without_decoding(data: tuple[Path, Path]) -> None:
    """FFCV is handed only the unseen rest of the order: nothing skipped is read or decoded."""
    head = make_loader(data)
    Stream().take(head, 4)
    after = make_loader(data, copy=1)
    after.load_state_dict(head.state_dict())
    batches = iter(after)
    next(batches)
    assert sum(len(batch) for batch in after._running.batches) == (N // B - 4) * B
    assert after.sampler.epoch == 1 and len(after) == N // B  # FFCV moved on; the next epoch is a full one
    batches.close()


def test_state_at_epoch_boundaries(data: tuple[Path, Path]) -> None:
    loader = make_loader(data)
    assert loader.state_dict()["epoch"] == 0 and loader.state_dict()["segments"] == [[1, 0]]
    Stream().take(loader)
    assert loader.state_dict()["segments"] == [[1, N]]  # epoch 0 done: resuming it delivers nothing
    loader.set_epoch(4)
    assert (loader.state_dict()["epoch"], loader.state_dict()["segments"]) == (4, [[1, 0]])
    after = make_loader(data, copy=1)
    after.load_state_dict({**make_loader(data).state_dict(), "segments": [[1, N]]})
    assert list(after) == [] and after.sampler.epoch == 1


def test_other_epoch_drops_the_loaded_state_with_a_warning(data: tuple[Path, Path]) -> None:
    head = make_loader(data)
    Stream().take(head, 2)
    after = make_loader(data, copy=1)
    after.load_state_dict(head.state_dict())
    after.set_epoch(3)
    assert len(after) == N // B and len(list(after.sampler)) == N
    with pytest.warns(UserWarning, match=r"loaded for epoch 0 was not used: epoch 3 started"):
        Stream().take(after, 1)


@pytest.mark.parametrize(("key", "change"), [
    ("seed", {"seed": 6}), ("order", {"order": "random"}), ("batch_size", {"batch_size": 5, "buffer_pages": 2 * B}),
    ("drop_last", {"drop_last": False}), ("sampler_drop_last", {"sampler_drop_last": True}),
    ("buffer_pages", {"buffer_pages": 1}),
])
def test_mismatching_state_is_refused(data: tuple[Path, Path], key: str, change: dict[str, Any]) -> None:
    state = make_loader(data).state_dict()
    with pytest.raises(ValueError, match=rf"saved with {key}=.* but this loader has {key}=.*build the loader with"):
        make_loader(data, **change).load_state_dict(state)


@pytest.mark.parametrize(("state", "match"), [
    ({"epoch": 0}, "not a JiTLoader state"),
    ({"version": 99}, "version 99 is not supported"),
    ({"num_samples": 44}, "saved with num_samples=44"),
    ({"segments": [[1, 46]]}, "46 samples consumed of a 45-sample segment"),
    ({"segments": []}, "segments must be"),
])
def test_bad_state_is_refused(data: tuple[Path, Path], state: dict[str, Any], match: str) -> None:
    loader = make_loader(data, drop_last=False)
    good = loader.state_dict()
    bad = state if "epoch" in state else {**good, **state}
    with pytest.raises(ValueError, match=match):
        loader.load_state_dict(bad)


# --------------------------------------------------------------------------- #
# elastic: W -> W'
# --------------------------------------------------------------------------- #
def _run_world(data: tuple[Path, Path], world: int, state: dict | None, epoch: int, stop: int | None,
               **options: Any) -> tuple[list[Stream], dict, list[JiTLoader]]:
    """All ranks of a world run ``stop`` batches (all if None) of ``epoch``, resumed from ``state`` if given."""
    loaders = [make_loader(data, world, r, **options) for r in range(world)]
    streams = [Stream() for _ in range(world)]
    for loader, stream in zip(loaders, streams, strict=False):
        loader.load_state_dict(state) if state else loader.set_epoch(epoch)
        stream.take(loader, stop)
    states = [loader.state_dict() for loader in loaders]
    assert all(s == states[0] for s in states)
    return streams, states[0], loaders


@pytest.mark.filterwarnings("ignore:elastic resume at world size")  # expected; its own test checks it
@pytest.mark.parametrize(("worlds", "stops"), [
    ((2, 3), (2,)), ((3, 2), (1,)), ((2, 1), (3,)), ((1, 3), (0,)), ((2, 3, 2), (2, 1)), ((3, 2, 3), (2, 1)),
    ((2, 3), (7,)),  # old world finished its epoch: nothing is owed
])
@pytest.mark.parametrize("drop_last", [True, False])
def test_elastic_resume_delivers_the_unseen_rest_exactly_once(data: tuple[Path, Path], reference: tuple,
                                                              worlds: tuple[int, ...], stops: tuple[int, ...],
                                                              drop_last: bool) -> None:
    first = [uninterrupted(data, worlds[0], r, epochs=2, drop_last=drop_last) for r in range(worlds[0])]
    epoch, state = 1, None
    seen: list[int] = []  # every sample delivered in this epoch, over all worlds
    owed: list[int] = []  # what the world that stopped still owed, in the global sequence's order
    for world, stop in zip(worlds, stops + (None,), strict=False):
        state_in = state
        streams, state, loaders = _run_world(data, world, state, epoch, stop, drop_last=drop_last)
        lengths = {len(s.indices) for s in streams}
        assert len(lengths) == 1  # equal per-rank lengths: DDP ranks step together
        if state_in is not None:  # resumed elastically: the owed samples, padded cyclically, split contiguously
            unit = world * (B if drop_last else 1)
            padded = list(np.resize(owed, -(-len(owed) // unit) * unit)) if owed else []
            per = len(padded) // world
            for rank, stream in enumerate(streams):  # a stopped world delivered a prefix of its share
                assert stream.indices == padded[rank * per:rank * per + len(stream.indices)]
                assert stop is not None or len(stream.indices) == per
            assert len(padded) - len(owed) < unit
        for s in streams:
            s.check(reference)
            seen += s.indices
        if stop is not None:  # the rest of each rank's order, in rank order
            nxt = [list(loader.sampler) for loader in make_and_load(data, world, state, drop_last)]
            owed = sum(nxt, [])
        assert all(loader.sampler.epoch == epoch + 1 for loader in loaders)
    # exactly once: the samples delivered this epoch are the uninterrupted first world's, plus padding
    whole = Counter(sum((f.indices[len(f.indices) // 2:] for f in first), []))  # epoch 1
    extra = Counter(seen) - whole
    assert Counter(seen) - extra == whole  # nothing owed was skipped
    assert sum(extra.values()) < sum(w * (B if drop_last else 1) for w in worlds[1:])  # padding only
    # the next epoch is a plain one at the new world
    last = worlds[-1]
    for rank, loader in enumerate(loaders):
        expected = epoch_order(loader.traversal_order.sample_pages, np.arange(N), kind="quasi_random",
                               num_replicas=last, rank=rank, seed=SEED, epoch=epoch + 1, buffer_pages=2 * B)
        assert list(loader.sampler) == expected.tolist()
        assert len(loader) == len(make_loader(data, last, rank, copy=2, drop_last=drop_last))


def test_elastic_resume_warns_about_the_epoch_length(data: tuple[Path, Path]) -> None:
    _, state, _ = _run_world(data, 2, None, 1, 2)
    with pytest.warns(UserWarning, match=r"world size 3 of epoch 1 \(started at world size 2\): it has 6 batches, "
                                         r"not 5; plain loops are fine, but Lightning fixes the epoch length"):
        # 2 batches before + 4: the 2 * (21 - 6) = 30 owed samples padded to 36 = 3 ranks x 4 batches x 3
        make_loader(data, 3, 0).load_state_dict(state)


def make_and_load(data: tuple[Path, Path], world: int, state: dict, drop_last: bool) -> list[JiTLoader]:
    """Loaders of the same world resumed from ``state``: their samplers show what each rank still owes."""
    loaders = [make_loader(data, world, r, copy=1, drop_last=drop_last) for r in range(world)]
    for loader in loaders:
        loader.load_state_dict(state)
    return loaders


# --------------------------------------------------------------------------- #
# Lightning: ModelCheckpoint(every_n_train_steps) + fit(ckpt_path)
# --------------------------------------------------------------------------- #
def _fit(data: tuple[Path, Path], ckpt_dir: Path | None, ckpt_path: Path | None) -> Any:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.helpers.resume_ddp_fit import Recorder  # the DDP child's recorder, in one process here

    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1)] \
        if ckpt_dir else []
    model = Recorder()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                         enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=make_dm(data, num_replicas=None, rank=None), ckpt_path=ckpt_path)
    return model


def test_lightning_resume_from_step_checkpoints_is_exact(data: tuple[Path, Path], tmp_path: Path) -> None:
    full = _fit(data, tmp_path, None)
    steps = N // B
    assert [s[:2] for s in full.steps] == [(e, i) for e in (0, 1) for i in range(steps)]
    for step in (1, steps, steps + 1, steps + 9, 2 * steps - 1):
        resumed = _fit(data, None, tmp_path / f"step={step}.ckpt")
        assert resumed.steps == full.steps[step:], step  # same epochs, batch_idx, samples
        assert np.array_equal(np.concatenate(resumed.pixels), np.concatenate(full.pixels[step:]))


# --------------------------------------------------------------------------- #
# 2-process DDP (gloo): resume from a rank-0 checkpoint taken mid-epoch
# --------------------------------------------------------------------------- #
def _ddp_fit(data: tuple[Path, Path], out: Path, ckpt_dir: Path, ckpt_path: Path | None = None) -> list[tuple]:
    import subprocess
    import sys

    from tests.helpers.ddp import ddp_env

    out.mkdir()
    script = Path(__file__).parent / "helpers" / "resume_ddp_fit.py"
    args = [sys.executable, str(script), str(data[0]), str(data[1]), str(out), str(ckpt_dir)]
    proc = subprocess.run(args + ([str(ckpt_path)] if ckpt_path else []), env=ddp_env(), cwd=str(out),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"DDP run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [(json.loads((out / f"rank{r}.json").read_text()), np.load(out / f"rank{r}.npy")) for r in range(2)]


@pytest.mark.slow
def test_ddp_resume_from_mid_epoch_checkpoint_is_exact(data: tuple[Path, Path], tmp_path: Path) -> None:
    full = _ddp_fit(data, tmp_path / "full", tmp_path / "ckpt")
    steps = -(-N // 2) // B  # 23 samples per rank, 7 full batches
    for record, _ in full:
        assert [tuple(s[:2]) for s in record] == [(e, i) for e in (0, 1) for i in range(steps)]
    step = steps + 3  # epoch 1, after its 3rd step
    resumed = _ddp_fit(data, tmp_path / "resumed", tmp_path / "ckpt", tmp_path / "ckpt" / f"step={step}.ckpt")
    for rank in range(2):
        assert resumed[rank][0] == full[rank][0][step:]
        assert np.array_equal(resumed[rank][1], full[rank][1][step * B:])


def test_resume_latency_bench_runs_and_resumes_the_right_rank() -> None:
    """The ImageNet-size latency bench, tiny: it must time a real resume (not just report numbers)."""
    from jit_ffcv.bench.resume_latency import resume_latency

    timings = resume_latency(num_samples=5_000, world=8, new_world=4, batch_size=16, samples_per_page=40, repeats=1)
    assert sorted(timings) == ["elastic W=8->4", "plain epoch start", "same world W=8"]
    assert all(0 < t < 30 for t in timings.values())
