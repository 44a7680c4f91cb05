"""Pipeline timing: stage times and the critical path from a Snakemake log and benchmark files; the
README's generated results section."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from amflow.errors import AmflowError
from amflow.report import timing
from amflow.stages import readme_results as readme

ROOT = Path(__file__).resolve().parents[2]

# Hand-written Snakemake logs: every log in this file repeats the shape of Snakemake's own format (a stamp,
# a rule, its fields), which is what the parser reads; they are test data, not repeated logic.
# A run of four jobs: a (0-10 s) and b (0-4 s) side by side, c needs both (10-30 s), d needs b (4-8 s).
LOG = """\
SNAKEMAKE
=========
  Date: 2026-01-05 10:00:00

[Mon Jan  5 10:00:00 2026]
localrule a:
    output: out/a.txt
    log: logs/a.log
    jobid: 1
    benchmark: bench/a.tsv
    reason: Missing output files: out/a.txt

[Mon Jan  5 10:00:00 2026]
localrule b:
    output: out/b.txt
    jobid: 2

[Mon Jan  5 10:00:04 2026]
Finished jobid: 2 (Rule: b)

[Mon Jan  5 10:00:04 2026]
localrule d:
    input: out/b.txt
    output: out/d.txt
    jobid: 4

[Mon Jan  5 10:00:08 2026]
Finished jobid: 4 (Rule: d)

[Mon Jan  5 10:00:10 2026]
Finished jobid: 1 (Rule: a)

[Mon Jan  5 10:00:10 2026]
rule c:
    input: out/a.txt, out/b.txt
    output: out/c.txt, out/c2.txt
    jobid: 3

