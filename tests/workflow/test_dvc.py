"""DVC's view of the DAG: repro, experiments, metrics, plots, push/pull, reproducibility, code changes,
and the hand-over of a Snakemake run to DVC.

The shipped ``dvc.yaml`` (the repository's own, with ``.dvc/`` committed) is the pipeline of
``params/default.yaml``; a reduced run of it goes through ``dvc exp run -S`` (fewer epochs, one target
stage), as a user would cut it down (:func:`test_shipped_default_reproduces_with_user_overrides`).

Most checks use a params file that extends the shipped tiny one, written as a user would
(:data:`TRIM`: one dataset, two methods, one ablation run; DVC runs stages one after the other, so the
full tiny DAG would take as long as the rest of the suite together), with its own pipeline file
(``amflow dvc-yaml --params params/tiny_dvc.yaml`` writes :data:`PIPELINE`, beside the default's): the
DAG still has every stage kind (dataset, frames, camera motion, pretraining, training and evaluation,
ablation, tables, heat maps, report). The project sits in a temporary git repository with the
project's ``.dvc/`` and a local folder as the default remote. One ``dvc repro`` serves every check;
the tests run in file order and the experiment (which changes the workspace) comes last. Commands name
the pipeline file: the default's stages are in the same repository, not run.

After ``dvc pull``, Snakemake sees fresh modification times (DVC does not keep them) and would rerun
everything; the documented step is ``snakemake --touch --cores 1 <target> --configfile <file>``, which
marks the pulled outputs up to date without running a job (only after ``dvc status`` reports them
unchanged).

Reproducibility: the runs this DVC repro shares with the Snakemake end-to-end run (same dataset,
method, seed and params values, other namespace) must give identical ``metrics.json`` on CPU, but for
:data:`NOT_REPRODUCIBLE` (wall-clock measures, and the MLflow run id, which is random by design).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from amflow.stages.dvc_yaml import expand_pipeline
from project_copy import (BIN, TINY, TINY_RESULTS, copy_of, job_counts, make_project_copy, nothing_to_do,
                          project_env, run, shared_pipeline_run, snakemake)

pytestmark = pytest.mark.slow

# metrics.json fields that differ between two runs of the same config, and why.
NOT_REPRODUCIBLE = {
    "train_time_s": "wall-clock seconds of training",
    "eval_time_s": "wall-clock seconds of evaluation",
    "train_cpu_s": "CPU seconds of training, which vary with the machine's load",
    "eval_cpu_s": "CPU seconds of evaluation, which vary with the machine's load",
    "epoch_times": "wall-clock seconds of each epoch",
    "train_clips_per_s": "training throughput, clips per wall-clock second",
    "mlflow_run_id": "a random id MLflow gives each run",
    "evaluated_with": "names the checkpoint by its sha256, and a checkpoint holds its training's seconds",
}
# Written by a stage but not versioned by DVC: a pointer into the local MLflow store (mlflow.db is not
# versioned either), and training without tracking does not write it; the run folder's lock file; the
# training state an interrupted training resumes from (a finished run's model is its checkpoint.pt).
UNVERSIONED = ("mlflow_run.json", ".amflow.lock", "train_state.pt")
TRIM = "params/tiny_dvc.yaml"
TRIM_TEXT = """# The tiny configuration cut to one dataset, two methods and one ablation run.
extends: tiny.yaml
name: tiny_dvc
table_datasets: [synth_moving]
methods: [frame, amflow]
train: {epochs: 2}
ablations: {dataset_pairs: [synth_moving], variants: [none], tpus: [], source_layers: [], num_blocks: [],
            frames: [], alignments: [], integrations: [], controls: [], dataset: synth_moving, grid: null}
