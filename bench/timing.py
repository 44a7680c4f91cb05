"""The benchmarks' clock: one class, the CPU clock chosen by each benchmark.

Not ``torch.utils.benchmark.Timer``: it times a statement in a loop of its own, while the benchmarks
add up time spent inside a model's forward (wrapped methods) and inside a training loop.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


class Clock:
    """Seconds: on CUDA, wall time after synchronising the device; on CPU, ``cpu_time``.

    ``time.process_time`` (this process's CPU seconds) hides the neighbours' load on a shared machine
    but misses work done in other processes (data loader workers): a benchmark with workers keeps
    the default wall clock.
    """

    def __init__(self, device: torch.device, cpu_time: Callable[[], float] = time.perf_counter):
        self.device, self.cpu_time = device, cpu_time

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return self.cpu_time()
