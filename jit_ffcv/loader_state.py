"""The checkpointable state of a :class:`~jit_ffcv.loader.JiTLoader`: what it depends on, and its validation.

A state is plain data (it survives JSON and any checkpoint format) and is applied to a loader
on another process, maybe another node, maybe another copy of the beton. So it carries what
the epoch order depends on (:class:`Spec`: the options and a fingerprint of the beton's stored
order), and :func:`check_state` refuses, naming the field, any state that is malformed or that
would make this loader deliver other samples than the ones the saved position refers to.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from jit_ffcv.order import samples_per_rank
from jit_ffcv.traversal import ShardedOrder
from writers.checks import is_int

__all__ = ["FORMAT", "VERSION", "MAX_EPOCH", "MAX_WORLD", "Segment", "Spec", "check_fields", "check_state",
           "layout_fingerprint", "segment_lengths"]

FORMAT: Final[str] = "jit_ffcv.loader_state"
VERSION: Final[int] = 1
#: largest epoch a state or set_epoch may name (the compiled ops read the epoch as an int64)
MAX_EPOCH: Final[int] = 2**62
#: largest world size a state may name: resuming recomputes every old rank's order
MAX_WORLD: Final[int] = 2**16
#: most segments (elastic resumes within one epoch) a state may hold
MAX_SEGMENTS: Final[int] = 1024

Segment = tuple[int, int]  # (world size, samples each rank consumed in that stretch of the epoch)

#: field -> accepted types; None: the value may be None
_TYPES: Final[dict[str, tuple[Any, ...]]] = {
    "epoch": (int,), "segments": (list,), "num_samples": (int,), "seed": (int,), "order": (str,),
    "sampler_drop_last": (bool,), "batch_size": (int,), "drop_last": (bool,), "buffer_pages": (int, None),
    "layout": (str, None), "shuffle_seed": (int, None), "batches": (int,),
}
#: fields a state may lack: the beton's layout (states saved before it existed), the unread batch count
_OPTIONAL: Final[frozenset[str]] = frozenset({"layout", "shuffle_seed", "batches"})


@dataclass(frozen=True)
class Spec:
    """What the order of an epoch depends on, besides the epoch and the world; must match to resume.

    Options are compared in field order, so a changed option is named before what derives from it
    (``buffer_pages`` defaults to 2 x ``batch_size``). ``layout`` and ``shuffle_seed`` identify the beton.
    """

    num_samples: int
    seed: int
    order: str
    sampler_drop_last: bool
    batch_size: int
    drop_last: bool
    buffer_pages: int | None
    layout: str | None = None  # layout_fingerprint of the beton's stored order
    shuffle_seed: int | None = None  # the sidecar's, shown in errors
    beton: str = field(default="", compare=False)  # the path, shown in errors; not saved

    @classmethod
    def of(cls, order: Any, *, batch_size: int, drop_last: bool, layout: str | None = None,
           shuffle_seed: int | None = None, beton: str = "") -> Spec:
        """The spec of a bound jit_ffcv order (only those can resume) and the loader's batching options."""
        if not isinstance(order, ShardedOrder):
            raise TypeError(
                f"resume needs one of jit_ffcv's orders (QuasiRandomOrder, RandomOrder, SequentialOrder), "
                f"got order={type(order).__name__}; pass order=QuasiRandomOrder(...) to the loader")
        if order.indices is None or order.seed is None:
            raise RuntimeError(f"{order!r} is not bound to a loader; pass it as JiTLoader(order=...)")
        return cls(num_samples=len(order.indices), seed=int(order.seed), order=order.kind,
                   sampler_drop_last=order.drop_last, batch_size=int(batch_size), drop_last=bool(drop_last),
                   buffer_pages=int(order.buffer_pages) if order.kind == "quasi_random" else None,
                   layout=layout, shuffle_seed=shuffle_seed, beton=beton)

    def saved(self) -> dict[str, Any]:
        """The fields a state stores."""
        saved = asdict(self)
        del saved["beton"]
        return saved

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


