"""The writer's stored order: a seeded permutation of the ImageFolder samples.

ImageFolder lists samples class by class; stored that way, an 8 MiB page holds one or two
classes and page-local loading mixes classes badly. The writer stores sample ``perm[p]`` at
position ``p`` and keeps each sample's ImageFolder index in the ``index`` field.
"""

from __future__ import annotations

import numpy as np

from writers.checks import is_int

__all__ = ["sample_permutation"]


def sample_permutation(num_samples: int, seed: int) -> np.ndarray:
    """The writer's stored order: position ``p`` of the beton holds ImageFolder sample ``perm[p]``."""
    if not is_int(seed) or seed < 0:
        raise ValueError(f"shuffle_seed must be an integer >= 0 (or None to keep folder order), got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A4D])).permutation(num_samples)
