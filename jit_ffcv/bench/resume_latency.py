"""Resume latency at ImageNet scale, without a beton: ``python -m jit_ffcv.bench.resume_latency``.

Times what ``load_state_dict`` and the first order of the resumed epoch cost on the last rank
(the work every rank does at a resume), against a plain epoch start, on a synthetic page layout.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from jit_ffcv.imagenet import SAMPLES_PER_PAGE
from jit_ffcv.order import samples_per_rank
from jit_ffcv.resume import Position, ResumeTracker, Spec
from jit_ffcv.traversal import QuasiRandomOrder

__all__ = ["imagenet_order", "resume_latency"]


def imagenet_order(world: int, rank: int, num_samples: int, samples_per_page: int, batch_size: int,
                   seed: int) -> QuasiRandomOrder:
    """A quasi-random order bound to a synthetic layout (``samples_per_page`` consecutive samples a page)."""
    order = QuasiRandomOrder(num_replicas=world, rank=rank)
    order.indices = np.arange(num_samples)
    order.sample_pages = order.indices // samples_per_page
    order.seed, order.buffer_pages = seed, 2 * batch_size
    return order


def resume_latency(num_samples: int = 1_281_167, world: int = 8, new_world: int = 4, batch_size: int = 128,
                   samples_per_page: int = SAMPLES_PER_PAGE, repeats: int = 3) -> dict[str, float]:
    """Seconds (best of ``repeats``) from ``load_state_dict`` to the resumed epoch's order, for the last rank.

    ``samples_per_page``: 8 MiB FFCV pages of ~22 KiB JPEGs (256 px, q90). The state is taken in
    the middle of epoch 3. Also times a plain epoch start (the order every epoch computes anyway).
    """
    old = imagenet_order(world, 0, num_samples, samples_per_page, batch_size, seed=0)
    steps = samples_per_rank(num_samples, world) // batch_size
    spec = Spec.of(old, batch_size=batch_size, drop_last=True)
    state = Position(3, [], world, 0, steps * batch_size, steps // 2).state(spec)
    timings: dict[str, float] = {}
    for name, new in (("plain epoch start", world), (f"same world W={world}", world),
                      (f"elastic W={world}->{new_world}", new_world)):
        best = float("inf")
        for _ in range(repeats):
            order = imagenet_order(new, new - 1, num_samples, samples_per_page, batch_size, seed=0)
            start = time.perf_counter()
            if name == "plain epoch start":
                order.sample_order(3)
            else:
                tracker = ResumeTracker()
                with warnings.catch_warnings():  # the elastic epoch-length warning is expected here
                    warnings.simplefilter("ignore")
                    epoch = tracker.load_state_dict(state, spec, new)
                tracker.order(order, spec, epoch)
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    return timings


if __name__ == "__main__":
    for label, seconds in resume_latency().items():
        print(f"{label:>24}: {seconds:.3f} s (N=1,281,167)")
