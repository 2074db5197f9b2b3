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

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from jit_ffcv.loader_state import FORMAT, VERSION, Segment, Spec, check_state, segment_lengths
from jit_ffcv.order import epoch_orders
from jit_ffcv.traversal import ShardedOrder

__all__ = ["FORMAT", "VERSION", "Position", "ResumeTracker", "Spec", "resume_orders"]


def _shard(owed: np.ndarray, world: int, spec: Spec) -> list[np.ndarray]:
    """Pad ``owed`` cyclically (DistributedSampler style) and split it contiguously over ``world`` ranks."""
    size = spec.padded(len(owed), world)
    padded = np.resize(owed, size) if size else owed[:0]
    per = size // world
    return [padded[r * per:(r + 1) * per] for r in range(world)]


def resume_orders(order: ShardedOrder, spec: Spec, epoch: int, segments: list[Segment],
                  world: int) -> list[np.ndarray]:
    """Every rank's order (at ``world``) for the segment of ``epoch`` that follows ``segments``.

    ``order`` is the loader's bound order; ``segments`` are the finished stretches of the epoch,
    oldest first; with none, this is the plain epoch order (less the loader's dropped partial batch).
    """
    orders = [o[:spec.delivered(len(o))] for o in epoch_orders(
        order.sample_pages, order.indices, kind=order.kind, num_replicas=segments[0][0] if segments else world,
        seed=order.seed, epoch=epoch, drop_last=order.drop_last, buffer_pages=order.buffer_pages or 1)]
    next_worlds = [w for w, _ in segments[1:]] + [world]
    for (_, consumed), next_world in zip(segments, next_worlds, strict=True):
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
        """The checkpointable dict (see :func:`jit_ffcv.loader_state.check_state`)."""
        segments = [list(s) for s in self.segments] + [[self.world, self.consumed(spec.batch_size)]]
        return {"format": FORMAT, "version": VERSION, "epoch": self.epoch, "segments": segments, **spec.saved()}


class ResumeTracker:
    """Per-loader resume bookkeeping: the position of the running epoch and a loaded plan, if any.

    It is handed what it needs (the loader's bound order, its :class:`Spec`, epochs and world size)
    and holds no reference to the loader.
    """

    def __init__(self) -> None:
        self.plan: Position | None = None  # loaded by load_state_dict, applies to plan.epoch
        self.current: Position | None = None  # the epoch started last
        self._plan_order: np.ndarray | None = None

    # ------------------------------------------------------------ orders
    def applies(self, epoch: int) -> bool:
        """True if a loaded state makes ``epoch`` a resumed one."""
        return self.plan is not None and self.plan.epoch == epoch

    def order(self, order: ShardedOrder, spec: Spec, epoch: int) -> np.ndarray:
        """This rank's order for ``epoch``: the unseen remainder if it is the resumed one."""
        if not self.applies(epoch):
            return order.sample_order(epoch)
        if self._plan_order is None:
            plan = self.plan
            if plan.segments:
                full = resume_orders(order, spec, plan.epoch, plan.segments, plan.world)[order.rank]
            else:  # same world, first segment: this rank's order only (one rank's work)
                full = order.sample_order(plan.epoch)[:plan.length]
            self._plan_order = full[plan.start:]
        return self._plan_order

    def num_samples(self, order: ShardedOrder, epoch: int) -> int:
        """Samples of ``epoch``'s order (the remainder for a resumed epoch)."""
        if self.applies(epoch):
            return self.plan.length - self.plan.start
        return int(order.num_samples())

    def length(self, spec: Spec, epoch: int) -> int | None:
        """Batches of a resumed ``epoch``: batches delivered before + batches left; else None.

        A finished epoch keeps the normal length: it delivers nothing, and Lightning moves on from it.
        """
        if not self.applies(epoch) or self.plan.start >= self.plan.length:
            return None
        plan = self.plan
        before = sum(spec.batches(c) for _, c in plan.segments) + spec.batches(plan.start)
        return before + spec.batches(plan.length - plan.start)

    def begin(self, epoch: int, world: int, delivered: int) -> Position:
        """Record that ``epoch`` started with ``delivered`` samples to deliver; returns its live position."""
        if self.applies(epoch):
            self.current = self.plan
        else:
            if self.plan is not None and self.plan.start < self.plan.length:
                warnings.warn(
                    f"the loader state loaded for epoch {self.plan.epoch} was not used: epoch {epoch} started "
                    f"instead (call set_epoch({self.plan.epoch}) to finish the interrupted epoch)", stacklevel=3)
            self.current = Position(epoch, [], world, 0, delivered)
        self.plan, self._plan_order = None, None
        return self.current

    # ------------------------------------------------------------ state
    def state_dict(self, spec: Spec, next_epoch: int, world: int) -> dict[str, Any]:
        """Position after the last batch handed out (a pending loaded plan if nothing ran since)."""
        if self.applies(next_epoch):
            return self.plan.state(spec)
        if self.current is not None and self.current.epoch == next_epoch - 1:
            return self.current.state(spec)
        return Position(next_epoch, [], world).state(spec)

    def load_state_dict(self, state: dict[str, Any], spec: Spec, world: int) -> int:
        """Plan the rest of the saved epoch at ``world`` ranks; returns that epoch (the loader runs it next)."""
        epoch, segments = check_state(state, spec)
        if segments[-1][0] == world:  # same world: continue the last segment where it stopped
            finished, start = segments[:-1], segments[-1][1]
        else:
            finished, start = segments, 0
        length = segment_lengths(spec, finished, world)[-1]
        self.plan = Position(epoch, finished, world, start, length)
        self._plan_order = None
        normal = spec.batches(segment_lengths(spec, [], world)[0])
        resumed = self.length(spec, epoch)
        if finished and resumed is not None and resumed != normal:
            warnings.warn(
                f"elastic resume at world size {world} of epoch {epoch} (started at world size {segments[0][0]}): "
                f"it has {resumed} batches, not {normal}; plain loops are fine, but Lightning fixes the "
                "epoch length when fit starts: under Lightning, resume at the saved world size (elastic resume "
                "is not supported there)",
                stacklevel=3)
        return epoch
