"""Optuna sweeps: the README's command on the shipped files, exact trial counts with several workers,
pruning, failed trials, resume after a kill, the space check, export."""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from standins_train import CLASSES, tiny_params

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def make_colour_dataset(data_dir: Path, size: int = 16, frames: int = 8) -> None:
    """A dataset any frozen random backbone separates in one epoch: the class is the clip's colour.

    Sweep tests need trials whose validation accuracy depends on the hyperparameters from the first
    epoch (the pruner compares epochs), which a temporal task on a random backbone does not give.
    """
    import json

    import numpy as np

    from amflow import paths
    from amflow.data.frame_cache import write_cache

    colours = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], dtype=np.uint8)
    rng = np.random.default_rng(0)
    root = paths.dataset_dir(data_dir, paths.dataset_key(tiny_params(), "tiny"))
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    (root / "dataset.json").write_text(json.dumps({"source": "test"}))
    videos = []
    for split, n in {"train": 48, "val": 16, "test": 8}.items():
        for i in range(n):
            noise = rng.integers(0, 40, size=(frames, size, size, 3))
            clip = np.clip(colours[i % 4] * 0.8 + noise, 0, 255).astype(np.uint8)
            videos.append({"video_id": f"{split}{i:03d}", "split": split, "label": i % 4, "frames": clip})
    write_cache(paths.frames_dir(data_dir, paths.dataset_key(tiny_params(), "tiny")), videos)


def _setup(tmp_path, trials=3, space=None, pruner=None, fixed=None):
    data_dir, results_dir = tmp_path / "data", tmp_path / "results"
    make_colour_dataset(data_dir)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params(epochs=2, warmup_epochs=0).model_dump(mode="json")))
    spec = {"trials": trials, "seed": 0, "pruner": pruner or {"type": "none"}, "fixed": fixed or {},
            "space": space or {"train.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
                               "model.adapter.bottleneck": {"type": "categorical", "choices": [4, 8]}}}
    space_file = tmp_path / "sweep.yaml"
    space_file.write_text(yaml.safe_dump(spec))
    return data_dir, results_dir, params_file, space_file


def _args(tmp_path, params_file, space_file, **kw):
    ns = dict(params=str(params_file), space=str(space_file), set=None, dataset="tiny", method="frame", trials=None,
              workers=1,
              storage=None, study_name="s", output=None, data_dir=tmp_path / "data",
              results_dir=tmp_path / "results")
    ns.update(kw)
    return argparse.Namespace(**ns)


def _study(url, name="s"):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _check_exact(study, trials_dir: Path, n: int):
    from optuna.trial import TrialState

    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n
    # No trial run twice: each finished trial trained in its own folder, and no extra folder exists.
    numbers = sorted(t.number for t in finished)
    dirs = sorted(int(p.name.split("_")[1]) for p in trials_dir.iterdir())
    assert set(numbers) <= set(dirs)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


@pytest.mark.slow
def test_two_workers_finish_exactly_the_requested_trials(tmp_path):
    from amflow.params_io import load_params
    from amflow.stages.sweep import run_sweep

    _, results_dir, params_file, space_file = _setup(tmp_path, trials=3)
    summary = run_sweep(_args(tmp_path, params_file, space_file, workers=2))
    folder = results_dir / "sweeps/tiny/frame"
    study = _study(summary["storage"])
    _check_exact(study, folder / "trials", 3)
    assert len(list((folder / "trials").iterdir())) == 3
    # The exported params validate, carry the best trial's values, and drive a training run.
    best = load_params(folder / "best.yaml")
    assert best.model.adapter.bottleneck == summary["best"]["params"]["model.adapter.bottleneck"]
    assert best.train.lr == pytest.approx(summary["best"]["params"]["train.lr"])
    assert (folder / "optimization_history.png").stat().st_size > 0
    from amflow.train.training import train_run

    out = train_run(best, dataset="tiny", method="frame", seed=0, data_dir=tmp_path / "data",
                    results_dir=results_dir, run_dir=tmp_path / "best_run", progress=False)
    assert len(out["history"]) == best.train.epochs
    # MLflow: one parent run for the study, one nested run per trial.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("amflow.stage") == "sweep"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 3
    assert float(parents[0].data.metrics["best_value"]) == pytest.approx(summary["best"]["value"])