"""
RESULTS = "results/tiny_dvc"
PIPELINE = "pipelines/tiny_dvc/dvc.yaml"
POST_PULL = ("snakemake", "--touch", "--cores", "1", "report", "--configfile", TRIM)
RUNS = ("synth_moving/frame/seed0", "synth_moving/amflow/seed0", "ablations/variant/none/synth_moving/seed0")


def env(project: Path) -> dict:
    # No MLflow here: DVC is the subject, and every stage saves the ~3 s of opening the store.
    return project_env(project, AMFLOW_TRACKING="0")


def dvc(project: Path, *args: str, check: bool = True):
    return run([BIN / "dvc", *args], project, check=check, env=env(project))


def git(project: Path, *args: str):
    return run(["git", "-c", "user.name=amflow-test", "-c", "user.email=test@example.invalid", *args], project)


def tree_digest(project: Path, roots=("data", "results")) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in sorted((project / root).rglob("*")):
            if path.is_file() and path.name not in UNVERSIONED and path.name != ".gitignore":
                out[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def init_repo(project: Path) -> None:
    """A git repository of the project as cloned: the committed .dvc/ (no `dvc init` needed), a first commit."""
    assert (project / ".dvc" / "config").is_file(), "the project ships its .dvc/ folder"
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "project")


def stages_of(project: Path, pipeline: str = PIPELINE) -> dict[str, dict]:
    """The pipeline's stages by DVC's name, as DVC expands its matrix and foreach families."""
    return expand_pipeline(yaml.safe_load((project / pipeline).read_text()))


def stage_writing(project: Path, path: str) -> str:
    """The DVC name of the stage whose outs include ``path``."""
    [name] = [n for n, st in stages_of(project).items() if path in st.get("outs", []) + st.get("metrics", [])]
    return name


def changed_stages(status_text: str) -> set[str]:
    """The stages `dvc status` lists as changed (its lines "<pipeline>:<stage>:")."""
    return {line[:-1].split(":", 1)[1] for line in status_text.splitlines()
            if line.endswith(":") and not line.startswith(("\t", " "))}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The project in a git + DVC repository, after one `dvc repro` of the trimmed pipeline, with that
    state committed."""
    root = tmp_path_factory.mktemp("dvc")
    project = make_project_copy(root / "project")
    (project / TRIM).write_text(TRIM_TEXT)
    run([BIN / "amflow", "dvc-yaml", "--params", TRIM], project)
    assert (project / "dvc.yaml").read_text() == (Path(__file__).parents[2] / "dvc.yaml").read_text()  # untouched
    remote = root / "remote"
    init_repo(project)
    dvc(project, "remote", "modify", "local", "url", str(remote))  # the committed default remote, elsewhere
    git(project, "commit", "-q", "-am", "remote")
    repro = dvc(project, "repro", PIPELINE)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "dvc repro")
    return {"path": project, "remote": remote, "repro": repro.stdout + repro.stderr}


def test_repro_builds_every_stage_and_the_targets(repo):
    project = repo["path"]
    for name in stages_of(project):
        assert f"Running stage '{PIPELINE}:{name}'" in repo["repro"], f"stage {name} did not run"
    for target in ("table1.csv", "ablations.csv", "report.md", "ablation_variant.csv", "plots/amflow_heatmaps.gif"):
        assert (project / RESULTS / target).is_file(), target
    for run_dir in RUNS:  # training's side files are DVC outs too (evaluate and predict read them)
        for name in ("checkpoint.pt", "params.yaml", "train_log.csv", "metrics.json", "confusion.png"):
            assert (project / RESULTS / run_dir / name).is_file(), (run_dir, name)
    status = dvc(project, "status", PIPELINE)
    assert "up to date" in status.stdout, status.stdout
    assert (project / "pipelines/tiny_dvc/dvc.lock").is_file() and not (project / "dvc.lock").exists()
    assert (project / "amflow" / "__pycache__").is_dir(), "stages should have written byte code (see .dvcignore)"


def test_second_repro_runs_nothing(repo):
    out = dvc(repo["path"], "repro", PIPELINE)
    text = out.stdout + out.stderr
    assert "Running stage" not in text, text[-3000:]
    assert "Data and pipelines are up to date." in text, text[-3000:]


def test_metrics_show_and_diff(repo):
    project = repo["path"]
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    data = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    for run_dir in RUNS:
        m = data[f"{RESULTS}/{run_dir}/scores.json"]["data"]
        assert 0.0 <= m["top1"] <= 1.0 and m["epochs"] == 2, run_dir
    # Metrics are the evaluations' numbers only: no per-stage JSON with strings (camera decision, backbone).
    # (The default's pipeline shares the repository; its runs have not run here.)
    ours = {path: values for path, values in data.items() if path.startswith(RESULTS + "/")}
    assert set(ours) == {f"{RESULTS}/{run_dir}/scores.json" for run_dir in RUNS}, sorted(ours)
    assert all(path.startswith("results/default/") for path in set(data) - set(ours)), sorted(data)
    for path, shown_file in ours.items():
        values = shown_file["data"]
        assert values and all(isinstance(v, (int, float)) for v in values.values()), (path, values)
    table = dvc(project, "metrics", "show").stdout  # as a user reads it: one row per run
    rows = [line for line in table.splitlines() if "scores.json" in line and line.startswith(RESULTS)]
    assert len(rows) == len(RUNS) and all("top1" not in row for row in rows), table
    camera = json.loads((project / RESULTS / "synth_moving" / "camera_motion.json").read_text())
    assert camera["decision"] == "aligned"
    # nothing changed since the commit of the repro: no difference
    assert json.loads(dvc(project, "metrics", "diff", "--json").stdout or "{}") == {}


