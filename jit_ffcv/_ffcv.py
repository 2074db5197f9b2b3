"""The FFCV names jit-ffcv uses, imported without FFCV's side effect on torch's threads.

FFCV's ``Compiler.set_num_threads`` sets numba's thread count (which decoding
needs) and torch's intra-op thread count (which it does not): to 1 when FFCV is
first imported, then to ``num_workers`` at every ``Loader`` construction and
epoch. That silently changes how fast the user's own CPU-side torch code runs.
Importing FFCV through this module keeps numba's behaviour and leaves torch's
thread count as the user set it.

It also picks numba's threading layer before FFCV's import starts it: with one usable
CPU, numba's TBB layer (chosen when libtbb is installed) hangs the process at exit once
it has forked (the writer's workers), because TBB starts no worker thread there and
numba's shutdown waits for a task only a worker would run (cf. numba#10556, oneTBB#2056).
"""

from __future__ import annotations

import os
import sys

import numba
import torch
from numba.np.ufunc import parallel as _numba_parallel

from writers.cpus import usable_cpus


def _pick_threading_layer() -> None:
    """Use numba's ``workqueue`` layer when this process may use one CPU, unless the user chose one.

    With one CPU FFCV compiles no parallel code (``Compiler.num_threads`` is 1), so the
    layer only has to start and stop cleanly, which ``workqueue`` does even after a fork.
    """
    chosen = {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ)
    if usable_cpus() == 1 and not chosen and not _numba_parallel._is_initialized:
        numba.config.THREADING_LAYER = "workqueue"


_pick_threading_layer()
_first_import = "ffcv" not in sys.modules
_torch_threads = torch.get_num_threads()

from ffcv.fields import IntField, RGBImageField  # noqa: E402  (the first FFCV import sets torch to 1 thread)
from ffcv.fields.basics import IntDecoder  # noqa: E402
from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder  # noqa: E402
from ffcv.libffcv import imdecode, memcpy  # noqa: E402
from ffcv.loader import Loader  # noqa: E402
from ffcv.memory_allocator import MemoryAllocator  # noqa: E402
from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402
from ffcv.pipeline.operation import Operation  # noqa: E402
from ffcv.pipeline.state import State  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage  # noqa: E402
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402

if _first_import:
    torch.set_num_threads(_torch_threads)

_ffcv_set_num_threads = Compiler.set_num_threads.__func__


def _set_numba_threads(cls: type, n: int) -> None:
    """FFCV's ``set_num_threads`` for numba, with torch's thread count restored."""
    keep = torch.get_num_threads()
    _ffcv_set_num_threads(cls, n)
    torch.set_num_threads(keep)


if getattr(Compiler.set_num_threads, "__func__", None) is not _set_numba_threads:
    Compiler.set_num_threads = classmethod(_set_numba_threads)  # type: ignore[method-assign]

__all__ = [
    "IMAGE_MODES", "AllocationQuery", "Compiler", "DatasetWriter", "IntDecoder", "IntField", "Loader",
    "MemoryAllocator", "Operation", "RGBImageField", "Reader", "SimpleRGBImageDecoder", "Squeeze", "State",
    "ToDevice", "ToTensor", "ToTorchImage", "TraversalOrder", "imdecode", "memcpy",
]
