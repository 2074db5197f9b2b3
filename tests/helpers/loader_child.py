"""Loader failure scenarios run in a child process by tests/test_loader.py (not a test module itself).

``python tests/helpers/loader_child.py SCENARIO BETON [WORKERS]`` prints one JSON line (WORKERS: decoding
threads, default 1). Scenarios that
hang on a broken loader run here so that the test can bound them with a timeout.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from jit_ffcv.decode_threads import DecodeThread
from jit_ffcv.layout import ToCHW
from jit_ffcv.loader import JiTLoader
from jit_ffcv.traversal import SequentialOrder
from writers.ffcv_api import Compiler, IntDecoder, Operation, SimpleRGBImageDecoder, State, ToTensor

BAD_INDEX = 7  # the sample whose decoding fails in the "op_error" scenario
WORKERS = [1]  # decoding threads of the loaders built here (the optional third argument)


class FailAt(Operation):
    """A custom numba op (as the README invites) with a bug: it raises on sample BAD_INDEX."""

    def generate_code(self) -> Callable:
        my_range = Compiler.get_iterator()
        bad = BAD_INDEX

        def fail_at(images, _dst, indices):  # type: ignore[no-untyped-def]
            for i in my_range(images.shape[0]):
                if indices[i] == bad:
                    raise ValueError("custom op failed on purpose")
            return images

        fail_at.is_parallel = True
        fail_at.with_indices = True
        return fail_at

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        return replace(previous_state, jit_mode=True), None


class BadTyping(Operation):
    """A custom numba op that numba cannot type (adds a str to an array): it fails to compile, in the thread."""

    def generate_code(self) -> Callable:
        def bad(images, _dst):  # type: ignore[no-untyped-def]
            return images + "not a number"

        return bad

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        return replace(previous_state, jit_mode=True), None


class Slow(Operation):
    """A torch-side op that sleeps 50 ms per batch: the consumer can outpace the decoding thread."""

    def generate_code(self) -> Callable:
        def slow(batch, _dst):  # type: ignore[no-untyped-def]
            time.sleep(0.05)
            return batch

        return slow

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        return replace(previous_state, jit_mode=False), None


def make_loader(beton: str, image_ops: list[Operation], tail: tuple[Operation, ...] = (), **kwargs: Any) -> JiTLoader:
    """Sequential loader of ``beton``, batches of 4: ``image_ops`` (HWC), then CHW tensors, then ``tail``."""
    options: dict[str, Any] = dict(batch_size=4, num_workers=WORKERS[0], order=SequentialOrder(), drop_last=False)
    options.update(kwargs)
    return JiTLoader(beton, pipelines={"image": image_ops + [ToCHW(), ToTensor(), *tail],
                                       "label": [IntDecoder(), ToTensor()]}, **options)


def describe(error: BaseException, started: float) -> dict[str, Any]:
    cause = error.__cause__
    return {
        "seconds": time.perf_counter() - started,
        "type": type(error).__name__,
        "message": str(error),
        "cause": type(cause).__name__ if cause else None,
        "cause_message": str(cause) if cause else None,
        "cause_traceback": "".join(traceback.format_exception(cause)) if cause else "",
    }


def consume_until_error(loader: JiTLoader) -> dict[str, Any]:
    started = time.perf_counter()
    labels: list[int] = []
    try:
        for _, y in loader:
            labels += y.reshape(-1).tolist()
    except Exception as error:  # noqa: BLE001 - reported to the test
        return {"labels": labels, **describe(error, started)}
    return {"labels": labels, "type": None}


def op_error(beton: str) -> dict[str, Any]:
    return consume_until_error(make_loader(beton, [SimpleRGBImageDecoder(), FailAt()]))


def compile_error(beton: str) -> dict[str, Any]:
    return consume_until_error(make_loader(beton, [SimpleRGBImageDecoder(), BadTyping()]))


def stale(beton: str) -> dict[str, Any]:
    loader = make_loader(beton, [SimpleRGBImageDecoder()])
    first = iter(loader)
    first_labels = next(first)[1].reshape(-1).tolist()
    second = iter(loader)
    second_labels = [y.reshape(-1).tolist() for _, y in second]
    started = time.perf_counter()
    try:
        next(first)
        outcome: dict[str, Any] = {"type": None}
    except Exception as error:  # noqa: BLE001
        outcome = describe(error, started)
    return {"first": first_labels, "second": second_labels, **outcome}


def abandon(beton: str) -> dict[str, Any]:
    """os_cache=False, batches_ahead=4: abandon three epochs after one batch, then run one to the end."""
    loader = make_loader(beton, [SimpleRGBImageDecoder()], (Slow(),), os_cache=False, batches_ahead=4)
    base = threading.active_count()  # the loader's decoding thread starts at the first epoch
    restart_seconds = []
    it = None
    for _ in range(3):
        started = time.perf_counter()
        it = iter(loader)  # rebinding drops (and finishes) the previous epoch's iterator
        next(it)
        restart_seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    labels = [y.reshape(-1).tolist() for _, y in it]
    last_epoch = time.perf_counter() - started
    del it
    time.sleep(0.5)  # the last epoch's thread and page readers end on their own
    decoders = [t for t in threading.enumerate() if isinstance(t, DecodeThread)]
    return {"restart_seconds": restart_seconds, "last_epoch_seconds": last_epoch,
            "extra_threads": threading.active_count() - base - len(decoders),
            "decoders_busy": [t.busy.is_set() for t in decoders], "labels": sum(labels, []),
            "epoch": loader.next_epoch}


if __name__ == "__main__":
    WORKERS[0] = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    result = globals()[sys.argv[1]](sys.argv[2])
    print(json.dumps(result, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
