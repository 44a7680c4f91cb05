"""Worker processes: how many, and how they start (one policy for every stage that works in parallel)."""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.pool
import os
from typing import Callable, Optional


def usable_cores() -> int:
    """The cores this process may use: SLURM or taskset may give it fewer than the machine has (CPU
    affinity), and a Snakemake job its ``threads:`` (passed as ``OMP_NUM_THREADS``, which torch follows too)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no CPU affinity on this platform
        cores = os.cpu_count() or 1
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(budget)) if budget.isdigit() and int(budget) > 0 else cores


def machine_memory_mb() -> int:
    """This machine's physical memory in Snakemake's ``mem_mb`` unit (10**6 bytes; ``mem_mib`` is 2**20)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 10**6


def worker_count(requested: int, tasks: int) -> int:
    """``requested`` workers (0: one per usable core), no more than there are tasks, and at least one."""
    return max(1, min(requested or usable_cores(), tasks))


def one_opencv_thread() -> None:
    """Worker initialiser: one process per core already, so OpenCV's own threads would only compete."""
    import cv2  # lazily: only workers that decode or render need OpenCV

    cv2.setNumThreads(1)


def before_forking_workers() -> None:
    """Call before a DataLoader forks its workers. OpenCV's thread pool does not survive a fork: the
    child inherits its condition variable still counting the parent's threads, and the worker's first
    ``cv2.setNumThreads`` waits for them forever (seen after the parent rendered images). Stopping the
    pool here (one OpenCV thread in this process from now on) leaves the child nothing to wait for."""
    import sys

    if "cv2" in sys.modules:  # no pool exists before OpenCV is imported
        sys.modules["cv2"].setNumThreads(1)


def spawn_pool(workers: int, initializer: Optional[Callable] = None, initargs: tuple = ()) -> mp.pool.Pool:
    """A pool of fresh interpreters, never forks of this process: a fork inherits the parent's threads'
    locks (OpenCV's pool, tqdm, torch) in whatever state they were, and its first cv2 call can deadlock
    (seen here). The results do not depend on the start method; each worker costs about 1 s of imports."""
    return mp.get_context("spawn").Pool(workers, initializer=initializer, initargs=initargs)
