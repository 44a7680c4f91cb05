"""The DAG definitions: dvc.yaml is generated from the Snakemake workflow, and the CLI explains itself."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from amflow.cli import build_parser
from amflow.params_io import load_params
from project_copy import BIN, TINY, job_counts, make_project_copy, nothing_to_do, project_env, run, snakemake

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_yaml_matches_snakemake_workflow(monkeypatch):
    from amflow.stages.dvc_yaml import build_dvc_yaml

    monkeypatch.chdir(ROOT)
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == build_dvc_yaml(), "dvc.yaml is stale: run `amflow dvc-yaml` and commit it"


def test_dvc_yaml_stages_cover_the_pipeline(monkeypatch):
    from amflow.stages.dvc_yaml import expand_pipeline, stage_outputs

    monkeypatch.chdir(ROOT)
    stages = expand_pipeline(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    rules = {name.split("@")[0].split("-")[0] for name in stages}
    assert {"prepare_dataset", "extract_frames", "camera_motion", "pretrain_backbone", "train", "evaluate",
            "table1", "ablations", "report"} <= rules
    # Every dep is either produced by another stage or a source file of the package: the DAG is closed.
    produced = {path for st in stages.values() for path in stage_outputs(st)}
    for name, st in stages.items():
        for dep in st["deps"]:
            assert dep in produced or (dep.startswith("amflow/") and (ROOT / dep).is_file()), \
                f"{name}: dep {dep} is produced by no stage"
    # DVC refuses a params key that its file does not state ("Parameters ... are missing from ...").
    for name, st in stages.items():
        for entry in st.get("params", []):
            for file, keys in entry.items():
                doc = yaml.safe_load((ROOT / file).read_text())
                for key in keys:
                    node = doc
                    for part in key.split("."):
                        assert isinstance(node, dict) and part in node, f"{name}: {file} does not state {key}"
                        node = node[part]
    # Metrics: the evaluations' numeric scores only.
    metrics = [m for st in stages.values() for m in st.get("metrics", [])]
    assert metrics and all(Path(m).name == "scores.json" for m in metrics), metrics


def test_each_stage_depends_on_the_code_its_command_imports_in_both_tools(monkeypatch):
    """The same source files are a Snakemake job's input (one stamp of them, which lists each with its
    sha256) and its DVC stage's deps; a training imports no report module, the report no training module."""
    import hashlib

    from amflow.stages.dvc_yaml import amflow_command, build_dvc_yaml, expand_pipeline, pipeline_jobs
    from amflow.import_graph import command_files

    monkeypatch.chdir(ROOT)
    jobs = pipeline_jobs("params/tiny.yaml")
    stages = expand_pipeline(yaml.safe_load(build_dvc_yaml("params/tiny.yaml", jobs=jobs).split("\n", 3)[3]))
    assert len(stages) == len(jobs)
    by_benchmark = {o: st for st in stages.values() for o in st.get("outs", []) if o.startswith("benchmarks/")}
    for job in jobs:
        command = amflow_command(job)
        assert not any(str(f).startswith("amflow/") for f in job.input), job.rule.name
        stamp = job.input.get("code")
        listed = [line.split("  ", 1) for line in Path(stamp).read_text().splitlines()] if stamp else []
        code = [f for _, f in listed]
        assert code == (command_files(ROOT, command) if command else []), job.rule.name
        assert all(digest == hashlib.sha256((ROOT / f).read_bytes()).hexdigest() for digest, f in listed)
        stage = by_benchmark[str(job.benchmark)]
        assert sorted(d for d in stage["deps"] if d.startswith("amflow/")) == code, job.rule.name
        if job.rule.name in ("train", "train_ablation"):
            assert not any(f.startswith("amflow/report/") for f in code)
        if job.rule.name == "report":
            assert "amflow/report/report.py" in code and not any(f.startswith("amflow/train/") for f in code)