def test_plots_show_renders_the_training_curves(repo, tmp_path):
    project = repo["path"]
    spec = json.loads(dvc(project, "plots", "show", "--json").stdout)
    # Errors only for the default's files, which this repository never made.
    assert all(e["source"].startswith("results/default/") for e in spec.get("errors") or []), spec.get("errors")
    curves = {f"{PIPELINE}::val_top1", f"{PIPELINE}::ablation_val_top1"}
    confusion = {f"{RESULTS}/synth_moving/{m}/seed0/predictions.csv" for m in ("frame", "amflow")}
    images = {f"{RESULTS}/plots/{name}" for name in ("accuracy.png", "convergence.png", "amflow_heatmaps.png")}
    assert curves | confusion | images <= set(spec["data"]), sorted(spec["data"])
    assert [p["type"] for p in spec["data"][next(iter(confusion))]] == ["vega"]  # the confusion template
    out = dvc(project, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "amflow/seed0/train_log.csv" in html and "frame/seed0/train_log.csv" in html, out.stdout  # one line per run
    assert "<img" in html and "accuracy.png" in html  # the figures, as images
    dvc(project, "plots", "show")  # the documented form writes dvc_plots/, which git ignores
    assert (project / "dvc_plots" / "index.html").is_file()
    assert "dvc_plots" not in git(project, "status", "--porcelain").stdout


def test_push_pull_restores_byte_identical_and_snakemake_keeps_it(repo):
    project = repo["path"]
    before = tree_digest(project)
    assert len(before) > 50
    dvc(project, "push", PIPELINE)
    for path in ("data", "results", ".dvc/cache", ".snakemake"):
        shutil.rmtree(project / path, ignore_errors=True)
    dvc(project, "pull", PIPELINE)
    assert tree_digest(project) == before
    assert "up to date" in dvc(project, "status", PIPELINE).stdout
    # The documented post-pull step, then Snakemake has nothing to do, and DVC still agrees.
    snakemake(project, *POST_PULL[1:], env=env(project))
    out = snakemake(project, "-n", "report", "--configfile", TRIM, env=env(project))
    assert nothing_to_do(out), out.stdout[-3000:]
    assert "up to date" in dvc(project, "status", PIPELINE).stdout
    assert tree_digest(project) == before


def test_a_report_module_edit_reruns_the_report_only_in_both_tools(repo):
    """Each stage depends on the code its command imports: an edit to amflow/report/report.py makes
    `snakemake -n` and `dvc status` name the report job, and no training, evaluation or table."""
    project = repo["path"]
    module = project / "amflow" / "report" / "report.py"
    text, stat = module.read_text(), module.stat()
    module.write_text(text + "\n# an edit\n")
    try:
        plan = snakemake(project, "-n", "report", "--configfile", TRIM, env=env(project))
        assert job_counts(plan) == {"report": 1, "total": 1}, plan.stdout[-3000:]
        status = dvc(project, "status", PIPELINE).stdout
        assert changed_stages(status) == {"report"}, status
        assert "modified:" in status and "amflow/report/report.py" in status
    finally:
        module.write_text(text)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "up to date" in dvc(project, "status", PIPELINE).stdout


def test_two_runs_of_the_same_config_give_the_same_metrics(repo, tmp_path_factory):
    """The DVC repro against the Snakemake end-to-end run (same params for these runs)."""
    snake = shared_pipeline_run(tmp_path_factory)
    for run_dir in RUNS:
        a = json.loads((repo["path"] / RESULTS / run_dir / "metrics.json").read_text())
        b = json.loads((snake / TINY_RESULTS / run_dir / "metrics.json").read_text())
        assert set(a) == set(b), run_dir
        differ = {k for k in a if a[k] != b[k]} - set(NOT_REPRODUCIBLE)
        assert not differ, {k: (a[k], b[k]) for k in differ}


def test_experiment_with_a_changed_param(repo):
    project = repo["path"]
    target = stage_writing(project, f"{RESULTS}/synth_moving/frame/seed0/metrics.json")
    out = dvc(project, "exp", "run", "-S", f"{TRIM}:train.epochs=1", f"{PIPELINE}:{target}")
    assert f"Running stage '{PIPELINE}:{target}'" in out.stdout
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    exps = [rev for commit in shown for exp in (commit.get("experiments") or []) for rev in exp["revs"]]
    assert exps, "dvc exp show lists no experiment"
    exp = exps[0]["data"]
    assert exp["params"][TRIM]["data"]["train"]["epochs"] == 1
    metrics = exp["metrics"][f"{RESULTS}/synth_moving/frame/seed0/scores.json"]["data"]
    assert metrics["epochs"] == 1
    diff = json.loads(dvc(project, "metrics", "diff", "--json").stdout)
    epochs = diff[f"{RESULTS}/synth_moving/frame/seed0/scores.json"]["epochs"]
    assert (epochs["old"], epochs["new"]) == (2, 1)
    params_diff = json.loads(dvc(project, "params", "diff", "--json").stdout)
    change = params_diff[TRIM]["train.epochs"]
    assert (change["old"], change["new"]) == (2, 1)


def test_a_snakemake_run_is_handed_over_only_with_the_params_it_ran_with(tmp_path_factory):
    """docs/dvc.md: `amflow dvc-yaml --params FILE --commit` records a Snakemake run in the pipeline's
    dvc.lock. A run made with `--config 'train={epochs: 1}'` is refused in one line naming the run and
    the key, and nothing is recorded; rerun with the file's values, it is recorded, and DVC agrees."""
    project = copy_of(shared_pipeline_run(tmp_path_factory), tmp_path_factory.mktemp("handover") / "project")
    pipeline, lock = project / "pipelines/tiny/dvc.yaml", project / "pipelines/tiny/dvc.lock"
    target = f"{TINY_RESULTS}/synth_static/frame/seed0/metrics.json"
    snakemake(project, "--cores", "2", target, *TINY, "--config", "train={epochs: 1}")
    init_repo(project)
    hand_over = [BIN / "amflow", "dvc-yaml", "--params", "params/tiny.yaml", "--commit"]
    out = run(hand_over, project, check=False)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"error: {TINY_RESULTS}/synth_static/frame/seed0 was trained with train.epochs=1 "
                           f"(the file: 2)"), line
    assert "ablations" not in line and not lock.exists()
    # The same run with the file's values (Snakemake reruns it: its params changed), then the hand-over.
    snakemake(project, "--cores", "2", target, *TINY)
    run(hand_over, project)
    assert yaml.safe_load(lock.read_text())["stages"]  # recorded
    status = dvc(project, "status", str(pipeline.relative_to(project)))
    assert "Data and pipelines are up to date." in status.stdout + status.stderr, status.stdout[-3000:]
    dry = dvc(project, "repro", "--dry", str(pipeline.relative_to(project)))
    assert "Running stage" not in dry.stdout + dry.stderr, dry.stdout[-3000:]
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    data = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    epochs = {path: m["data"]["epochs"] for path, m in data.items() if path.startswith(TINY_RESULTS + "/")}
    assert epochs and set(epochs.values()) == {2}, epochs  # what ran is what dvc.lock says