@pytest.mark.slow
def test_pruner_prunes_a_bad_configuration(tmp_path):
    from amflow.params_io import resolve_raw
    from amflow.stages.sweep import load_study, worker
    from amflow.sweep.space import load_sweep_spec

    _, results_dir, params_file, space_file = _setup(
        tmp_path, trials=2, pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        space={"train.lr": {"type": "float", "low": 1e-9, "high": 0.02, "log": True}})
    spec = load_sweep_spec(space_file)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = load_study(url, "s", spec)
    study.enqueue_trial({"train.lr": 0.02})   # learns the colours in one epoch
    study.enqueue_trial({"train.lr": 1e-9})   # cannot learn anything: must be pruned after epoch 1
    ctx = dict(spec=spec, base=resolve_raw(params_file), params_file=str(params_file), dataset="tiny", method="frame",
               seed=0,
               data_dir=str(tmp_path / "data"), results_dir=str(results_dir), folder=str(tmp_path / "sw"),
               storage=url, study_name="s", trials=2, parent_run_id=None)
    worker(ctx)
    states = [t.state.name for t in load_study(url, "s", spec).trials]
    assert states == ["COMPLETE", "PRUNED"]
    # The pruned trial stopped early: fewer epochs logged than the budget.
    log = (tmp_path / "sw/trials/trial_0001/train_log.csv").read_text().strip().splitlines()
    assert len(log) - 1 < 2


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_requested_count(tmp_path):
    # Longer trials, so that the kill lands inside one.
    _, results_dir, params_file, space_file = _setup(tmp_path, trials=3, fixed={"train.epochs": 40})
    cmd = [sys.executable, "-m", "amflow.cli", "sweep", "--params", str(params_file), "--space", str(space_file),
           "--dataset", "tiny", "--method", "frame", "--study-name", "s", "--data-dir", str(tmp_path / "data"),
           "--results-dir", str(results_dir)]
    folder = results_dir / "tiny" / "sweeps/tiny/frame"  # the CLI works in the params' namespace (name: tiny)
    url = f"sqlite:///{(folder / 'study.db').resolve()}"
    from optuna.trial import TrialState

    log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    trials_dir = folder / "trials"
    deadline = time.time() + 240
    try:
        # Kill while trial 1 is running, after trial 0 finished. Watch the run folders rather than the
        # study database, so the test never competes with the sweep for the database.
        while time.time() < deadline:
            time.sleep(0.2)
            assert proc.poll() is None, (tmp_path / "first_run.log").read_text()[-3000:]
            if (trials_dir / "trial_0000/train.json").exists() and (trials_dir / "trial_0001/train_state.pt").exists():
                break
        else:
            pytest.fail("the sweep never reached its second trial")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    assert proc.returncode != 0
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    study = _study(url)
    _check_exact(study, trials_dir, 3)
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and "error" not in interrupted[0].user_attrs
    # Its parameters were queued again, marked as its replacement, and finished: nothing lost.
    redone = [t for t in study.trials if t.state == TrialState.COMPLETE and t.params == interrupted[0].params]
    assert [t.user_attrs.get("requeued_from") for t in redone] == [interrupted[0].number]
    # The rerun's new trial is a new point: the sampler does not replay the first run's start-up points.
    points = [tuple(sorted(t.params.items())) for t in study.trials if t.state != TrialState.FAIL]
    assert len(points) == 3 and len(set(points)) == 3, points


def test_bad_space_key_fails_before_any_trial(tmp_path):
    from amflow.errors import AmflowError
    from amflow.stages.sweep import run_sweep

    _, results_dir, params_file, space_file = _setup(
        tmp_path, space={"model.adapter.bottlneck": {"type": "categorical", "choices": [4]}})
    with pytest.raises(AmflowError, match="bottlneck") as err:
        run_sweep(_args(tmp_path, params_file, space_file))
    assert str(space_file) in str(err.value) and "\n" not in str(err.value)
    assert not (results_dir / "sweeps/tiny/frame").exists()


