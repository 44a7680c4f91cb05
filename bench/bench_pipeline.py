"""Where the wall time of a Snakemake run went: each stage's time, the critical path, and the overhead
(the CPU seconds outside training epochs and evaluation forward passes, as a share of the run's).

    snakemake --cores 8 results/table1.csv       # the run to time (from empty data/ and results/)
    python bench/bench_pipeline.py               # the latest log of a run that did work, .snakemake/log/
    python bench/bench_pipeline.py --log .snakemake/log/<date>.snakemake.log

Reads every job's ``benchmark:`` file (``benchmarks/<name>/<rule>/...tsv``: wall and CPU seconds, memory)
and the run's Snakemake log (start and end of each job, inputs and outputs), through
:mod:`amflow.report.timing`. Figures only: nothing here passes or fails. Times depend on the machine and
its load; the per-stage table shows where to look.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amflow.errors import AmflowError  # noqa: E402
from amflow.report import timing  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", type=Path, help="a Snakemake log (default: the latest under .snakemake/log/)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="the workflow's folder, where its benchmark files are (default: the folder of --log's "
                         ".snakemake/, else .)")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(".")
    if args.log is None and not list((workdir / ".snakemake" / "log").glob("*.snakemake.log")):
        print("no Snakemake run to time yet: run `snakemake --cores 8 results/table1.csv` first")
        return 0
    try:
        log = args.log or timing.latest_log(workdir)
        print(timing.markdown(timing.summary(log, args.workdir or timing.workdir_of(log))))
    except AmflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
