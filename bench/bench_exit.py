"""What a command's end costs: the interpreter's teardown after a training-sized job, against the
``os._exit`` with which ``amflow`` ends a successful command (:func:`amflow.cli.run`).

    python bench/bench_exit.py              # 3 processes each way, the default params' model
    python bench/bench_exit.py --repeats 5

Each process imports what ``amflow train`` imports (torch, timm, MLflow's tracking client), builds the
default params' AM flow model, runs a few training steps on random clips, notes its own CPU seconds
(``getrusage``, what the job's closing line reports), then ends: the usual way, or flushing and calling
``os._exit``. The parent takes each child's CPU seconds from the kernel; the difference is the ending.
Figures only: nothing here passes or fails. They move with the machine's load: compare within one run.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, resource, sys
import torch
import mlflow.tracking  # noqa: F401  (what amflow train imports when it tracks)
from amflow.params_io import load_params
from amflow.runs import build_run_model

torch.set_num_threads(1)
p = load_params("params/default.yaml", {"backbone": {"weights": "random"}})  # speed does not depend on them
s = p.sampling_for("synth_static")
model = build_run_model(p, "synth_static", "amflow", 10, "static", None, 0)
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad])
for _ in range(3):
    model(torch.randn(8, s.num_frames, 3, s.crop_size, s.crop_size)).sum().backward()
    opt.step()
    opt.zero_grad()
own = resource.getrusage(resource.RUSAGE_SELF)
print(f"{own.ru_utime + own.ru_stime:.3f}", flush=True)
if sys.argv[1] == "os_exit":
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
"""


def child_cpu(how: str) -> tuple[float, float]:
    """(the CPU seconds the child noted before ending, all its CPU seconds as the kernel counted them)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", CHILD, how], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "", "HF_HUB_OFFLINE": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"the child failed:\n{out.stderr[-3000:]}")
    whole = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return float(out.stdout.split()[-1]), whole


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    ends = {}
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both alike
        for how in ("teardown", "os_exit"):
            noted, whole = child_cpu(how)
            ends.setdefault(how, []).append(whole - noted)
    for how, values in ends.items():
        print(f"{how:9s}: the ending costs {statistics.median(values):.2f} CPU s (median of {len(values)}; "
              f"{', '.join(f'{v:.2f}' for v in values)})")
    saved = statistics.median(ends["teardown"]) - statistics.median(ends["os_exit"])
    print(f"os._exit saves {saved:.2f} CPU s per process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
