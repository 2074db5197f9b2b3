"""Facts about ImageNet-1k that the simulations and benchmarks use (one definition each)."""

from __future__ import annotations

from typing import Final

#: Images in ImageNet-1k's train split.
TRAIN_SAMPLES: Final[int] = 1_281_167
#: Classes in ImageNet-1k.
NUM_CLASSES: Final[int] = 1000
#: Samples per 8 MiB FFCV page for 256 px JPEG q90 crops (about 22 KiB each, see docs/benchmarks.md).
SAMPLES_PER_PAGE: Final[int] = 380