def test_shipped_default_reproduces_with_user_overrides(tmp_path):
    """`dvc repro` on the shipped dvc.yaml and params/default.yaml, cut down as a user would: an
    experiment with fewer epochs on one evaluation (and everything it needs)."""
    project = make_project_copy(tmp_path / "project")
    init_repo(project)
    assert "missing" not in dvc(project, "status").stdout  # every params key dvc.yaml names is in the file
    stages = stages_of(project, "dvc.yaml")
    [target] = [n for n, st in stages.items()
                if "results/default/synth_moving/frame/seed0/metrics.json" in st.get("outs", [])]
    out = dvc(project, "exp", "run", "-S", "params/default.yaml:train.epochs=1",
              "-S", "params/default.yaml:pretrain.epochs=1",
              "-S", "params/default.yaml:pretrain.min_gain_over_chance=0", target)
    text = out.stdout + out.stderr
    for name in ("prepare_dataset@synth_moving-", "pretrain_images", "pretrain_backbone", "train@synth_moving-frame-0",
                 target):
        [stage] = [s for s in stages if s.startswith(name)]
        assert f"Running stage '{stage}'" in text, (stage, text[-3000:])
    scores = json.loads((project / "results/default/synth_moving/frame/seed0/scores.json").read_text())
    assert scores["epochs"] == 1 and 0.0 <= scores["top1"] <= 1.0
