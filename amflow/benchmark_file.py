"""A job's exact CPU seconds: a Snakemake-format benchmark file for a command that DVC runs (``amflow
timed``), and the closing line of every ``amflow`` command, which Snakemake jobs keep in their logs.

Snakemake writes each job's ``benchmark:`` file itself and counts it among the job's outputs, so a run
that DVC made (``dvc repro``) must leave the same file, or Snakemake would rerun every job to make it.
``amflow timed --benchmark FILE -- CMD...`` runs CMD and writes FILE with Snakemake's columns: wall
seconds, the children's peak resident memory and CPU seconds (``getrusage``); the columns that need
Snakemake's sampling of the process tree are ``NA``.

Snakemake's own benchmark files sample a job's CPU time (every 0.5 s at first, then every 30 s), so
they miss a long job's last seconds. Every ``amflow`` command that succeeds therefore ends with one line,
:data:`CPU_LINE`, giving its process's CPU seconds and those of its finished children (``getrusage``):
a job's log holds the exact figure (one line per process, several under ``torchrun``).
"""
from __future__ import annotations

import json
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Optional

from amflow import io

COLUMNS = ("s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time")


CPU_LINE = "amflow {command}: {cpu:.2f} CPU s"
CPU_LINE_PATTERN = re.compile(r"^amflow [\w-]+: (\d+(?:\.\d+)?) CPU s$", re.M)


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s() -> float:
    """User and system CPU seconds of this process and of its children that have been waited for."""
    return _cpu_s(resource.RUSAGE_SELF) + _cpu_s(resource.RUSAGE_CHILDREN)


# Beside a Snakemake run's log: the CPU seconds of the whole run (record_run_cpu).
RUN_CPU_SUFFIX = ".cpu.json"


def record_run_cpu(logs: list[str]) -> None:
    """Snakemake's ``onsuccess``, in its own process: the CPU seconds of that process (scheduling, the
    benchmark sampling) and of everything it waited for (each job's shell and command, the scheduler's
    solver), written beside each of the run's logs as ``<log>.cpu.json``. The jobs' closing lines count
    only their commands; this is the whole run, on this machine (a cluster's jobs run elsewhere)."""
    record = {"snakemake_cpu_s": round(_cpu_s(resource.RUSAGE_SELF), 2),
              "children_cpu_s": round(_cpu_s(resource.RUSAGE_CHILDREN), 2)}
    for log in logs:
        io.write_json(Path(str(log) + RUN_CPU_SUFFIX), record)


def run_cpu_s(log: Path) -> Optional[float]:
    """The whole run's CPU seconds that :func:`record_run_cpu` wrote beside ``log``; None without the record
    (a run that failed or was stopped, or one from before the record existed)."""
    try:
        record = json.loads(Path(str(log) + RUN_CPU_SUFFIX).read_text())
    except (OSError, ValueError):
        return None
    return float(record["snakemake_cpu_s"]) + float(record["children_cpu_s"])


def logged_cpu_s(logs: list[Path]) -> Optional[float]:
    """The CPU seconds that the ``amflow`` commands of a job wrote into its logs (summed over processes),
    or None when no log holds a :data:`CPU_LINE` (another program, or a log that is gone)."""
    found = []
    for log in logs:
        try:
            found += CPU_LINE_PATTERN.findall(Path(log).read_text(errors="replace"))
        except OSError:
            continue
    return sum(float(v) for v in found) if found else None


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