[Mon Jan  5 10:00:30 2026]
Finished jobid: 3 (Rule: c)
"""


@pytest.fixture
def run_log(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/a.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n9.87\t0:00:09\t123.4\t19.5\n")
    log = tmp_path / ".snakemake/log/2026-01-05T100000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text(LOG)
    return log


def test_stage_times_and_critical_path(run_log, tmp_path):
    s = timing.summary(run_log, tmp_path)
    assert s["wall_s"] == 30 and s["jobs"] == 4 and s["unfinished"] == 0
    # c waited for a (finished at 10 s), not for b (4 s): the path is a -> c.
    assert [(c["rule"], c["start_s"], c["end_s"]) for c in s["critical_path"]] == [("a", 0, 10), ("c", 10, 30)]
    stages = s["stages"].set_index("rule")
    assert stages.loc["a", "wall_s_sum"] == 9.87 and stages.loc["a", "cpu_s_sum"] == 19.5  # the benchmark file
    assert stages.loc["c", "wall_s_sum"] == 20 and stages.loc["b", "wall_s_sum"] == 4   # the log's stamps
    text = timing.markdown(s)
    assert "Wall time: 30 s (0.5 min), 4 jobs." in text and "a (10 s) → c (20 s)" in text


def test_bench_pipeline_prints_the_latest_run(run_log, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench/bench_pipeline.py"), "--workdir", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert "Critical path (log stamps, 1 s resolution): a (10 s) → c (20 s)." in out.stdout
    elsewhere = subprocess.run([sys.executable, str(ROOT / "bench/bench_pipeline.py"), "--log", str(run_log)],
                               capture_output=True, text=True, check=True, cwd=ROOT)
    assert re.search(r"\| a\s+\| 1\s+\| 9\.9\s+\| 9\.9\s+\| 19\.5\s+\|", elsewhere.stdout)  # the run's own benchmarks
    empty = subprocess.run([sys.executable, str(ROOT / "bench/bench_pipeline.py"), "--workdir",
                            str(tmp_path / "nothing")], capture_output=True, text=True, check=True)
    assert "no Snakemake run to time yet" in empty.stdout


def test_the_latest_run_that_did_work_is_timed_not_a_later_dry_run(run_log, tmp_path):
    """`snakemake -n` after a run writes a newer log with no job: bench_pipeline still times the run."""
    dry = run_log.parent / "2026-01-06T090000.000000.snakemake.log"
    dry.write_text("Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n")
    assert timing.latest_log(tmp_path) == run_log
    out = subprocess.run([sys.executable, str(ROOT / "bench/bench_pipeline.py"), "--workdir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "a (10 s) → c (20 s)" in out.stdout, out.stderr
    run_log.unlink()
    with pytest.raises(AmflowError, match="none of its 1 Snakemake logs ran a job"):
        timing.latest_log(tmp_path)


def test_overhead_is_the_cpu_outside_epochs_and_forward_passes(tmp_path):
    """A hand-made run: data (6 CPU s, no learning), a 2-thread training (10 s wall, 20 CPU s, of which its
    epochs took 5 s of wall: 10 CPU s) and an evaluation (4 s, 4 CPU s, forward passes 2 s; its
    metrics.json repeats the training's 5 s, which must not count). Overhead: 18 of 30 CPU s."""
    import json

    log = tmp_path / ".snakemake/log/2026-01-05T100000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text("""\
[Mon Jan  5 10:00:00 2026]
rule prepare:
    output: data/d.json
    jobid: 1
    benchmark: bench/prepare.tsv

[Mon Jan  5 10:00:06 2026]
Finished jobid: 1 (Rule: prepare)

[Mon Jan  5 10:00:06 2026]
rule train:
    input: data/d.json
    output: results/r/train.json, results/r/checkpoint.pt
    jobid: 2
    benchmark: bench/train.tsv

[Mon Jan  5 10:00:16 2026]
Finished jobid: 2 (Rule: train)

[Mon Jan  5 10:00:16 2026]
rule evaluate:
    input: results/r/train.json
    output: results/r/metrics.json, results/r/scores.json
    jobid: 3
    benchmark: bench/evaluate.tsv

[Mon Jan  5 10:00:20 2026]
Finished jobid: 3 (Rule: evaluate)
""")
    (tmp_path / "bench").mkdir()
    for rule, wall, cpu in (("prepare", 6, 6), ("train", 10, 20), ("evaluate", 4, 4)):
        (tmp_path / f"bench/{rule}.tsv").write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{wall}\t0:00:{wall:02d}\t100\t{cpu}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/d.json").write_text("{}")
    (tmp_path / "results/r").mkdir(parents=True)
    (tmp_path / "results/r/train.json").write_text(json.dumps({"train_time_s": 5.0}))
    (tmp_path / "results/r/metrics.json").write_text(json.dumps({"train_time_s": 5.0, "eval_time_s": 2.0}))
    (tmp_path / "results/r/scores.json").write_text(json.dumps({"top1": 0.5}))
    s = timing.summary(log, tmp_path)
    assert s["cpu_s"] == 30 and s["overhead_cpu_s"] == pytest.approx(18)
    learning = s["stages"].set_index("rule")["learning_cpu_s"]
    assert learning.to_dict() == pytest.approx({"prepare": 0.0, "train": 10.0, "evaluate": 2.0})
    text = timing.markdown(s)
    assert "Overhead: 18 of 30 CPU s (60%) outside training epochs and evaluation forward passes." in text
    assert re.search(r"\| train\s+\| 1\s+\| 10\.0\s+\| 10\.0\s+\| 20\.0\s+\| 100\s+\| 50%\s+\|", text), text


def test_a_log_without_jobs_is_one_clear_error(tmp_path):
    log = tmp_path / "dry.log"
    log.write_text("Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n")
    with pytest.raises(AmflowError, match="no job in this Snakemake log"):
        timing.summary(log)


def test_readme_block_is_replaced_between_the_markers_only(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# title\nbefore\n{readme.BEGIN}\nold numbers\n{readme.END}\nafter\n")
    readme.update_readme(path, "new numbers\n")
    assert path.read_text() == f"# title\nbefore\n{readme.BEGIN}\nnew numbers\n{readme.END}\nafter\n"
    path.write_text("# no markers\n")
    with pytest.raises(AmflowError, match="README.md: needs one line"):
        readme.update_readme(path, "x\n")


def test_the_shipped_readme_has_one_results_section_then_one_timing_section():
    text = (ROOT / "README.md").read_text()
    markers = (readme.BEGIN, readme.END, readme.TIMING_BEGIN, readme.TIMING_END)
    assert [text.count(m) for m in markers] == [1, 1, 1, 1]
    assert [text.index(m) for m in markers] == sorted(text.index(m) for m in markers)


def test_every_rule_writes_a_benchmark_file():
    import re

    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    for src in sources:
        blocks = re.split(r"\n(?=[ \t]*rule \w+:)", src.read_text())
        for block in blocks[1:]:
            name = re.search(r"rule (\w+):", block).group(1)
            if "shell:" not in block and "run:" not in block:
                continue  # a target rule (all) runs nothing, so there is nothing to time
            assert "benchmark:" in block, f"{src.name}: rule {name} has no benchmark: directive"


def test_readme_results_section_from_tables(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_report import build

    params, _ = build(tmp_path)
    text = readme.results_markdown(params, tmp_path)
    # table 1's figures and the claims, read from the table the fixture wrote
    assert re.search(r"\| synth_moving \| amflow\s+\| 51\.00 ± 1\.41\s+\| -6\.00 ± 1\.41\s+\|", text)
    assert "**AM flow helps** on `synth_moving`: no. Paired top-1 difference `amflow` − `tpa`" in text
    # the ablation rows, paired with tpa: variant aligned on synth_moving is +3 and +1 points
    assert re.search(r"\| variant \| aligned\s+\| synth_moving \| 59\.00 ± 1\.41\s+\| 2\.00 ± 1\.41\s+\|", text)
    assert "Wall time" not in text


def test_timed_writes_a_snakemake_format_benchmark_only_on_success(tmp_path):
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def timed(bench, code):
        return subprocess.run(["amflow", "timed", "--benchmark", str(bench), "--", sys.executable, "-c", code],
                              capture_output=True, text=True, env=env)

    bench = tmp_path / "b" / "job.tsv"
    ok = timed(bench, "import time; time.sleep(0.3)")
    assert ok.returncode == 0, ok.stderr
    row = timing.read_benchmark(bench)
    assert 0.3 <= row["s"] < 60 and row["cpu_time"] >= 0 and row["max_rss"] > 0
    # its own closing line names it (not the wrapped command's words)
    assert re.search(r"^amflow timed: \d+\.\d\d CPU s$", ok.stderr, re.M), ok.stderr
    assert bench.read_text().splitlines()[0].split("\t") == [
        "s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time"]
    failed = tmp_path / "failed.tsv"
    assert timed(failed, "raise SystemExit(3)").returncode == 3 and not failed.exists()


def test_dvc_stages_write_the_benchmark_files_snakemake_expects():
    import yaml

    from amflow.stages.dvc_yaml import expand_pipeline

    stages = expand_pipeline(yaml.safe_load((ROOT / "dvc.yaml").read_text()))   # DVC's names (test_workflow.py)
    train = stages["train-amflow@synth_moving-amflow-0"]
    assert train["cmd"].startswith("amflow timed --benchmark benchmarks/default/train/synth_moving/amflow/seed0.tsv -- "
                                   "amflow train ")
    assert "benchmarks/default/train/synth_moving/amflow/seed0.tsv" in train["outs"]


def test_readme_results_command_rewrites_only_the_generated_sections(tmp_path, run_log):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_report import build

    results = tmp_path / "results"
    build(results / "default")
    shipped = (ROOT / "README.md").read_text()
    readme_copy = tmp_path / "README.md"
    readme_copy.write_text(shipped)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def readme_results(*extra):
        out = subprocess.run(["amflow", "readme-results", "--params", str(ROOT / "params/default.yaml"),
                              "--results-dir", str(results), "--readme", str(readme_copy), "--log", str(run_log),
                              *extra], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return readme_copy.read_text()

    def section(text, begin, end):
        return text.split(begin)[1].split(end)[0]

    text = readme_results()
    assert text.startswith(shipped.split(readme.BEGIN)[0]) and text.endswith(shipped.split(readme.TIMING_END)[1])
    assert section(text, readme.END, readme.TIMING_BEGIN) == section(shipped, readme.END, readme.TIMING_BEGIN)
    assert "Figures are means over 2 seeds" in section(text, readme.BEGIN, readme.END)
    assert "Wall time: 30 s (0.5 min), 4 jobs." in section(text, readme.TIMING_BEGIN, readme.TIMING_END)
    # --timing-only: a run of table 1 alone (no ablations.csv) retimed; the results section stays as it was
    readme_copy.write_text(shipped)
    (results / "default" / "ablations.csv").unlink(missing_ok=True)
    # as the README types it: make readme-results TIMING_ONLY=1 LOG=... (-o: never reinstall from here)
    venv = Path(sys.prefix)
    # (under `make test` the outer make's MAKELEVEL makes this one print its directory: --no-print-directory)
    make = subprocess.run(["make", "--no-print-directory", "-n", "-o", str(venv / ".installed"), "readme-results",
                           f"VENV={venv}", "TIMING_ONLY=1", f"LOG={run_log}"], cwd=ROOT, capture_output=True, text=True)
    command = [line for line in make.stdout.splitlines() if " readme-results " in line]
    assert make.returncode == 0 and len(command) == 1, make.stdout
    assert command[0].endswith(f"--log {run_log} --timing-only"), make.stdout
    text = readme_results("--timing-only")
    assert section(text, readme.BEGIN, readme.END) == section(shipped, readme.BEGIN, readme.END)
    assert "Wall time: 30 s (0.5 min), 4 jobs." in section(text, readme.TIMING_BEGIN, readme.TIMING_END)


def test_readme_results_times_each_repeat_and_reads_each_runs_own_benchmarks(tmp_path):
    """`make readme-results LOG="first second"`: both wall times, and the last run by stage with the CPU
    seconds of its own benchmark files (found beside its log, not in the current folder)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_report import build

    params, _ = build(tmp_path / "results" / "default")
    logs = []
    for name, end, cpu in (("first", "10:00:30", "19.5"), ("second", "10:00:40", "7.25")):
        work = tmp_path / name
        (work / "bench").mkdir(parents=True)
        (work / "bench/a.tsv").write_text(f"s\th:m:s\tmax_rss\tcpu_time\n9.87\t0:00:09\t123.4\t{cpu}\n")
        log = work / ".snakemake/log/2026-01-05T100000.000000.snakemake.log"
        log.parent.mkdir(parents=True)
        log.write_text(LOG.replace("[Mon Jan  5 10:00:30 2026]", f"[Mon Jan  5 {end} 2026]"))
        logs.append(log)
    text = readme.timing_markdown(logs)
    assert "each of the 2 runs timed, on the machine that ran them: 30 s (0.5 min), 4 jobs; 40 s (0.7 min), 4 jobs." in text
    assert "Wall time: 40 s (0.7 min), 4 jobs." in text and "Wall time: 30 s" not in text
    assert re.search(r"\| a\s+\| 1\s+\| 9\.9\s+\| 9\.9\s+\| 7\.2\s+\|", text), text
    # the command as `make readme-results LOG="first second"` types it
    target = tmp_path / "README.md"
    target.write_text(f"{readme.BEGIN}\n{readme.END}\n{readme.TIMING_BEGIN}\n{readme.TIMING_END}\n")
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["amflow", "readme-results", "--params", str(ROOT / "params/default.yaml"), "--results-dir",
                          str(tmp_path / "results"), "--readme", str(target), "--log", *map(str, logs)],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "30 s (0.5 min), 4 jobs; 40 s (0.7 min), 4 jobs." in target.read_text()


def test_a_training_that_evaluates_counts_both_and_the_copying_evaluation_none(tmp_path):
    """`amflow train --evaluate`: the training job (10 s wall, 10 CPU s) records its epochs (5 s) in train.json
    and its forward passes (2 s) in evaluated_in_training/metrics.json; the evaluation job (1 s, 1 CPU s) only
    copies that metrics.json, which names where it came from: none of it is learning. Overhead: 4 of 11."""
    import json

    from amflow.evaluate.reuse import REUSED_FROM

    log = tmp_path / ".snakemake/log/2026-01-05T100000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text("""\
[Mon Jan  5 10:00:00 2026]
rule train:
    output: r/train.json, r/checkpoint.pt, r/evaluated_in_training/metrics.json
    jobid: 1
    benchmark: bench/train.tsv

[Mon Jan  5 10:00:10 2026]
Finished jobid: 1 (Rule: train)

[Mon Jan  5 10:00:10 2026]
rule evaluate:
    input: r/train.json, r/evaluated_in_training/metrics.json
    output: r/metrics.json
    jobid: 2
    benchmark: bench/evaluate.tsv

[Mon Jan  5 10:00:11 2026]
Finished jobid: 2 (Rule: evaluate)
""")
    (tmp_path / "bench").mkdir()
    for rule, wall, cpu in (("train", 10, 10), ("evaluate", 1, 1)):
        (tmp_path / f"bench/{rule}.tsv").write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{wall}\t0:00:{wall:02d}\t100\t{cpu}\n")
    (tmp_path / "r/evaluated_in_training").mkdir(parents=True)
    made = {"train_time_s": 5.0, "eval_time_s": 2.0}
    (tmp_path / "r/train.json").write_text(json.dumps({"train_time_s": 5.0}))
    (tmp_path / "r/evaluated_in_training/metrics.json").write_text(json.dumps(made))
    (tmp_path / "r/metrics.json").write_text(json.dumps({**made, REUSED_FROM: "evaluated_in_training"}))
    s = timing.summary(log, tmp_path)
    assert s["stages"].set_index("rule")["learning_cpu_s"].to_dict() == pytest.approx({"train": 7.0, "evaluate": 0.0})
    assert s["overhead_cpu_s"] == pytest.approx(4.0)




def hand_made_run(root: Path, log_text: str, benchmarks: dict, files: dict) -> Path:
    """A run folder: the Snakemake log, benchmark files ``{path: (wall s, CPU s)}`` and other files
    ``{path: text, or a dict written as JSON}``; returns the log's path."""
    import json

    log = root / ".snakemake/log/2026-01-05T100000.000000.snakemake.log"
    for path, content in {log: log_text, **{root / k: v for k, v in files.items()},
                          **{root / k: f"s\th:m:s\tmax_rss\tcpu_time\n{w}\t0:00:00\t100\t{c}\n"
                             for k, (w, c) in benchmarks.items()}}.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return log


TRAIN_JOB = """\
[Mon Jan  5 10:00:00 2026]
rule train:
    output: r/train.json
    log: logs/train.log
    jobid: 1
    benchmark: bench/train.tsv

[Mon Jan  5 10:01:40 2026]
Finished jobid: 1 (Rule: train)
"""


def test_recorded_cpu_seconds_of_learning_count_as_they_are(tmp_path):
    """A training that records its epochs' CPU seconds: 12 of the job's 20 CPU s, although its epochs took
    only 5 of its 10 wall seconds (the epochs used two threads, the start-up one); its evaluation records
    3 CPU s of forward passes in 2 s. Overhead: 20 + 4 - 12 - 3 = 9 CPU s; by the mean rate it would be 12."""
    log = hand_made_run(tmp_path, TRAIN_JOB + """
[Mon Jan  5 10:01:40 2026]
rule evaluate:
    input: r/train.json
    output: r/metrics.json
    jobid: 2
    benchmark: bench/evaluate.tsv

[Mon Jan  5 10:01:44 2026]
Finished jobid: 2 (Rule: evaluate)
""", {"bench/train.tsv": (10, 20), "bench/evaluate.tsv": (4, 4)},
        {"r/train.json": {"train_time_s": 5.0, "train_cpu_s": 12.0},
         "r/metrics.json": {"train_time_s": 5.0, "train_cpu_s": 12.0, "eval_time_s": 2.0, "eval_cpu_s": 3.0}})
    s = timing.summary(log, tmp_path)
    assert s["stages"].set_index("rule")["learning_cpu_s"].to_dict() == pytest.approx({"train": 12.0, "evaluate": 3.0})
    assert s["overhead_cpu_s"] == pytest.approx(9.0)


def test_a_benchmark_file_with_less_cpu_than_the_jobs_learning_makes_the_overhead_a_lower_bound(tmp_path):
    """Snakemake samples CPU time: a 100 s training whose benchmark file holds 50 CPU s while its epochs
    recorded 60 (and whose log has no closing CPU line) counts no overhead, and the summary says that its
    figure is a lower bound."""
    log = hand_made_run(tmp_path, TRAIN_JOB, {"bench/train.tsv": (100, 50)},
                        {"r/train.json": {"train_time_s": 90.0, "train_cpu_s": 60.0}, "logs/train.log": "killed\n"})
    s = timing.summary(log, tmp_path)
    assert s["undercounted_jobs"] == 1 and s["overhead_cpu_s"] == 0
    assert "Overhead: 0 of 50 CPU s (0%); a lower bound: 1 of 1 jobs recorded more CPU seconds" in timing.markdown(s)


def test_the_cpu_seconds_a_job_logged_replace_its_sampled_benchmark(tmp_path):
    """A training's benchmark file holds 50 CPU s (sampled), its log the command's own 80 (the closing line
    of amflow train); its epochs recorded 60: the job used 80 CPU s, of which 20 were overhead. A job
    without such a line (a copy) keeps its benchmark's figure."""
    log = hand_made_run(tmp_path, TRAIN_JOB + """
[Mon Jan  5 10:01:40 2026]
localrule copy:
    input: r/train.json
    output: r/copy.json
    log: logs/copy.log
    jobid: 2
    benchmark: bench/copy.tsv

[Mon Jan  5 10:01:41 2026]
Finished jobid: 2 (Rule: copy)
""", {"bench/train.tsv": (100, 50), "bench/copy.tsv": (1, 0.5)},
        {"logs/train.log": "epoch 1/1: loss 0.1\namflow train: 80.00 CPU s\n", "logs/copy.log": "copied\n",
         "r/train.json": {"train_time_s": 90.0, "train_cpu_s": 60.0}, "r/copy.json": {}})
    s = timing.summary(log, tmp_path)
    assert s["stages"].set_index("rule")["cpu_s_sum"].to_dict() == pytest.approx({"train": 80.0, "copy": 0.5})
    assert s["overhead_cpu_s"] == pytest.approx(20.5) and s["undercounted_jobs"] == 0

def test_the_whole_runs_cpu_seconds_give_its_overhead_beside_the_jobs(tmp_path):
    """A run whose Snakemake process used 6 CPU s and whose children (the job's shell and command, and
    what the command did after its closing line) used 94: 100 CPU s in all, of which the epochs' 60 are
    learning, so 40% overhead, where the command's own 80 CPU s give 25%. A record holding less than the
    jobs' commands (a cluster, whose jobs ran elsewhere) is left out."""
    job = {"logs/train.log": "amflow train: 80.00 CPU s\n", "r/train.json": {"train_time_s": 90.0, "train_cpu_s": 60.0}}
    log = hand_made_run(tmp_path, TRAIN_JOB, {"bench/train.tsv": (100, 50)}, job)
    Path(f"{log}.cpu.json").write_text('{"snakemake_cpu_s": 6.0, "children_cpu_s": 94.0}')
    s = timing.summary(log, tmp_path)
    assert (s["cpu_s"], s["overhead_cpu_s"], s["run_cpu_s"], s["run_overhead_cpu_s"]) == pytest.approx((80, 20, 100, 40))
    assert ("Overhead: 20 of 80 CPU s (25%) in the jobs' commands; 40 of 100 CPU s (40%) in the whole run"
            in timing.markdown(s))
    Path(f"{log}.cpu.json").write_text('{"snakemake_cpu_s": 6.0, "children_cpu_s": 4.0}')
    s = timing.summary(log, tmp_path)
    assert s["run_cpu_s"] is None and "whole run" not in timing.markdown(s)


def test_the_times_to_the_first_seeds_table_and_the_full_table_are_stated(tmp_path):
    log = tmp_path / ".snakemake/log/2026-01-05T100000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text("""\
Building DAG of jobs...
  Date: 2026-01-05 10:00:00

[Mon Jan  5 10:01:00 2026]
rule table1_first_seed:
    output: r/table1_first_seed.csv
    jobid: 1

[Mon Jan  5 10:03:00 2026]
Finished jobid: 1 (Rule: table1_first_seed)

[Mon Jan  5 10:09:00 2026]
rule table1:
    output: r/table1.csv
    jobid: 2

[Mon Jan  5 10:09:30 2026]
Finished jobid: 2 (Rule: table1)
""")
    s = timing.summary(log, tmp_path)
    assert s["answers"] == {"table1_first_seed": 180.0, "table1": 570.0}
    assert "Answers: table 1 of the first seed after 3.0 min; the full table 1 after 9.5 min." in timing.markdown(s)
