"""Exact mid-epoch and elastic resume for :class:`~jit_ffcv.loader.JiTLoader`.

A loader's position is tiny and rank-independent: the epoch and, per *segment* of that
epoch (a stretch run at one world size W), how many samples of its order every rank has
delivered. Every rank recomputes from it, at any world size, what is still owed:

* same world (W' = W): rank r resumes its own order at the saved offset, so the resumed run
  delivers exactly the batches the uninterrupted run would have (same samples, order, flips);
* elastic (W' != W): the samples the old ranks still owed (each old rank's order after its
  first ``consumed``, concatenated by rank, which keeps page locality) are padded cyclically
  (DistributedSampler style) to a multiple of W' (times the batch size with ``drop_last``, so no
  partial batch is dropped) and split contiguously over the W' ranks.

Nothing is decoded to skip: the resumed epoch's order is a slice. The state is what
``JiTLoader.state_dict()`` returns; Lightning saves rank 0's in its checkpoints and gives it
to every rank's loader on ``fit(ckpt_path=...)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from jit_ffcv.traversal import ShardedOrder

from jit_ffcv.order import epoch_orders, samples_per_rank

if TYPE_CHECKING:
    from jit_ffcv.loader import JiTLoader

__all__ = ["FORMAT", "VERSION", "Position", "ResumeTracker", "resume_orders"]

FORMAT: Final[str] = "jit_ffcv.loader_state"
VERSION: Final[int] = 1

Segment = tuple[int, int]  # (world size, samples each rank consumed in that stretch of the epoch)


@dataclass(frozen=True)
class Spec:
    """What the order of an epoch depends on, besides the epoch and the world; must match to resume."""

    num_samples: int
    seed: int
    order: str
    sampler_drop_last: bool
    buffer_pages: int | None
    batch_size: int
    drop_last: bool

    @classmethod
    def of(cls, loader: JiTLoader) -> Spec:
        """The spec of ``loader``; only jit_ffcv's sharded orders can resume."""
        order = loader.traversal_order
        if not isinstance(order, ShardedOrder):
            raise TypeError(
                f"resume needs one of jit_ffcv's orders (QuasiRandomOrder, RandomOrder, SequentialOrder), "
                f"got order={type(order).__name__}; pass order=QuasiRandomOrder(...) to the loader"
            )
        return cls(num_samples=len(order._require_bound()), seed=int(order.seed), order=order.kind,
                   sampler_drop_last=order.drop_last,
                   buffer_pages=int(order.buffer_pages) if order.kind == "quasi_random" else None,
                   batch_size=int(loader.batch_size), drop_last=bool(loader.drop_last))

    def delivered(self, per_rank: int) -> int:
        """Samples of a rank's epoch order that batches deliver (the loader's drop_last drops a partial batch)."""
        return per_rank // self.batch_size * self.batch_size if self.drop_last else per_rank

    def padded(self, owed: int, world: int) -> int:
        """Size after elastic padding: a multiple of ``world`` (times the batch size with drop_last)."""
        unit = world * self.batch_size if self.drop_last else world
        return math.ceil(owed / unit) * unit

    def batches(self, samples: int) -> int:
        """Batches that deliver ``samples`` samples."""
        return math.ceil(samples / self.batch_size)


