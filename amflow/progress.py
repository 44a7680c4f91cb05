"""Progress bars: tqdm's live bar on a terminal; in a log file, one plain line every N steps.

A redirected stream (a Snakemake log, a SLURM output file, ``> run.log``) would otherwise collect
tqdm's carriage-return updates as one unreadable line. :func:`bar` picks the form from the stream.
"""
from __future__ import annotations

import math
import sys
from typing import Iterable, Optional, TextIO

from tqdm import tqdm

LINES_PER_BAR = 10  # a log gets about this many lines per bar of known length (plus the last count)


class LogLines(tqdm):
    """tqdm whose every refresh is one plain line, without carriage returns or cursor moves."""

    monitor_interval = 0  # no monitor thread: it would lower ``miniters`` to 1 after a slow step

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        # tqdm passes msg='' to erase the bar, which a log does not need; a count is printed once.
        if msg is None and self.n != getattr(self, "_logged_n", None):
            self._logged_n = self.n
            self.fp.write(f"{self}\n")
            self.fp.flush()
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to erase in a log."""

    def close(self) -> None:
        if not self.disable:
            self.display()  # the final count, unless it is the last line already
        self.sp = None  # tqdm's close then writes no '\r' or '\n' of its own
        super().close()


def every(total: Optional[int]) -> int:
    """Steps between two lines in a log: about :data:`LINES_PER_BAR` lines per bar."""
    return max(1, math.ceil(total / LINES_PER_BAR)) if total else 1


def bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
        disable: bool = False, leave: bool = True, file: Optional[TextIO] = None, **kwargs) -> tqdm:
    """A tqdm bar on ``file`` (default stderr): live on a terminal, lines in a log (see module doc)."""
    file = file or sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if file.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=file,
                    mininterval=1.0, **kwargs)
    # mininterval=0: the step count alone decides; a bar of unknown length prints a line every 30 s.
    if total:
        kwargs.setdefault("bar_format", "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) "
                                        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
    steps, seconds = (every(total), 0.0) if total else (1, 30.0)
    return LogLines(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=file,
                    miniters=steps, mininterval=seconds, **kwargs)