def test_a_space_value_the_model_cannot_take_is_refused_before_the_first_trial(tmp_path):
    """The shipped default's backbone has 4 blocks: a choice naming block 4 is one error line naming the
    sweep file and the key, before any study or trial exists (the schema alone accepts it)."""
    shutil.copytree(ROOT / "params", tmp_path / "params")
    spec = yaml.safe_load((ROOT / "params/sweep.yaml").read_text())
    spec["space"]["model.adapter.blocks"]["choices"] = ["all", [3, 4, 5], [4, 5]]
    (tmp_path / "bad_sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = subprocess.run([BIN / "amflow", "sweep", "--space", "bad_sweep.yaml", "--dataset", "synth_moving",
                          "--method", "amflow", "--trials", "20"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: bad_sweep.yaml: space.model.adapter.blocks: [3, 4, 5]"), lines[0]
    assert "outside the backbone's 4 blocks" in lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    from optuna.trial import TrialState

    from amflow.stages.sweep import load_study, run_sweep
    from amflow.sweep.space import load_sweep_spec

    _, results_dir, params_file, space_file = _setup(
        tmp_path, trials=3, space={"train.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
                                   "model.adapter.bottleneck": {"type": "categorical", "choices": [4, 8]}})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # The first trial gets a value the params schema refuses (label smoothing below 1): it fails inside the trial.
    load_study(url, "s", load_sweep_spec(space_file)).enqueue_trial({"train.label_smoothing": 1.5})
    summary = run_sweep(_args(tmp_path, params_file, space_file, storage=url))
    trials = _study(url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    error = trials[0].user_attrs["error"]
    assert "train.label_smoothing" in error and "less than 1" in error, error
    assert summary["trials"] == 3 and summary["best"]["number"] in (1, 2)
    assert (results_dir / "sweeps/tiny/frame/best.yaml").is_file()


README_SWEEP = "amflow sweep --dataset synth_moving --method amflow --trials 20"
# Options a user can type to make the README's run cheap: a smaller synth_moving, a random backbone
# (no pretraining stage); the same options prepare the data the sweep trains on.
CHEAP = ["--set", "datasets.synth_moving.synth.split_sizes={train: 24, val: 12, test: 12}",
         "--set", "backbone.weights=random"]


@pytest.mark.slow
def test_readme_sweep_runs_as_typed_on_the_shipped_files(tmp_path):
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from amflow.params_io import load_params

    readme = (ROOT / "README.md").read_text()
    assert README_SWEEP in readme
    shutil.copytree(ROOT / "params", tmp_path / "params")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def amflow(*args):
        out = subprocess.run([BIN / "amflow", *args], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=1200)
        assert out.returncode == 0, f"amflow {' '.join(args)}\n{out.stderr[-4000:]}"
        return out

    for stage in ("prepare", "extract", "camera-motion"):  # what the sweep of an AM flow run needs
        amflow(stage, "--dataset", "synth_moving", *CHEAP)
    cmd = README_SWEEP.split()[1:]
    cmd[cmd.index("--trials") + 1] = "2"
    out = amflow(*cmd, *CHEAP)

    # The log is plain lines: progress every few steps, one line per epoch and per trial.
    assert "\r" not in out.stderr
    assert "epoch 1/4: 0/" in out.stderr and "trial 1: val_top1" in out.stderr
    study = _study(f"sqlite:///{tmp_path / 'results/default/sweeps/synth_moving/amflow/study.db'}",
                   "default-synth_moving-amflow")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    shipped_space = yaml.safe_load((ROOT / "params/sweep.yaml").read_text())["space"]
    readable = {key: [c if isinstance(c, (str, int, float)) else yaml.safe_dump(c, default_flow_style=True).strip()
                      for c in dim["choices"]]
                for key, dim in shipped_space.items() if dim["type"] == "categorical"}
    assert readable["model.adapter.tpu"] == ["transformer", "tcn", "lstm"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for t in study.trials:
        for key, labels in readable.items():
            assert t.params[key] in labels and list(t.distributions[key].choices) == labels
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.run_name == f"trial-{t.number}"
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["amflow.stage"] == "sweep" and parent.data.tags["amflow.study"] == study.study_name

    # best.yaml: the tuned values, with the params file's full training budget (not the sweep's 4 epochs).
    best_file = tmp_path / "results/default/sweeps/synth_moving/amflow/best.yaml"
    best = load_params(best_file)
    shipped = yaml.safe_load((ROOT / "params/default.yaml").read_text())
    assert best.train.epochs == shipped["train"]["epochs"] != yaml.safe_load(
        (ROOT / "params/sweep.yaml").read_text())["fixed"]["train.epochs"]
    tuned = study.best_trial.params
    assert best.train.lr == pytest.approx(tuned["train.lr"])
    assert best.model.adapter.tpu == tuned["model.adapter.tpu"]
    assert best.model.adapter.blocks == yaml.safe_load(str(tuned["model.adapter.blocks"]))
    assert best.model.adapter.bottleneck == tuned["model.adapter.bottleneck"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server on 127.0.0.1 (installed by .ci/run)."""
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs them)")
    pgdata = Path("/tmp") / f"amflow-pg-{os.getpid()}-{tmp_path.name}"
    port = _free_port()
    as_user = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    if as_user:
        pgdata.mkdir(mode=0o700)
        shutil.chown(pgdata, "postgres", "postgres")
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(pgdata), "-U", "amflow", "--auth", "trust"],
                   check=True, capture_output=True)
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(pgdata), "-w", "-l", str(pgdata / "log"),
                              "-o", f"-h 127.0.0.1 -p {port} -k {pgdata}", "start"], check=True, capture_output=True)
    try:
        subprocess.run(as_user + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "amflow",
                                  "optuna"], check=True, capture_output=True)
        yield f"postgresql://amflow@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(tmp_path, postgres):
    from amflow.stages.sweep import run_sweep

    _, results_dir, params_file, space_file = _setup(tmp_path, trials=3)
    summary = run_sweep(_args(tmp_path, params_file, space_file, workers=2, storage=postgres))
    assert summary["storage"] == postgres
    _check_exact(_study(postgres), results_dir / "sweeps/tiny/frame/trials", 3)


SHIPPED = sorted(p.stem for p in (ROOT / "params").glob("*.yaml") if p.name not in ("sweep.yaml", "paper.yaml"))
# Paper-size backbones (DINOv2 ViT-B/14 at 224 px) take most of a minute to build for every probe.
PAPER_SIZE = {"custom_list", "k400", "smarthome", "ssv2", "synth_full"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in PAPER_SIZE else n
                                  for n in SHIPPED])
def test_the_shipped_space_fits_every_shipped_params_file(name):
    """params/sweep.yaml's every choice and range end builds the model of every shipped params file
    (the adapter blocks count from the backbone's last block, so a 2-block backbone takes them too)."""
    from amflow.params_io import load_params, resolve_raw
    from amflow.sweep.space import check_space, load_sweep_spec

    path = ROOT / "params" / f"{name}.yaml"
    check_space(resolve_raw(path), load_sweep_spec(ROOT / "params" / "sweep.yaml"),
                dataset=load_params(path).table_datasets[0], method="amflow", space_file="params/sweep.yaml",
                params_file=str(path))


README_MINUTE = ("snakemake --cores 2 results/tiny/backbone/metrics.json", "amflow sweep --params params/tiny.yaml")


@pytest.mark.slow
def test_the_readmes_one_minute_sweep_runs_as_typed_and_keeps_one_model(tmp_path):
    """The README's short sweep, its two lines as typed, in a copy of the project: four trials end;
    each trial's MLflow run has its params and metrics and no model, but the best one, whose model is
    logged once; only the best trial keeps its checkpoint."""
    import shlex

    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from project_copy import make_project_copy, project_env

    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(README_MINUTE)]
    assert len(lines) == 2, "the README's one-minute sweep"
    project = make_project_copy(tmp_path / "project")
    env = project_env(project)
    for line in lines:
        out = subprocess.run(shlex.split(line), cwd=project, env=env, capture_output=True, text=True, timeout=1500)
        assert out.returncode == 0, f"{line}\n{out.stderr[-4000:]}"
    folder = project / "results/tiny/sweeps/synth_moving/tpa"
    study = _study(f"sqlite:///{folder / 'study.db'}", "tiny-synth_moving-tpa")
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 4
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    best = study.best_trial
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.params["train.epochs"] == "4" and "val_top1" in run.data.metrics
        models = run.outputs.model_outputs
        assert len(models) == (1 if t.number == best.number else 0), t.number
        kept = (folder / "trials" / f"trial_{t.number:04d}" / "checkpoint.pt").exists()
        assert kept == (t.number == best.number), t.number
    parent = client.get_run(client.get_run(best.user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"])
    assert parent.data.tags["amflow.best_model"].endswith("/model")
