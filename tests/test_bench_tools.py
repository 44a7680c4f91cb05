"""The benchmarks' shared clock and the CPU memory counter of bench/bench_models.py (the one place
that uses a private torch class, so a torch upgrade that breaks it fails here)."""
from __future__ import annotations

import sys
import time

import torch

from project_copy import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from bench_models import LiveTensorMemory  # noqa: E402
from timing import Clock  # noqa: E402


def test_clock_uses_the_chosen_cpu_clock():
    ticks = iter([10.0, 12.5])
    clock = Clock(torch.device("cpu"), cpu_time=lambda: next(ticks))
    assert clock() == 10.0 and clock() == 12.5
    assert Clock(torch.device("cpu")).cpu_time is time.perf_counter


def test_live_tensor_memory_counts_storage_alive_at_the_peak():
    with LiveTensorMemory() as mem:
        a = torch.ones(1000)                 # 4000 bytes
        b = torch.ones(500, dtype=torch.float64)  # 4000 bytes, both alive: peak 8000
        view = a[:10]                        # a view: no new storage
        del b
        c = torch.ones(250)                  # 1000 bytes after b was freed
    assert mem.peak == 8000
    assert mem.live == 5000
    del a, view, c
