"""The writer's worker processes: encoded samples in task order, with a bounded number of chunks in flight."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import nullcontext
from typing import Iterator, Sequence

from writers.encode import Encoded, encode_chunk
from writers.lifecycle import signals_deferred, worker_init
from writers.options import CHUNK


def encoded_in_order(
    tasks: Sequence[tuple[int, str, int]], img_size: int, mode: str, quality: int, num_workers: int
) -> Iterator[Encoded]:
    """Yield encoded samples in task order, computed by ``num_workers`` processes.

    At most ``4 * num_workers`` chunks are in flight, so memory stays bounded
    however large the split; a crashed worker raises instead of hanging.
    """
    chunks = [tasks[i : i + CHUNK] for i in range(0, len(tasks), CHUNK)]
    if num_workers == 0:
        for chunk in chunks:
            yield from encode_chunk(chunk, img_size, mode, quality)
        return
    # fork: workers start instantly and never re-import the caller's script (spawn would
    # re-run an unguarded one); they only use Pillow/NumPy, so inherited threads are harmless.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=ctx, initializer=worker_init,
                             initargs=(os.getpid(),)) as pool:
        pending: deque[Future[list[Encoded]]] = deque()
        todo = iter(chunks)
        try:
            for i, chunk in enumerate(todo):
                # the first submit starts the pool: a signal must wait until it has (see signals_deferred)
                with signals_deferred() if i == 0 else nullcontext():
                    pending.append(pool.submit(encode_chunk, chunk, img_size, mode, quality))
                if len(pending) >= 4 * num_workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
