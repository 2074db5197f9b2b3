"""The one door to FFCV: every FFCV name jit-ffcv and its writer use is imported here, and only here.

Importing FFCV through this module is what makes two process-wide choices happen before
FFCV's own import runs (a test and ruff's banned-api rule keep every other module out of
``ffcv``). :data:`TOUCH_POINTS` names each FFCV internal we rely on beyond its documented
API; ``tests/test_ffcv_api.py`` checks each of them against :data:`FFCV_VERSION`.

Torch's threads: FFCV's ``Compiler.set_num_threads`` sets numba's thread count (which decoding

FFCV's ``Compiler.set_num_threads`` sets numba's thread count (which decoding
needs) and torch's intra-op thread count (which it does not): to 1 when FFCV is
first imported, then to ``num_workers`` at every ``Loader`` construction and
epoch. That silently changes how fast the user's own CPU-side torch code runs.
Importing FFCV through this module keeps numba's behaviour and leaves torch's
thread count as the user set it.

Numba's threading layer: this module also picks it before FFCV's import starts it: with one usable
CPU, numba's TBB layer (chosen when libtbb is installed) hangs the process at exit once
it has forked (the writer's workers), because TBB starts no worker thread there and
numba's shutdown waits for a task only a worker would run (cf. numba#10556, oneTBB#2056).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numba
import torch
from numba.np.ufunc import parallel as _numba_parallel

from writers.cpus import usable_cpus

#: the FFCV release whose internals (:data:`TOUCH_POINTS`) were checked
FFCV_VERSION = "1.0.2"

#: FFCV internals used beyond its documented API, as ``module:Class.attribute`` (``Class()``: an instance
#: attribute, checked on a real beton); tests/test_ffcv_api.py checks every one against FFCV_VERSION
TOUCH_POINTS: tuple[str, ...] = (
    "ffcv.loader.epoch_iterator:EpochIterator.run_pipeline",  # jit_ffcv.epoch: FFCV's decoding step of one batch
    "ffcv.loader.loader:Loader().graph",  # jit_ffcv.loader: the graph whose allocate_memory is replaced
    "ffcv.pipeline.graph:Graph.allocate_memory",  # replaced per loader to keep buffers across epochs
    "ffcv.pipeline.graph:Graph.collect_requirements",  # jit_ffcv.loader: the buffers each op asks for
    "ffcv.loader.loader:Loader.next_traversal_order",  # jit_ffcv.loader: resume replaces the order
    "ffcv.loader.loader:Loader.generate_code",  # jit_ffcv.loader: compiled lazily at the first epoch
    "ffcv.memory_managers.base:MemoryManager.schedule_epoch",  # jit_ffcv.epoch: page cache of one epoch
    "ffcv.traversal_order.base:TraversalOrder",  # jit_ffcv.order: our orders are FFCV traversal orders
    "ffcv.writer:DatasetWriter",  # writers: the header, allocation table and metadata layout
    "ffcv.types:ALLOC_TABLE_TYPE",  # writers: page arithmetic of the allocation table
    "ffcv.types:get_metadata_type",  # writers.dryrun: exact file size of a raw beton; columns f0, f1, ... by field
    "ffcv.reader:Reader().field_names",  # writers.readers: field order, to find a field's metadata column by name
    "ffcv.reader:Reader().alloc_table",  # jit_ffcv.order: the page of every sample
    "ffcv.libffcv:imdecode",  # bench: FFCV's own JPEG decode (the fast IDCT), for comparison
)


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
from ffcv.fields.base import Field  # noqa: E402
from ffcv.fields.basics import IntDecoder  # noqa: E402
from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder  # noqa: E402
from ffcv.libffcv import imdecode, memcpy  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.loader.epoch_iterator import EpochIterator  # noqa: E402
from ffcv.memory_allocator import MemoryAllocator  # noqa: E402
from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402
from ffcv.pipeline.operation import Operation  # noqa: E402
from ffcv.pipeline.state import State  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage  # noqa: E402
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402
from ffcv.types import ALLOC_TABLE_TYPE, FieldDescType, HeaderType, get_metadata_type  # noqa: E402
from ffcv.utils import chunks  # noqa: E402
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

#: FFCV's image mode codes as a plain dict: ``IMAGE_MODES`` is a numba typed dict whose first lookup compiles
#: for a second or more, which the writer must not do mid-write (an interrupted compile leaves llvmlite noise)
IMAGE_MODE_CODES: dict[str, int] = {name: int(IMAGE_MODES[name]) for name in ("raw", "jpg")}

#: FFCV's decoding step of one batch (``EpochIterator.run_pipeline``), used by jit_ffcv.epoch
run_pipeline = EpochIterator.run_pipeline


def field_column(field_names: Sequence[str], name: str) -> str:
    """The metadata column of field ``name``: FFCV's ``get_metadata_type`` names them ``f0, f1, ...`` in field order.

    ``field_names`` is ``list(DatasetWriter.fields)`` or ``Reader.field_names``; a missing field names the ones present.
    """
    names = list(field_names)
    if name not in names:
        raise KeyError(f"the beton has no field {name!r}; its fields are {names}")
    return f"f{names.index(name)}"


__all__ = [
    "ALLOC_TABLE_TYPE", "AllocationQuery", "Compiler", "DatasetWriter", "FFCV_VERSION", "Field", "FieldDescType",
    "HeaderType", "IMAGE_MODES", "IMAGE_MODE_CODES", "IntDecoder", "IntField", "Loader", "MemoryAllocator",
    "Operation", "OrderOption", "RGBImageField", "RandomHorizontalFlip", "Reader", "SimpleRGBImageDecoder", "Squeeze",
    "State", "TOUCH_POINTS", "ToDevice", "ToTensor", "ToTorchImage", "TraversalOrder", "chunks", "field_column",
    "get_metadata_type", "imdecode", "memcpy", "run_pipeline",
]
