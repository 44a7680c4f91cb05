"""A Snakemake-format benchmark file for a command that DVC runs (``amflow timed``).

Snakemake writes each job's ``benchmark:`` file itself and counts it among the job's outputs, so a run
that DVC made (``dvc repro``) must leave the same file, or Snakemake would rerun every job to make it.
``amflow timed --benchmark FILE -- CMD...`` runs CMD and writes FILE with Snakemake's columns: wall
seconds, the children's peak resident memory and CPU seconds (``getrusage``); the columns that need
Snakemake's sampling of the process tree are ``NA``.
"""
from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path

from amflow import io

COLUMNS = ("s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time")


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run_timed(command: list[str], benchmark: Path) -> int:
    """Run ``command``; on success write ``benchmark``; return its exit status."""
    start = time.perf_counter()
    status = subprocess.call(command)
    wall = time.perf_counter() - start
    if status == 0:  # a failed job leaves no benchmark, as under Snakemake
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = {"s": f"{wall:.4f}", "h:m:s": hms(wall), "max_rss": f"{usage.ru_maxrss / 1024:.2f}",
               "cpu_time": f"{usage.ru_utime + usage.ru_stime:.2f}"}
        io.write_text(benchmark, "\t".join(COLUMNS) + "\n" + "\t".join(row.get(c, "NA") for c in COLUMNS) + "\n")
    return status