def layout_fingerprint(index: np.ndarray | None, sample_pages: np.ndarray | None) -> str:
    """16 hex digits identifying a beton's stored order: what each stored id is, and (if given) its page.

    ``index``: the stored ``index`` field (each sample's ImageFolder index; ``None`` for a beton
    without it, whose stored order is folder order). ``sample_pages``: the page of every sample,
    given for ``quasi_random``, whose epoch order depends on them.
    """
    digest = hashlib.blake2b(digest_size=8)
    for part in (index, sample_pages):
        digest.update(b"-" if part is None else np.ascontiguousarray(part, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def segment_lengths(spec: Spec, segments: list[Segment], world: int) -> list[int]:
    """Per-rank samples of each segment in ``segments`` and of a next one at ``world`` (the last entry)."""
    worlds = [w for w, _ in segments] + [world]
    lengths = [spec.delivered(samples_per_rank(spec.num_samples, worlds[0], spec.sampler_drop_last))]
    for (w, consumed), next_world in zip(segments, worlds[1:], strict=True):
        lengths.append(spec.padded(w * (lengths[-1] - consumed), next_world) // next_world)
    return lengths


def check_fields(state: Any) -> tuple[int, list[Segment]]:
    """The (epoch, segments) of ``state``; ValueError naming the first field of a wrong type or out of range.

    Needs nothing of the loader, and is cheap whatever the state holds: run it before anything else.
    """
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not a JiTLoader state (expected format={FORMAT!r}): {str(state)[:200]}")
    if not is_int(state.get("version")) or state["version"] != VERSION:
        raise ValueError(f"JiTLoader state version {state.get('version')!r} is not supported (this is {VERSION})")
    _check_keys(state)
    for key, types in _TYPES.items():
        if key in state:
            _check_type(key, state[key], types)
    return _check_range("epoch", state["epoch"], 0, MAX_EPOCH), _check_segments(state["segments"])


def check_state(state: Any, spec: Spec) -> tuple[int, list[Segment]]:
    """The (epoch, segments) of ``state``; ValueError naming the field if it is malformed or saved otherwise.

    Cheap whatever the state holds: every range is checked before anything is computed from it.
    """
    epoch, segments = check_fields(state)
    for key, value in spec.saved().items():
        if key not in ("layout", "shuffle_seed") and state[key] != value:
            raise ValueError(
                f"cannot resume: the loader state was saved with {key}={state[key]!r} but this loader has "
                f"{key}={value!r}; build the loader with {key}={state[key]!r} (the epoch order depends on it) "
                f"or start without loading the loader state{_DERIVED.get(key, '')}")
    _check_layout(state, spec, epoch)
    lengths = segment_lengths(spec, segments[:-1], segments[-1][0])
    for (w, c), length in zip(segments, lengths, strict=True):
        if c > length:
            raise ValueError(f"corrupt JiTLoader state: {c} samples consumed of a {length}-sample segment at world {w}")
    return epoch, segments


_DERIVED: Final[dict[str, str]] = {"buffer_pages": " (QuasiRandomOrder(buffer_pages=...), 2 x batch_size unless set)"}


def _check_keys(state: dict[str, Any]) -> None:
    missing = sorted(set(_TYPES) - _OPTIONAL - set(state))
    if missing:
        raise ValueError(f"corrupt JiTLoader state: it lacks the field(s) {missing} (it has {sorted(state)})")
    unknown = sorted(set(state) - set(_TYPES) - {"format", "version"})
    if unknown:
        raise ValueError(f"corrupt JiTLoader state: unknown field(s) {unknown}; was it saved by a newer jit-ffcv?")


def _check_type(key: str, value: Any, types: tuple[Any, ...]) -> None:
    """ValueError naming ``key`` unless ``value`` is one of ``types`` (int: not a bool; bool: a real bool)."""
    ok = ((value is None and None in types) or (int in types and is_int(value))
          or (bool in types and isinstance(value, (bool, np.bool_)))
          or (str in types and isinstance(value, str)) or (list in types and isinstance(value, (list, tuple))))
    if not ok:
        names = " or ".join("None" if t is None else t.__name__ for t in types)
        raise ValueError(f"corrupt JiTLoader state: field {key!r} must be {names}, got {value!r} "
                         f"({type(value).__name__})")


def _check_range(key: str, value: Any, low: int, high: int) -> int:
    if not is_int(value) or not low <= value <= high:
        raise ValueError(f"corrupt JiTLoader state: field {key!r} must be an integer in [{low}, {high}], "
                         f"got {value!r}")
    return int(value)


def _check_segments(segments: list[Any]) -> list[Segment]:
    if not 1 <= len(segments) <= MAX_SEGMENTS or any(not isinstance(s, (list, tuple)) or len(s) != 2
                                                     for s in segments):
        raise ValueError(f"corrupt JiTLoader state: segments must be [[world, consumed], ...] (1 to {MAX_SEGMENTS} "
                         f"of them), got {str(segments)[:200]}")
    return [(_check_range(f"segments[{i}][0] (world size)", w, 1, MAX_WORLD),
             _check_range(f"segments[{i}][1] (samples consumed)", c, 0, 2**63 - 1))
            for i, (w, c) in enumerate(segments)]


def _check_layout(state: dict[str, Any], spec: Spec, epoch: int) -> None:
    """Refuse a state saved on a beton that stores its samples in another order (warn if it cannot be told)."""
    if "layout" not in state:
        warnings.warn(
            "the JiTLoader state has no beton layout (saved by an older jit-ffcv): it cannot be checked to belong "
            f"to {spec.beton or 'this beton'}; resume only on the beton it was saved with", stacklevel=5)
        return
    saved = state["layout"]
    if saved is None or spec.layout is None or saved == spec.layout:
        return
    raise ValueError(
        f"cannot resume: the loader state was saved on a beton with layout {saved} (shuffle seed "
        f"{state.get('shuffle_seed')}) but {spec.beton or 'this beton'} has layout {spec.layout} (shuffle seed "
        f"{spec.shuffle_seed}): it stores its samples in another order, so the saved position would deliver other "
        f"images; resume on the beton the state was saved with, or start epoch {epoch} over without the state")