def segment_lengths(spec: Spec, segments: list[Segment], world: int) -> list[int]:
    """Per-rank samples of each segment in ``segments`` and of a next one at ``world`` (the last entry)."""
    worlds = [w for w, _ in segments] + [world]
    lengths = [spec.delivered(samples_per_rank(spec.num_samples, worlds[0], spec.sampler_drop_last))]
    for (w, consumed), next_world in zip(segments, worlds[1:]):
        lengths.append(spec.padded(w * (lengths[-1] - consumed), next_world) // next_world)
    return lengths


def _shard(owed: np.ndarray, world: int, spec: Spec) -> list[np.ndarray]:
    """Pad ``owed`` cyclically (DistributedSampler style) and split it contiguously over ``world`` ranks."""
    size = spec.padded(len(owed), world)
    padded = np.resize(owed, size) if size else owed[:0]
    per = size // world
    return [padded[r * per:(r + 1) * per] for r in range(world)]


def resume_orders(loader: JiTLoader, epoch: int, segments: list[Segment], world: int) -> list[np.ndarray]:
    """Every rank's order (at ``world``) for the segment of ``epoch`` that follows ``segments``.

    ``segments`` are the finished stretches of the epoch, oldest first; with none, this is the
    plain epoch order (less the loader's dropped partial batch).
    """
    spec, order = Spec.of(loader), loader.traversal_order
    orders = [o[:spec.delivered(len(o))] for o in epoch_orders(
        order.sample_pages, order.indices, kind=order.kind, num_replicas=segments[0][0] if segments else world,
        seed=order.seed, epoch=epoch, drop_last=order.drop_last, buffer_pages=order.buffer_pages or 1)]
    next_worlds = [w for w, _ in segments[1:]] + [world]
    for (_, consumed), next_world in zip(segments, next_worlds):
        owed = np.concatenate([o[consumed:] for o in orders])
        orders = _shard(owed, next_world, spec)
    return orders


@dataclass
class Position:
    """Where a loader stands in ``epoch``: finished ``segments``, then ``start`` + ``batches`` of the current one."""

    epoch: int
    segments: list[Segment]
    world: int
    start: int = 0  # samples of the current segment consumed before this run
    length: int = 0  # samples of the current segment (per rank)
    batches: int = 0  # batches delivered by this run

    def consumed(self, batch_size: int) -> int:
        """Samples of the current segment delivered so far (a partial last batch counts its size)."""
        return min(self.start + self.batches * batch_size, self.length)

    def state(self, spec: Spec) -> dict[str, Any]:
        """The checkpointable dict (see :meth:`ResumeTracker.load_state_dict`)."""
        segments = [list(s) for s in self.segments] + [[self.world, self.consumed(spec.batch_size)]]
        return {"format": FORMAT, "version": VERSION, "epoch": self.epoch, "segments": segments,
                "batches": sum(spec.batches(c) for _, c in segments), **asdict(spec)}


class ResumeTracker:
    """Per-loader resume bookkeeping: the position of the running epoch and a loaded plan, if any."""

    def __init__(self) -> None:
        self.plan: Position | None = None  # loaded by load_state_dict, applies to plan.epoch
        self.current: Position | None = None  # the epoch started last
        self._plan_order: np.ndarray | None = None

    # ------------------------------------------------------------ orders
    def _applies(self, loader: JiTLoader) -> bool:
        return self.plan is not None and self.plan.epoch == loader.next_epoch

    def order(self, loader: JiTLoader) -> np.ndarray:
        """This rank's order for the loader's next epoch: the unseen remainder if it is a resumed one."""
        if not self._applies(loader):
            return loader.traversal_order.sample_order(loader.next_epoch)
        if self._plan_order is None:
            plan, rank = self.plan, loader.traversal_order.rank
            if plan.segments:
                full = resume_orders(loader, plan.epoch, plan.segments, plan.world)[rank]
            else:  # same world, first segment: this rank's order only (one rank's work)
                full = loader.traversal_order.sample_order(plan.epoch)[:plan.length]
            self._plan_order = full[plan.start:]
        return self._plan_order

    def num_samples(self, loader: JiTLoader) -> int:
        """Samples of the next epoch's order (the remainder for a resumed epoch)."""
        if self._applies(loader):
            return self.plan.length - self.plan.start
        return int(loader.traversal_order.num_samples())

    def length(self, loader: JiTLoader) -> int | None:
        """``len(loader)`` of a resumed next epoch: batches delivered before + batches left; else None.

        A finished epoch keeps the normal length: it delivers nothing, and Lightning moves on from it.
        """
        if not self._applies(loader) or self.plan.start >= self.plan.length:
            return None
        spec, plan = Spec.of(loader), self.plan
        before = sum(spec.batches(c) for _, c in plan.segments) + spec.batches(plan.start)
        return before + spec.batches(plan.length - plan.start)

    def begin(self, loader: JiTLoader, epoch: int, delivered: int) -> Position:
        """Record that ``epoch`` started with ``delivered`` samples to deliver; returns its live position."""
        if self.plan is not None and self.plan.epoch == epoch:
            self.current = self.plan
        else:
            if self.plan is not None and self.plan.start < self.plan.length:
                warnings.warn(
                    f"the loader state loaded for epoch {self.plan.epoch} was not used: epoch {epoch} started "
                    f"instead (call set_epoch({self.plan.epoch}) to finish the interrupted epoch)", stacklevel=3)
            self.current = Position(epoch, [], loader.traversal_order.num_replicas, 0, delivered)
        self.plan, self._plan_order = None, None
        return self.current

    # ------------------------------------------------------------ state
    def state_dict(self, loader: JiTLoader) -> dict[str, Any]:
        """Position after the last batch handed out (a pending loaded plan if nothing ran since)."""
        spec = Spec.of(loader)
        if self._applies(loader):
            return self.plan.state(spec)
        if self.current is not None and self.current.epoch == loader.next_epoch - 1:
            return self.current.state(spec)
        world = loader.traversal_order.num_replicas
        return Position(loader.next_epoch, [], world).state(spec)

    def load_state_dict(self, loader: JiTLoader, state: dict[str, Any]) -> None:
        """Make the loader's next epoch the rest of the saved one, at this loader's world size."""
        spec = Spec.of(loader)
        _check_state(state, spec)
        segments = [(int(w), int(c)) for w, c in state["segments"]]
        world = loader.traversal_order.num_replicas
        if segments[-1][0] == world:  # same world: continue the last segment where it stopped
            finished, start = segments[:-1], segments[-1][1]
        else:
            finished, start = segments, 0
        length = segment_lengths(spec, finished, world)[-1]
        self.plan = Position(int(state["epoch"]), finished, world, start, length)
        self._plan_order = None
        loader.set_epoch(self.plan.epoch)
        normal = spec.batches(segment_lengths(spec, [], world)[0])
        if finished and start < length and self.length(loader) != normal:
            warnings.warn(
                f"elastic resume at world size {world} of epoch {self.plan.epoch} (started at world size "
                f"{segments[0][0]}): it has "
                f"{self.length(loader)} batches, not {normal}; plain loops are fine, but Lightning fixes the "
                "epoch length when fit starts: under Lightning, resume at the saved world size (elastic resume "
                "is not supported there)",
                stacklevel=3)


def _check_state(state: Any, spec: Spec) -> None:
    """Refuse states of another format, or saved with options that change the order."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not a JiTLoader state (expected format={FORMAT!r}): {str(state)[:200]}")
    if state.get("version") != VERSION:
        raise ValueError(f"JiTLoader state version {state.get('version')!r} is not supported (this is {VERSION})")
    for key, value in asdict(spec).items():
        if state.get(key) != value:
            raise ValueError(
                f"cannot resume: the loader state was saved with {key}={state.get(key)!r} but this loader has "
                f"{key}={value!r}; build the loader with {key}={state.get(key)!r} (the epoch order depends on it) "
                "or start without loading the loader state")
    segments = state.get("segments")
    if not segments or any(len(s) != 2 or int(s[0]) < 1 for s in segments):
        raise ValueError(f"corrupt JiTLoader state: segments must be [[world, consumed], ...], got {segments!r}")
    lengths = segment_lengths(spec, [(int(w), int(c)) for w, c in segments[:-1]], int(segments[-1][0]))
    for (w, c), length in zip(segments, lengths):
        if not 0 <= int(c) <= length:
            raise ValueError(f"corrupt JiTLoader state: {c} samples consumed of a {length}-sample segment at world {w}")


# --------------------------------------------------------------------------- #
# resume latency at ImageNet scale: python -m jit_ffcv.resume
# --------------------------------------------------------------------------- #
class _OrderOnlyLoader:
    """The attributes ResumeTracker reads from a JiTLoader, over an order with no beton behind it."""

    def __init__(self, order: ShardedOrder, batch_size: int) -> None:
        self.traversal_order, self.batch_size, self.drop_last, self.next_epoch = order, batch_size, True, 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch


def _imagenet_loader(world: int, rank: int, num_samples: int, samples_per_page: int, batch_size: int,
                     seed: int) -> _OrderOnlyLoader:
    from jit_ffcv.traversal import QuasiRandomOrder

    order = QuasiRandomOrder(num_replicas=world, rank=rank)
    order.indices = np.arange(num_samples)
    order.sample_pages = order.indices // samples_per_page
    order.seed, order.buffer_pages = seed, 2 * batch_size
    return _OrderOnlyLoader(order, batch_size)


def resume_latency(num_samples: int = 1_281_167, world: int = 8, new_world: int = 4, batch_size: int = 128,
                   samples_per_page: int = 380, repeats: int = 3) -> dict[str, float]:
    """Seconds (best of ``repeats``) from ``load_state_dict`` to the resumed epoch's order, for the last rank.

    ``samples_per_page=380``: 8 MiB FFCV pages of ~22 KiB JPEGs (256 px, q90). The state is taken in
    the middle of epoch 3. Also times a plain epoch start (the order every epoch computes anyway).
    """
    import time

    old = _imagenet_loader(world, 0, num_samples, samples_per_page, batch_size, seed=0)
    steps = samples_per_rank(num_samples, world) // batch_size
    state = Position(3, [], world, 0, steps * batch_size, steps // 2).state(Spec.of(old))
    timings: dict[str, float] = {}
    for name, new in (("plain epoch start", world), (f"same world W={world}", world),
                      (f"elastic W={world}->{new_world}", new_world)):
        best = float("inf")
        for _ in range(repeats):
            loader = _imagenet_loader(new, new - 1, num_samples, samples_per_page, batch_size, seed=0)
            start = time.perf_counter()
            if name == "plain epoch start":
                loader.traversal_order.sample_order(3)
            else:
                tracker = ResumeTracker()
                with warnings.catch_warnings():  # the elastic epoch-length warning is expected here
                    warnings.simplefilter("ignore")
                    tracker.load_state_dict(loader, state)  # type: ignore[arg-type]
                tracker.order(loader)  # type: ignore[arg-type]
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return timings


if __name__ == "__main__":
    for label, seconds in resume_latency().items():
        print(f"{label:>24}: {seconds:.3f} s (N=1,281,167)")
