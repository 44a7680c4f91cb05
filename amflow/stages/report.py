"""``amflow report``: ``results/<name>/report.md``, built by :mod:`amflow.report.report`."""
from __future__ import annotations

from pathlib import Path

from amflow import io
from amflow.params import Params
from amflow.report.report import REPORT, build_report


def write_report(params: Params, results_dir: Path) -> Path:
    path = Path(results_dir) / REPORT
    io.write_text(path, build_report(params, results_dir))
    return path
