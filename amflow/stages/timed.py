"""``amflow timed``: run a command and write its Snakemake-format benchmark file (the DVC stages run
through it)."""
from __future__ import annotations

from pathlib import Path

from amflow.benchmark_file import run_timed
from amflow.errors import AmflowError


def timed(command: list[str], benchmark: Path) -> int:
    command = command[1:] if command[:1] == ["--"] else command
    if not command:
        raise AmflowError("amflow timed: give the command after --, e.g. amflow timed --benchmark b.tsv -- amflow "
                          "tables")
    return run_timed(command, benchmark)
