"""Where a Snakemake run's wall time went: per-stage times and the critical path.

Two sources, both written by Snakemake itself:

- each rule's ``benchmark:`` file (``benchmarks/<name>/<rule>/...tsv``, one row: ``s`` wall seconds,
  ``cpu_time`` seconds, ``max_rss`` MB): the time of every job, to the hundredth of a second;
- the run's log (``.snakemake/log/<date>.snakemake.log``): when each job started and finished (to the
  second), and its inputs and outputs, from which the dependencies follow.

The critical path is the chain that ends with the job that finished last, going back each time to the
input-producing job that finished last: the jobs that the wall time waited for.

The overhead is every CPU second that is not learning: learning is a training's epochs (``train_cpu_s``
in ``train.json`` and in the pretraining's ``metrics.json``) and an evaluation's forward passes
(``eval_cpu_s`` in its ``metrics.json``; a training job that evaluates too records both, and the
evaluation job that only copies its files records none): the CPU seconds the job's own process spent
there. A record from before these fields has only the wall seconds (``train_time_s``, ``eval_time_s``),
counted at the job's mean CPU rate (its benchmark's CPU over wall seconds), which overstates the
overhead when the epochs use more threads than the start-up. Everything else is overhead: start-up,
tracking, checkpoints, data, camera motion, tables and the report.

A job's CPU seconds are those its ``amflow`` commands wrote as their closing line into the job's log
(:mod:`amflow.benchmark_file`), and only for a job without one its benchmark file's ``cpu_time``.
Snakemake samples that (every 0.5 s for a job's first 15 s or so, then every 30 s), so it misses a long
job's last seconds: a job whose own record of learning holds more CPU seconds than that shows it; the
summary counts those jobs, and with any of them the overhead it gives is a lower bound.

The whole run's CPU seconds, Snakemake's own process (scheduling, benchmark sampling) and each job's
shell and process exit included, are those the Snakefile's ``onsuccess`` wrote beside the log
(:func:`amflow.benchmark_file.record_run_cpu`); its overhead share is the one the run costs the machine.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional

import pandas as pd

from amflow.benchmark_file import logged_cpu_s, run_cpu_s
from amflow.errors import AmflowError
from amflow.evaluate.reuse import REUSED_FROM

# The rules whose tables answer the run's question, first to last: when each finished is the time to it.
ANSWERS = {"table1_first_seed": "table 1 of the first seed", "table1": "the full table 1"}
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?rule (\w+):$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")
FIELD = re.compile(r"^    (input|output|log|jobid|benchmark): (.*)$")


@dataclass
class Job:
    jobid: int
    rule: str
    start: datetime
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    benchmark: Optional[str] = None
    end: Optional[datetime] = None
    logs: list[str] = field(default_factory=list)


def _stamp(text: str) -> datetime:
    return datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y")


def parse_log(path: Path) -> tuple[datetime, list[Job]]:
    """(the run's start, its jobs with start, end, inputs and outputs) from a Snakemake log."""
    path = Path(path)
    if not path.is_file():
        raise AmflowError(f"{path}: Snakemake log not found; run the workflow first (each run writes "
                          f".snakemake/log/<date>.snakemake.log)")
    lines = path.read_text(errors="replace").splitlines()
    began = next((m.group(1) for line in lines if (m := re.match(r"^  Date: (.+)$", line))), None)
    jobs: dict[int, Job] = {}
    stamp: Optional[datetime] = None
    current: Optional[dict] = None

    def close():
        if current and "jobid" in current:
            jobs[current["jobid"]] = Job(current["jobid"], current["rule"], current["start"],
                                         current.get("input", []), current.get("output", []),
                                         current.get("benchmark"), logs=current.get("log", []))

    for line in lines:
        if m := STAMP.match(line):
            close()
            current, stamp = None, _stamp(m.group(1))
        elif (m := RULE.match(line)) and stamp is not None:
            close()
            current = {"rule": m.group(1), "start": stamp}
        elif (m := FIELD.match(line)) and current is not None:
            key, value = m.groups()
            if key == "jobid":
                current["jobid"] = int(value)
            elif key == "benchmark":
                current["benchmark"] = value.strip()
            else:
                current[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif (m := FINISHED.match(line)) and stamp is not None:
            close()
            current = None
            job = jobs.get(int(m.group(1)))
            if job is not None:
                job.end = stamp
    close()
    if not jobs:
        raise AmflowError(f"{path}: no job in this Snakemake log (a dry run, or nothing to do); time a run that "
                          f"did the work")
    start = datetime.strptime(began, "%Y-%m-%d %H:%M:%S") if began else min(j.start for j in jobs.values())
    return start, sorted(jobs.values(), key=lambda j: j.jobid)


def read_benchmark(path: Path) -> Optional[dict]:
    """One benchmark file's row (``s``, ``cpu_time``, ``max_rss``... as floats), or None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        return None

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    return {k: num(v) for k, v in rows[-1].items()}


def learning_cpu_s(job: Job, cpu_rate: float, root: Path = Path(".")) -> float:
    """The CPU seconds a job's JSON outputs record as learning (see the module docstring), a wall-time
    record counted at ``cpu_rate``; 0 for a job that records none (data, camera motion, tables) or whose
    outputs are gone."""
    total = 0.0
    for out in job.outputs:
        if not out.endswith(".json"):
            continue
        try:
            doc = json.loads((Path(root) / out).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        if REUSED_FROM in doc:
            continue  # copied from the training job's evaluation, whose forward passes count there
        # An evaluation's metrics.json repeats its training's train_time_s: only its own forward passes count.
        kind = "eval" if "eval_time_s" in doc else "train"
        if doc.get(f"{kind}_cpu_s") is not None:
            total += float(doc[f"{kind}_cpu_s"])
        else:
            total += float(doc.get(f"{kind}_time_s") or 0.0) * cpu_rate
    return total


def stage_table(jobs: list[Job], root: Path = Path(".")) -> pd.DataFrame:
    """Per rule: jobs, summed and longest wall seconds (benchmark files, else the log's stamps), summed
    CPU seconds, the largest resident memory (MB), and the summed CPU seconds of learning."""
    rows = []
    for j in jobs:
        b = read_benchmark(Path(root) / j.benchmark) if j.benchmark else None
        wall = b["s"] if b and b.get("s") is not None else (
            (j.end - j.start).total_seconds() if j.end else None)
        # The command's own closing line is exact; Snakemake's benchmark samples (module docstring).
        cpu = logged_cpu_s([Path(root) / log for log in j.logs])
        if cpu is None:
            cpu = b.get("cpu_time") if b else None
        learning, undercounted = None, False
        if cpu is not None and wall:
            learning = learning_cpu_s(j, cpu / wall, root)
            undercounted = learning > cpu  # the benchmark's sampling missed the job's last seconds
            learning = min(cpu, learning)
        rows.append({"rule": j.rule, "wall_s": wall, "cpu_s": cpu, "max_rss_mb": b.get("max_rss") if b else None,
                     "learning_cpu_s": learning, "undercounted": undercounted})
    df = pd.DataFrame(rows, columns=["rule", "wall_s", "cpu_s", "max_rss_mb", "learning_cpu_s", "undercounted"])
    order = list(dict.fromkeys(df["rule"]))
    out = df.groupby("rule", sort=False).agg(jobs=("rule", "size"), wall_s_sum=("wall_s", "sum"),
                                             wall_s_max=("wall_s", "max"), cpu_s_sum=("cpu_s", "sum"),
                                             max_rss_mb=("max_rss_mb", "max"),
                                             learning_cpu_s=("learning_cpu_s", "sum"),
                                             undercounted=("undercounted", "sum"))
    return out.reindex(order).reset_index()


def critical_path(jobs: list[Job]) -> list[Job]:
    """The jobs the run's wall time waited for, first to last (see the module docstring)."""
    done = [j for j in jobs if j.end is not None]
    if not done:
        return []
    producer = {out: j for j in done for out in j.outputs}
    path = [max(done, key=lambda j: (j.end, j.jobid))]
    while True:
        deps = [producer[i] for i in path[-1].inputs if i in producer and producer[i] is not path[-1]]
        if not deps:
            break
        path.append(max(deps, key=lambda j: (j.end, j.jobid)))
    return path[::-1]


def latest_log(workdir: Path = Path(".")) -> Path:
    """The newest log of a run that did work: a dry run (``snakemake -n``) or a run with nothing to do
    writes a log too, and is passed over."""
    folder = Path(workdir) / ".snakemake" / "log"
    logs = sorted(folder.glob("*.snakemake.log"))
    if not logs:
        raise AmflowError(f"{folder}: no Snakemake log; run the workflow first")
    for log in reversed(logs):
        try:
            parse_log(log)
        except AmflowError:
            continue
        return log
    raise AmflowError(f"{folder}: none of its {len(logs)} Snakemake logs ran a job (dry runs, or nothing to do); "
                      f"time a run that did the work")


def workdir_of(log: Path) -> Path:
    """The workflow folder a log belongs to (``<workdir>/.snakemake/log/<date>.snakemake.log``), where its
    benchmark files are; the current folder for a log kept anywhere else."""
    log = Path(log).resolve()
    if log.parent.name == "log" and log.parent.parent.name == ".snakemake":
        return log.parents[2]
    return Path(".")


def summary(log: Path, root: Path = Path(".")) -> dict:
    """Total wall time, the stage table and the critical path of one Snakemake run."""
    start, jobs = parse_log(log)
    ended = [j.end for j in jobs if j.end is not None]
    path = critical_path(jobs)
    stages = stage_table(jobs, root)
    cpu = float(stages["cpu_s_sum"].sum())
    learning = float(stages["learning_cpu_s"].sum())
    # The whole run (Snakefile's onsuccess): on a cluster the jobs ran elsewhere and it holds less than they.
    run_cpu = run_cpu_s(log)
    run_cpu = run_cpu if run_cpu is not None and run_cpu >= cpu else None
    # When each answer was there: table 1 of the first seed, then the full table (rule -> seconds from start).
    answers = {j.rule: (j.end - start).total_seconds() for j in jobs if j.rule in ANSWERS and j.end is not None}
    return {"log": str(log), "wall_s": (max(ended) - start).total_seconds() if ended else None, "answers": answers,
            "jobs": len(jobs), "unfinished": sum(j.end is None for j in jobs), "stages": stages,
            "cpu_s": cpu, "overhead_cpu_s": cpu - learning,
            "run_cpu_s": run_cpu, "run_overhead_cpu_s": None if run_cpu is None else run_cpu - learning,
            "undercounted_jobs": int(stages["undercounted"].sum()),
            "critical_path": [{"rule": j.rule, "output": j.outputs[0] if j.outputs else "",
                               "start_s": (j.start - start).total_seconds(),
                               "end_s": (j.end - start).total_seconds()} for j in path]}


def markdown(s: dict) -> str:
    """The summary as Markdown: the total, a stage table and the critical path."""
    stages = s["stages"].copy()
    cpu = stages["cpu_s_sum"].where(stages["cpu_s_sum"] > 0)
    stages["overhead"] = 100 * (cpu - stages["learning_cpu_s"]) / cpu
    stages = stages.drop(columns=["learning_cpu_s", "undercounted"])
    for col, fmt in (("wall_s_sum", "{:.1f}"), ("wall_s_max", "{:.1f}"), ("cpu_s_sum", "{:.1f}"),
                     ("max_rss_mb", "{:.0f}"), ("overhead", "{:.0f}%")):
        stages[col] = [("" if pd.isna(v) else fmt.format(v)) for v in stages[col]]
    stages.columns = ["stage (rule)", "jobs", "wall s (sum)", "wall s (longest job)", "CPU s (sum)", "max RSS MB",
                      "overhead (CPU)"]
    chain = " → ".join(f"{c['rule']} ({c['end_s'] - c['start_s']:.0f} s)" for c in s["critical_path"])
    total = "unknown" if s["wall_s"] is None else f"{s['wall_s']:.0f} s ({s['wall_s'] / 60:.1f} min)"
    overhead = ("unknown (no benchmark files)" if not s["cpu_s"] else
                f"{s['overhead_cpu_s']:.0f} of {s['cpu_s']:.0f} CPU s ({100 * s['overhead_cpu_s'] / s['cpu_s']:.0f}%)")
    if s.get("undercounted_jobs"):
        overhead += (f"; a lower bound: {s['undercounted_jobs']} of {s['jobs']} jobs recorded more CPU seconds of "
                     "learning than their benchmark file holds (Snakemake samples CPU time, every 30 s after a "
                     "job's first seconds, and misses its last ones)")
    if s.get("run_cpu_s"):
        overhead += (f" in the jobs' commands; {s['run_overhead_cpu_s']:.0f} of {s['run_cpu_s']:.0f} CPU s "
                     f"({100 * s['run_overhead_cpu_s'] / s['run_cpu_s']:.0f}%) in the whole run (Snakemake's own "
                     "process, each job's shell and exit included),")
    answers = "; ".join(f"{what} after {s['answers'][rule] / 60:.1f} min" for rule, what in ANSWERS.items()
                        if rule in s.get("answers", {}))
    return "\n".join([f"Wall time: {total}, {s['jobs']} jobs"
                      + (f" ({s['unfinished']} unfinished)" if s["unfinished"] else "") + "."
                      + (f" Answers: {answers}." if answers else ""), "",
                      f"Overhead: {overhead} outside training epochs and evaluation forward passes.", "",
                      stages.to_markdown(index=False, disable_numparse=True), "",
                      f"Critical path (log stamps, 1 s resolution): {chain}."])