def test_dvc_yaml_is_one_family_per_rule_and_dvc_reads_one_stage_per_job(monkeypatch, tmp_path):
    """The shipped dvc.yaml, as DVC reads it in a fresh clone: a matrix or foreach per rule (a few for the
    rules whose stages differ in shape), expanding to exactly Snakemake's jobs; `dvc dag
    --collapse-foreach-matrix` draws one node per family, in a terminal's width."""
    from amflow.stages.dvc_yaml import expand_pipeline, job_name, pipeline_jobs

    monkeypatch.chdir(ROOT)
    text = (ROOT / "dvc.yaml").read_text()
    doc = yaml.safe_load(text)
    jobs = pipeline_jobs("params/default.yaml")
    rules = {job.rule.name for job in jobs}
    assert len(doc["stages"]) <= len(rules) + 3, sorted(doc["stages"])
    # Its size is mostly each family's code deps (one line per imported module): about 100 KB for 200+ jobs,
    # where one stage per job would be megabytes.
    assert len(text) < 125_000 and len(jobs) > 200
    project = make_project_copy(tmp_path / "clone")
    dvc = [str(Path(sys.executable).parent / "dvc")]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    listed = subprocess.run(dvc + ["stage", "list", "--name-only"], cwd=project, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.split()
    assert sorted(names) == sorted(expand_pipeline(doc)) and len(names) == len(jobs)
    by_job = {job_name(job) for job in jobs}
    assert len(by_job) == len(names)
    # The drawing's layout follows Python's string hashing (widths 256 to 316 over seeds 0-5): one fixed seed
    # makes the width a property of dvc.yaml, not of the process.
    dag = subprocess.run(dvc + ["dag", "--collapse-foreach-matrix"], cwd=project, capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    assert dag.returncode == 0, dag.stderr
    assert max(map(len, dag.stdout.splitlines())) <= 300, "dvc dag is wider than a wide terminal"
    for family in doc["stages"]:
        assert f"| {family} |" in dag.stdout, family


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the shipped project: Snakemake writes its state (.snakemake/) there, not in the checkout."""
    return make_project_copy(tmp_path_factory.mktemp("workflow") / "project")


def shell_params_file(out, project: Path, rule: str) -> dict:
    """The params file a planned job of ``rule`` reads (``--params FILE`` in its shell command)."""
    text = out.stdout + out.stderr
    block = text[text.index(f"rule {rule}:"):]
    path = re.search(r"--params (\S+)", block).group(1)
    return yaml.safe_load((project / path).read_text())


def test_bare_dry_run_plans_table1_of_the_default(project):
    out = snakemake(project, "-n", "-p")  # `rule all`: table 1 of params/default.yaml; no target, no --cores
    counts = job_counts(out)
    p = load_params(ROOT / "params" / "default.yaml")
    n = len(p.table_datasets) * len(p.methods) * len(p.seeds)
    assert counts["all"] == 1 and counts["table1"] == 1 and counts["train"] == n and counts["evaluate"] == n
    assert "results/default/table1.csv" in out.stdout
    assert shell_params_file(out, project, "train") == p.model_dump(mode="json")


@pytest.mark.parametrize("flag", ["--dag", "--rulegraph"])
def test_dag_and_rulegraph_need_no_cores(project, flag):
    out = snakemake(project, flag)
    assert out.stdout.lstrip().startswith("digraph"), out.stdout[:500] + out.stderr[-2000:]
    for rule in ("prepare_dataset", "extract_frames", "train", "evaluate", "table1", "all"):
        assert rule in out.stdout, rule


def test_config_override_reaches_the_jobs(project):
    out = snakemake(project, "-n", "-p", "--config", "train={epochs: 1, lr: 0.01}", "seeds=[0, 1]")
    used = shell_params_file(out, project, "train")
    assert used["train"]["epochs"] == 1 and used["train"]["lr"] == 0.01 and used["seeds"] == [0, 1]
    assert used["train"]["batch_size"] == 16  # the rest of the default stays
    assert job_counts(out)["train"] == 20


def test_configfile_complete_or_extending(project):
    # A complete params file replaces the default (no synth dataset left), in its own namespace.
    out = snakemake(project, "-n", "--configfile", "params/k400.yaml")
    assert "results/k400/table1.csv" in out.stdout and "synth_" not in out.stdout
    assert job_counts(out)["prepare_dataset"] == 1
    # A file that extends the default, with a --config override on top, in either order.
    for args in (("--configfile", "params/default_1seed.yaml", "--config", "train={epochs: 1}"),
                 ("--config", "train={epochs: 1}", "--configfile", "params/default_1seed.yaml")):
        out = snakemake(project, "-n", "-p", *args)
        used = shell_params_file(out, project, "train")
        assert used["name"] == "default_1seed" and used["seeds"] == [0] and used["train"]["epochs"] == 1
        assert "results/default_1seed/table1.csv" in out.stdout


def test_bad_config_is_one_clear_line(project):
    out = snakemake(project, "-n", "--config", "train={epochz: 1}", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "train.epochz: unknown key" in text and "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("text, expected", [
    ("extends: default.yaml\ntrain: {epochz: 1}\n", "invalid params (1 problem(s)):\n  - train.epochz: unknown key"),
    ("extends: gone.yaml\nname: x\n", "'extends: gone.yaml' names params/gone.yaml, which does not exist")])
def test_a_bad_configfile_is_named_in_its_error(project, text, expected):
    (project / "mine.yaml").write_text(text)
    out = snakemake(project, "-n", "--configfile", "mine.yaml", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and f"error: mine.yaml (--configfile): {expected}" in text, text[-3000:]
    assert "Traceback" not in text


def test_snakemake_dry_run_plans_the_localisation():
    """The README's localisation target: ground truth from the plans, then `amflow localise`."""
    target = "results/default/synth_moving/localisation/localisation.csv"
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "-F", "--cores", "2", "-d", str(ROOT),
                          "-s", str(ROOT / "Snakefile"), target], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert target in (ROOT / "README.md").read_text()
    stats = {line.split()[0] for line in text.split("Job stats")[-1].splitlines() if line.strip()}
    assert {"prepare_dataset", "extract_frames", "camera_motion", "pretrain_backbone", "ground_truth",
            "localise"} <= stats, stats
    assert re.search(r"amflow localise --params \S+ --dataset synth_moving", text)


LIST_PARAMS = """extends: tiny.yaml
name: mine
datasets:
  mine: {source: list, root: data/raw/mine, annotations: {train: train.txt, test: test.csv}}
table_datasets: [mine]
"""


@pytest.mark.slow
def test_editing_a_list_reruns_its_dataset_and_what_depends_on_it_and_nothing_else(tmp_path, monkeypatch):
    import numpy as np

    from video_files import write_mp4

    project = make_project_copy(tmp_path / "project")
    raw = project / "data/raw/mine"
    (raw / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        write_mp4(raw / "clips" / f"v{i}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    (raw / "train.txt").write_text("".join(f"clips/v{i}.mp4 {i % 2}\n" for i in range(7)))
    (raw / "test.csv").write_text("path,label\n" + "".join(f"clips/v{i}.mp4,{i % 2}\n" for i in range(7, 10)))
    (project / "params/mine.yaml").write_text(LIST_PARAMS)
    targets = [f"results/mine/{d}/camera_motion.json" for d in ("mine", "synth_static")]
    cmd = ("--cores", "2", *targets, "--configfile", "params/mine.yaml")
    snakemake(project, *cmd)
    assert nothing_to_do(snakemake(project, "-n", *cmd))

    from amflow import paths

    from amflow.identity import training

    monkeypatch.chdir(project)  # the list's root is relative to the project, as Snakemake reads it
    params = load_params("params/mine.yaml")
    old_key, old_digest = paths.dataset_key(params, "mine"), training(params, "mine", "tpa", 0).digest
    listed = (raw / "test.csv").read_text()
    (raw / "test.csv").write_text("".join(listed.splitlines(True)[:-1]))  # one test video fewer
    new_key = paths.dataset_key(params, "mine")
    assert training(params, "mine", "tpa", 0).digest != old_digest  # a run trained on the old list is not resumed
    out = snakemake(project, "-n", *cmd)
    assert not nothing_to_do(out), "the edited list reran nothing"
    counts = job_counts(out)
    assert {k: v for k, v in counts.items() if k != "total"} == {"prepare_dataset": 1, "extract_frames": 1,
                                                                 "camera_motion": 1}, counts
    assert new_key != old_key and f"data/{new_key}/dataset.json" in out.stdout + out.stderr
    assert (project / "data" / old_key / "dataset.json").exists()  # the earlier dataset stays as it was
    (raw / "test.csv").write_text(listed)  # the same contents again, at a new time: nothing to redo
    assert nothing_to_do(snakemake(project, "-n", *cmd))


SUBCOMMANDS = ["validate", "prepare", "pretrain-images", "extract", "camera-motion", "ground-truth", "localise",
               "pretrain-backbone", "train", "evaluate", "predict", "tables", "heatmaps", "report", "readme-results", "sweep",
               "dvc-yaml", "timed"]


def test_the_top_level_help_lists_the_subcommands_in_stage_order(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    section = capsys.readouterr().out.split("positional arguments:")[1].split("options:")[0]
    assert re.findall(r"^    (\S+)", section, re.MULTILINE) == SUBCOMMANDS


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert len(text) > 200 and "usage: amflow" in text


def test_bad_params_file_exits_with_clear_error(tmp_path, capsys):
    from amflow.cli import main

    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\ndatasets: {}\ntable_datasets: []\ntrain: {epochs: 0}\n")
    assert main(["validate", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "train.epochs" in err


def _dry_run_jobs(*args):
    import re

    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-F", "-d", str(ROOT), "-s", str(ROOT / "Snakefile"),
                          *args], cwd=ROOT, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"})
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out.stdout + out.stderr):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        res = re.search(r"^\s+resources: (.+)$", block, flags=re.M)
        if m:
            jobs.append((m.group(1), dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}))
    return jobs


def test_gpu_jobs_declare_their_gpu_so_a_local_gpu_run_gives_each_its_own():
    """`snakemake --profile workflow/profiles/local_gpu --configfile params/k400.yaml` (README): every
    training and evaluation declares one GPU and the profile states one, so they run one at a time
    instead of all together on cuda:0; a params file that trains on the CPU declares none."""
    jobs = _dry_run_jobs("--profile", "workflow/profiles/local_gpu", "--configfile", "params/k400.yaml")
    gpu_rules = [(rule, res) for rule, res in jobs if rule in ("train", "evaluate")]
    assert len(gpu_rules) == 10  # 5 methods x (train, evaluate) on k400
    assert all(res.get("gpu") == "1" for _, res in gpu_rules), gpu_rules
    assert all(res.get("gpu", "0") == "0" for rule, res in jobs if rule not in ("train", "evaluate")), jobs
    pretrain = _dry_run_jobs("--profile", "workflow/profiles/local_gpu", "results/synth_full/backbone/metrics.json",
                             "--configfile", "params/synth_full.yaml")
    assert [res.get("gpu") for rule, res in pretrain if rule == "pretrain_backbone"] == ["1"]
    cpu_jobs = _dry_run_jobs("--cores", "2", "--configfile", "params/tiny.yaml")
    assert all(res.get("gpu", "0") == "0" for _, res in cpu_jobs), cpu_jobs


def test_the_readmes_fair_test_command_plans_the_subset_it_describes(project):
    # The command as the README gives it, as a dry run (-n) on the shipped default.
    line = next(l for l in (ROOT / "README.md").read_text().splitlines()
                if l.startswith("snakemake --cores 8 report --config 'ablations="))
    args = line.split(" ", 3)[3]  # after "snakemake --cores 8 "
    target, _, config = args.partition(" --config ")
    out = snakemake(project, "-n", target, "--config", config.strip("'"))
    counts = job_counts(out)
    # synth_moving x 3 seeds: variants 2, TPUs 2 with and without AM flow, source 1, warp 1,
    # integrations 3, controls 2 -> 13 settings x 3 seeds = 39 runs.
    assert counts["train_ablation"] == 39 and counts["evaluate_ablation"] == 39
    assert counts["localise"] == 2 and counts["report"] == 1
    assert "ablations/tpu_tpa/lstm/synth_moving/seed2" in out.stdout
    assert "ablations/control/oracle/synth_moving/seed0" in out.stdout


@pytest.mark.slow
def test_a_second_pipeline_writing_the_same_outputs_is_refused_naming_the_first(tmp_path):
    """default_1seed shares the default's datasets (equal specs, same data folders): its pipeline beside
    the default's would give DVC two stages per output, so `amflow dvc-yaml` refuses in one line, and
    the default's pipeline is untouched. The tiny params (other specs) get their own file."""
    from project_copy import BIN, run

    project = make_project_copy(tmp_path / "project")
    before = (project / "dvc.yaml").read_text()
    out = run([BIN / "amflow", "dvc-yaml", "--params", "params/default_1seed.yaml"], project, check=False)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: dvc.yaml already has a stage writing data/") and "remove that file" in line, line
    assert not (project / "pipelines/default_1seed/dvc.yaml").exists()
    run([BIN / "amflow", "dvc-yaml", "--params", "params/tiny.yaml"], project)
    assert (project / "pipelines/tiny/dvc.yaml").is_file() and (project / "dvc.yaml").read_text() == before


def test_the_clutter_benchmarks_first_command_plans_data_backbone_camera_and_tpa(project):
    """docs/method.md's command that makes what the clutter controls train on, as typed (a dry run)."""
    text = (ROOT / "docs" / "method.md").read_text()
    start = text.index("snakemake --cores 8 results/clutter/clutter_static/tpa/seed0/train.json")
    line = text[start:text.index("\n", text.index("\\\n", start) + 2)].replace("\\\n", " ")
    args = line.split()[1:]
    assert args[-2:] == ["--configfile", "params/clutter.yaml"]
    out = snakemake(project, "-n", *args)
    assert {k: v for k, v in job_counts(out).items() if k != "total"} == {
        "prepare_dataset": 2, "pretrain_images": 1, "extract_frames": 2, "pretrain_backbone": 1,
        "camera_motion": 1, "train": 1}


def _most_jobs_at_once(log: str) -> int:
    """The most jobs a Snakemake run's output shows running together: job starts (``rule X:``) and ends
    (``Finished jobid``) in the order Snakemake printed them."""
    running = most = 0
    for line in log.splitlines():
        if re.match(r"^(local)?rule \w+:$", line):
            running += 1
            most = max(most, running)
        elif line.startswith("Finished jobid"):
            running -= 1
    return most


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (taskset)")
def test_more_cores_than_the_machine_has_start_no_more_jobs_than_its_cores(tmp_path):
    """`--cores 8` on a 1-core machine (taskset) runs the two datasets' preparations one after the other;
    `--resources cpu_slots=2` asks for two at once, and gets them."""
    args = ("--cores", "8", "--until", "prepare_dataset", *TINY)
    one_core = make_project_copy(tmp_path / "one_core")
    out = run(["taskset", "-c", "0", BIN / "snakemake", *args], one_core,
              env=project_env(one_core, AMFLOW_TRACKING="0"))
    assert out.stdout.count("rule prepare_dataset:") + out.stderr.count("rule prepare_dataset:") == 2
    assert _most_jobs_at_once(out.stdout + out.stderr) == 1
    asked = make_project_copy(tmp_path / "asked")
    out = run(["taskset", "-c", "0", BIN / "snakemake", *args, "--resources", "cpu_slots=2"], asked,
              env=project_env(asked, AMFLOW_TRACKING="0"))
    assert _most_jobs_at_once(out.stdout + out.stderr) == 2


def _provided(log: str, resource: str) -> int:
    """A resource's limit in a Snakemake run's output (``Provided resources: cpu_slots=Resource(...)``)."""
    line = next(line for line in log.splitlines() if line.startswith("Provided resources:"))
    return int(re.search(rf"{resource}=Resource\(\"{resource}\", (\d+)\)", line).group(1))


@pytest.mark.skipif(not Path("/proc/meminfo").is_file() or not hasattr(os, "sched_setaffinity"),
                    reason="reads the machine's memory from /proc/meminfo; one core each job (taskset)")
def test_the_jobs_memory_together_stays_within_the_machines(tmp_path):
    """Every job declares its memory (mem_mb), and a local run's limit is the machine's memory (/proc/meminfo,
    in Snakemake's megabytes of 10**6 bytes) unless `--resources mem_mb=N` sets another: with two one-core
    jobs asked for (taskset) but memory for one preparation and a half, the two run one after the other."""
    args = ("--cores", "8", "--until", "prepare_dataset", *TINY)
    machine = make_project_copy(tmp_path / "machine")
    out = run(["taskset", "-c", "0", BIN / "snakemake", *args, "--resources", "cpu_slots=2"], machine,
              env=project_env(machine, AMFLOW_TRACKING="0"))
    log = out.stdout + out.stderr
    kib = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1))
    assert _provided(log, "mem_mb") == kib * 1024 // 10**6
    declared = [int(m) for m in re.findall(r"^\s+resources: .*\bmem_mb=(\d+)", log, re.M)]
    assert len(declared) == 2 and _most_jobs_at_once(log) == 2
    limited = make_project_copy(tmp_path / "limited")
    out = run(["taskset", "-c", "0", BIN / "snakemake", *args, "--resources", "cpu_slots=2", f"mem_mb={max(declared) * 3 // 2}"], limited,
              env=project_env(limited, AMFLOW_TRACKING="0"))
    assert _most_jobs_at_once(out.stdout + out.stderr) == 1


@pytest.fixture(scope="module")
def readme_plan(project) -> str:
    """The dry run of the README's main command, `snakemake --cores 8 results/table1.csv`, in the project."""
    out = snakemake(project, "-n", "--cores", "8", "results/table1.csv")
    return out.stdout + out.stderr


def planned(plan: str, rules: str) -> list[str]:
    """The job blocks of a dry run whose rule matches ``rules`` (a regex alternation)."""
    return [b for b in re.split(r"\n(?=\[)", plan) if re.search(rf"^(?:local)?rule ({rules}):", b, re.M)]


def priority(block: str) -> int:
    """A planned job's priority (Snakemake prints none for 0)."""
    found = re.search(r"^\s+priority: (\d+)", block, re.M)
    return int(found.group(1)) if found else 0


def test_every_job_the_trainings_wait_for_goes_before_every_training(readme_plan):
    """The data, backbone and camera jobs hold all cores, and a job holding all cores starts only when all
    are free: below a training's priority it would wait behind the trainings (with their priority, until
    two happen to end together). In the default's plan each of them has a higher priority than any
    training or evaluation."""
    gating = [priority(b) for b in planned(readme_plan, "prepare_dataset|pretrain_images|extract_frames|"
                                                       "pretrain_backbone|camera_motion")]
    runs = [priority(b) for b in planned(readme_plan, "train|evaluate")]
    assert len(gating) == 8 and runs and min(gating) > max(runs)


def test_a_plain_snakemake_command_reads_the_projects_default_profile(readme_plan):
    """`snakemake` as the README types it (no --profile) takes profiles/default beside the Snakefile as its
    default workflow profile (the greedy scheduler), which a --profile overrides."""
    assert "Using workflow specific profile profiles/default for setting default command line arguments." in readme_plan


def test_the_first_seeds_runs_and_table_go_before_the_other_seeds(readme_plan):
    """The main command plans table1_first_seed.csv, and gives the first seed's trainings and evaluations a
    higher priority than the other seeds' runs, so its one-seed table 1 is complete first."""
    assert len(planned(readme_plan, "table1_first_seed")) == 1
    runs = planned(readme_plan, "train|evaluate")
    p = load_params(ROOT / "params" / "default.yaml")
    assert len(runs) == 2 * len(p.table_datasets) * len(p.methods) * len(p.seeds)
    for block in runs:
        seed = int(re.search(r"seed=(\d+)", block).group(1))
        assert (priority(block) > 0) == (seed == p.seeds[0]), block[:300]
    assert priority(planned(readme_plan, "table1_first_seed")[0]) > 0
