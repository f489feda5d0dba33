"""Pools of spawned processes for CPU-bound work that runs one thread per process."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def spawned_pool(
    n_processes: int, initializer: Callable[[], None] | None = None
) -> Iterator[concurrent.futures.Executor | None]:
    """Yield a pool of ``n_processes`` spawned processes, or None to work in this one.

    None comes for one process, and in a daemonic process (a Celery prefork child,
    for one), which may not start children.
    """
    if n_processes <= 1 or multiprocessing.current_process().daemon:
        yield None
        return
    # Spawned, not forked: a forked child inherits the parent's OpenMM and torch
    # thread pools in an unusable state.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        n_processes, mp_context=context, initializer=initializer
    ) as pool:
        yield pool
