"""Independent small factorisations side by side, one thread each.

The factorisations of a layer's modules (Cholesky and eigendecompositions of 192-1536-sized
matrices, a DEIM pivoting, a few solves) scale badly over OpenMP threads: on 2 cores another
busy process makes a 2-thread ``eigvalsh`` of a 576 x 576 matrix up to 80x slower than a
1-thread one (the brief's measurement), and even on idle cores the small kernels gain little
from a second thread. So :func:`map_modules` runs them as independent tasks, one per thread,
each single-threaded; the large products of the calibration forward passes keep every thread.
The results do not depend on the number of workers (each task is sequential and
deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["map_modules", "workers_for"]


def workers_for(workers: int | None, /) -> int:
    """``workers``, or ``torch.get_num_threads()`` when None; checked to be a positive int."""
    if workers is None:
        return max(1, torch.get_num_threads())
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int or None (one per torch thread), got {workers!r}")
    return workers


def map_modules(fn: Callable, items: Iterable, /, *, workers: int = 1) -> list:
    """``[fn(item) for item in items]``, computed by ``workers`` threads of one torch thread each.

    Parameters
    ----------
    fn : callable
        A task that touches no shared state except through thread-safe reads.
    items : iterable
    workers : int
        Threads; 1 runs the tasks in order in the calling thread. Either way each task runs with
        one torch thread, and the torch thread count is restored afterwards.

    Returns
    -------
    list
        The results in the order of ``items``. The first exception (in that order) propagates;
        the tasks not started by then are dropped, the running ones finish first.
    """
    items = list(items)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also with one worker, so that the results never depend on ``workers``
    try:
        if workers <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # the tasks not started yet are dropped
                    f.cancel()
                raise
    finally:
        torch.set_num_threads(threads)
