"""The one door to FFCV: every FFCV name jit-ffcv and its writer use is imported here, and only here.

Importing FFCV through this module is what makes two process-wide choices happen before
FFCV's own import runs (a test and ruff's banned-api rule keep every other module out of
``ffcv``). :data:`TOUCH_POINTS` names each FFCV internal we rely on beyond its documented
API; ``tests/test_ffcv_api.py`` checks each of them against :data:`FFCV_VERSION`.

Torch's threads: FFCV's ``Compiler.set_num_threads`` sets numba's thread count and torch's
intra-op thread count (which decoding does not need): to 1 when FFCV is first imported, then
to ``num_workers`` at every ``Loader`` construction and epoch, silently changing how fast the
user's own CPU-side torch code runs. Through this module torch's thread count stays as set.

Numba's threading layer: this module also picks it before FFCV's import starts it: with one usable
CPU, numba's TBB layer (chosen when libtbb is installed) hangs the process at exit once
it has forked (the writer's workers), because TBB starts no worker thread there and
numba's shutdown waits for a task only a worker would run (cf. numba#10556, oneTBB#2056).
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
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
    "ffcv.pipeline.compiler:Compiler.compile",  # compiles each op's code once per process (_compile_once)
    "ffcv.memory_managers.os_cache:OSCacheManager.compile_reader",  # replaced: FFCV's mutates numba's types
    "ffcv.memory_managers.os_cache:OSCacheContext.state",  # jit_ffcv.kernels reads (mmap, ptrs, sizes)
    "ffcv.memory_managers.process_cache.context:ProcessCacheContext.state",  # (pages, ptrs, sizes, page slots)
    "ffcv.memory_managers.process_cache.manager:ProcessCacheManager",  # jit_ffcv.page_schedule: the page cache
    "ffcv.loader.loader:Loader().memory_manager.sample_to_pages",  # jit_ffcv.page_schedule: pages of each sample
    "ffcv.pipeline.compiler:Compiler.num_threads",  # jit_ffcv.epoch.serial_codegen: plain loops per thread
    "ffcv.memory_managers.process_cache.schedule:compute_schedule",  # tests: page slot reuse, batches in flight
    "ffcv.memory_managers.process_cache.page_reader:PageReader.run",  # replaced: FFCV ignores a short read
    "ffcv.libffcv:read",  # pread of one page, as FFCV's PageReader does
    "ffcv.memory_managers.process_cache.schedule:ScheduleExecutor.__init__",  # its loaded_queue made to raise
    "ffcv.memory_managers.process_cache.schedule:ScheduleExecutor.load_batch",  # waits on loaded_queue.get()
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
from ffcv.libffcv import imdecode, memcpy, read  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.loader.epoch_iterator import EpochIterator  # noqa: E402
from ffcv.memory_allocator import MemoryAllocator  # noqa: E402
from ffcv.memory_managers.os_cache import OSCacheManager  # noqa: E402
from ffcv.memory_managers.process_cache.manager import ProcessCacheManager  # noqa: E402
from ffcv.memory_managers.process_cache.page_reader import PageReader  # noqa: E402
from ffcv.memory_managers.process_cache.schedule import ScheduleExecutor, compute_schedule  # noqa: E402
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
    """FFCV's ``set_num_threads`` for numba, with torch's thread count restored and numba's capped at its limit.

    FFCV raises for more threads than numba started (``NUMBA_NUM_THREADS``, the CPU count); jit-ffcv's
    decoding threads are Python threads (``Compiler.num_threads`` keeps the count asked for).
    """
    keep = torch.get_num_threads()
    _ffcv_set_num_threads(cls, min(n, numba.config.NUMBA_NUM_THREADS) if n >= 1 else n)
    cls.num_threads = n if n >= 1 else cls.num_threads
    torch.set_num_threads(keep)


if getattr(Compiler.set_num_threads, "__func__", None) is not _set_numba_threads:
    Compiler.set_num_threads = classmethod(_set_numba_threads)  # type: ignore[method-assign]

_ffcv_compile = Compiler.compile.__func__
_compiled: dict[tuple, Callable] = {}  # (code, closure values, signature, parallel) -> dispatcher, for the process
_STATIC = (int, float, bool, str, bytes, type(None), np.generic, type, types.BuiltinFunctionType,
           numba.core.dispatcher.Dispatcher)


def _static_key(code: Callable, signature: Any, parallel: bool) -> tuple | None:
    """What a compiled ``code`` depends on, if it is only code and immutable values (else ``None``: not shared)."""
    if not isinstance(code, types.FunctionType):
        return None
    try:
        cells = tuple(cell.cell_contents for cell in code.__closure__ or ())
    except ValueError:  # a cell not yet filled
        return None
    if not all(isinstance(value, _STATIC) for value in cells):
        return None
    return code.__code__, id(code.__globals__), tuple((type(v), v) for v in cells), signature, parallel


def _compile_once(cls: type, code: Callable, signature: Any = None) -> Callable:
    """FFCV's ``Compiler.compile``, with one dispatcher per process for the same code and values.

    Code marked ``precompiled`` (jit-ffcv's ops: a Python call into kernels compiled once per
    process) is used as it is. FFCV compiles every op of every loader afresh otherwise, about
    0.5 s each (label decoders, readers), which also keeps each loader's machine code alive.
    Code that closes over nothing is also cached on disk (a closure's values, e.g. dispatchers,
    differ per process, so numba's cache would never match them).
    """
    if getattr(code, "precompiled", False) or not cls.is_enabled:
        return code
    parallel = bool(getattr(code, "is_parallel", False)) and cls.num_threads > 1
    key = _static_key(code, signature, parallel)
    if key is None:
        return _ffcv_compile(cls, code, signature)
    with _compile_lock:
        if key not in _compiled:
            cacheable = _cacheable(code)
            _compiled[key] = _cached(code, signature, parallel) if cacheable else _ffcv_compile(cls, code, signature)
        return _compiled[key]


def _cacheable(code: types.FunctionType) -> bool:
    """True if numba can cache ``code`` on disk: no closure, no ctypes function (FFCV's ``imdecode``, ``memcpy``)."""
    return not code.__closure__ and not any(isinstance(code.__globals__.get(name), ctypes._CFuncPtr)
                                            for name in code.__code__.co_names)


def _cached(code: Callable, signature: Any, parallel: bool) -> Callable:
    """FFCV's compile options plus numba's disk cache, for code that closes over nothing (e.g. ``IntDecoder``'s)."""
    return numba.njit(signature, fastmath=True, nogil=True, error_model="numpy", parallel=parallel, cache=True)(code)


_compile_lock = threading.Lock()
if getattr(Compiler.compile, "__func__", None) is not _compile_once:
    Compiler.compile = classmethod(_compile_once)  # type: ignore[method-assign]


def _read_mapped(address: int, state: tuple) -> np.ndarray:
    """The stored bytes of the sample at ``address`` in the memory-mapped beton (FFCV's reader)."""
    size = state[2][np.searchsorted(state[1], address)]
    return state[0][address:address + size]


@functools.cache
def _os_cache_reader() -> Callable:
    """FFCV's reader of the OS-cache manager, compiled once and typed without mutating numba's types.

    FFCV 1.0.2 sets ``mutable = False`` on numba's shared ``uint8[::1]`` type object, which corrupts
    every dispatcher keyed by it (a KeyError, and a hung loader, when one later needs a new overload).
    """
    data = numba.types.Array(numba.types.uint8, 1, "C", readonly=True)
    pointers = numba.types.Array(numba.types.uint64, 1, "C")
    signature = data(numba.types.uint64, numba.types.Tuple([data, pointers, pointers]))
    return numba.njit(signature, nogil=True, cache=True)(_read_mapped)


OSCacheManager.compile_reader = lambda self: _os_cache_reader()  # type: ignore[method-assign]


class BetonReadError(OSError):
    """A page of the beton came back short, or the file changed, while a loader read it (``os_cache=False``)."""


class _RaisingQueue(queue.Queue):
    """The queue of loaded pages a ``ScheduleExecutor`` waits on: a page reader's error is raised to the waiter."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        item = super().get(block, timeout)
        if isinstance(item, BaseException):
            raise item
        return item


def _checked_page_reads(self: PageReader) -> None:
    """FFCV's ``PageReader.run`` (read each page asked for), refusing a short read or a file changed meanwhile.

    FFCV's ignores how many bytes ``pread`` returned: a beton truncated or rewritten under a running
    loader gave wrong pixels without an error. FFCV writes whole pages, so every page read is full.
    """
    with open(self.fname, "rb") as handle:
        opened = os.fstat(handle.fileno())
        while (query := self.queries.get()) is not None:
            page, slot = query
            offset = int(page) * self.page_size
            length = read(handle.fileno(), self.memory[slot], np.uint64(offset))
            now = os.fstat(handle.fileno())
            if length == self.page_size and (now.st_size, now.st_mtime_ns) == (opened.st_size, opened.st_mtime_ns):
                self.loaded.put(page)
                continue
            what = (f"page {page} came back short ({length} of {self.page_size} bytes at offset {offset})"
                    if length != self.page_size else f"the file changed (size {opened.st_size} -> {now.st_size})")
            self.loaded.put(BetonReadError(f"{self.fname}: {what} while this loader read it: it was truncated or "
                                           f"rewritten under a running job; restore the beton and restart"))
            return


_ffcv_executor_init = ScheduleExecutor.__init__


def _executor_init(self: ScheduleExecutor, *args: Any, **kwargs: Any) -> None:
    """FFCV's ``ScheduleExecutor.__init__``, with a queue of loaded pages that raises a page reader's error."""
    _ffcv_executor_init(self, *args, **kwargs)
    self.loaded_queue = _RaisingQueue()


PageReader.run = _checked_page_reads  # type: ignore[method-assign]
if ScheduleExecutor.__init__ is not _executor_init:
    ScheduleExecutor.__init__ = _executor_init  # type: ignore[method-assign]

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


def stored_field(reader: Reader, name: str) -> np.ndarray | None:
    """Field ``name``'s column of the reader's per-sample metadata table (None: the beton has no such field)."""
    return reader.metadata[field_column(reader.field_names, name)] if name in reader.field_names else None


__all__ = [
    "ALLOC_TABLE_TYPE", "AllocationQuery", "Compiler", "DatasetWriter", "FFCV_VERSION", "Field", "FieldDescType",
    "HeaderType", "IMAGE_MODES", "IMAGE_MODE_CODES", "IntDecoder", "IntField", "Loader", "MemoryAllocator",
    "Operation", "OrderOption", "ProcessCacheManager", "RGBImageField", "RandomHorizontalFlip", "Reader",
    "SimpleRGBImageDecoder", "Squeeze",
    "State", "TOUCH_POINTS", "ToDevice", "ToTensor", "ToTorchImage", "TraversalOrder", "chunks", "field_column",
    "stored_field",
    "compute_schedule", "get_metadata_type", "imdecode", "memcpy", "run_pipeline",
    "ALLOC_TABLE_TYPE", "AllocationQuery", "BetonReadError", "Compiler", "DatasetWriter", "FFCV_VERSION", "Field",
    "FieldDescType", "HeaderType", "IMAGE_MODES", "IMAGE_MODE_CODES", "IntDecoder", "IntField", "Loader",
    "MemoryAllocator", "Operation", "OrderOption", "PageReader", "RGBImageField", "RandomHorizontalFlip", "Reader",
    "SimpleRGBImageDecoder", "Squeeze", "State", "TOUCH_POINTS", "ToDevice", "ToTensor", "ToTorchImage",
    "TraversalOrder", "chunks", "field_column", "get_metadata_type", "imdecode", "memcpy", "run_pipeline",
    "stored_field",
]
