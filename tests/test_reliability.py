"""Misuse and faults: names checked before they become paths, one writer per run folder, leftovers of
killed writes, and a Snakemake job killed mid-training (docs/reliability.md lists every case)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from amflow import io, paths
from amflow.cli import main
from amflow.data.frame_cache import FrameCache, write_cache
from amflow.errors import AmflowError
from amflow.params_io import load_params, resolve_raw
from project_copy import ROOT, copy_of, job_counts, make_project_copy, project_env, snakemake
from standins_train import make_tiny_dataset, tiny_params

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("AMFLOW_TRACKING", "0")
    monkeypatch.delenv("AMFLOW_STOP_AFTER_EPOCH", raising=False)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _video(seed: int = 0) -> dict:
    frames = np.random.default_rng(seed).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    return {"video_id": f"v{seed}", "split": "train", "label": 0, "frames": frames}


# --------------------------------------------------------------------------- names that become paths
def test_a_dataset_named_dot_is_refused_by_validate_and_by_every_stage(tmp_path, capsys):
    data = resolve_raw(ROOT / "params/tiny.yaml")  # the whole file, its base included
    data["datasets"]["."] = data["datasets"]["synth_static"]
    dn = tmp_path / "dn.yaml"
    dn.write_text(yaml.safe_dump(data))
    assert main(["validate", "--params", str(dn)]) == 2
    assert f"{dn}: invalid params" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the CLI refuses the name itself, whatever the params file
        main(["extract", "--params", str(ROOT / "params/tiny.yaml"), "--dataset", "."])
    assert exit_.value.code == 2 and "dataset name '.' is not allowed" in capsys.readouterr().err
    tiny = load_params(ROOT / "params/tiny.yaml")
    for name in (".", "..", "", "plots"):
        for make_path in (lambda: paths.dataset_key(tiny, name), lambda: paths.camera_dir(tmp_path, name),
                          lambda: paths.run_dir(tmp_path, name, "tpa", 0)):
            with pytest.raises(AmflowError, match="dataset name"):
                make_path()


def test_the_atomic_folder_write_refuses_to_replace_a_store_of_other_outputs(tmp_path):
    frames = tmp_path / "data" / "frames"
    for k, name in enumerate(("synth_moving", "synth_static")):
        write_cache(frames / name, [_video(k)])
    before = _tree(tmp_path / "data")
    with pytest.raises(AmflowError) as err:  # where a dataset named "." used to write its cache
        write_cache(frames, [_video(3)])
    assert str(frames) in str(err.value) and "synth_moving, synth_static" in str(err.value)
    assert _tree(tmp_path / "data") == before  # every cache intact, no temporary left
    write_cache(frames / "synth_static", [_video(4)])  # an output's own earlier version is still replaced
    np.testing.assert_array_equal(FrameCache(frames / "synth_static").read(0), _video(4)["frames"])


def test_the_atomic_folder_write_refuses_to_replace_an_ancestor_of_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "project" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project" / "data")
    with pytest.raises(AmflowError, match="contains the working folder"):
        with io.atomic_path(tmp_path / "project") as tmp:
            tmp.mkdir()
    assert (tmp_path / "project" / "data").is_dir()


# --------------------------------------------------------------------------- one writer per run folder
HOLD = """
import sys, time
from amflow import io
with io.exclusive_folder(sys.argv[1], "amflow train --dataset tiny --method amflow --seed 0"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_of_a_run_folder_fails_at_once_naming_the_holder(tmp_path):
    from amflow.evaluate.evaluation import evaluate_run
    from amflow.train.training import train_run

    run = paths.run_dir(tmp_path / "results", "tiny", "amflow", 0)
    run.mkdir(parents=True)
    (run / paths.CHECKPOINT).write_bytes(b"the first writer's weights")
    (run / paths.TRAIN_JSON).write_text("{}")
    before = _tree(run)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        for stage in (train_run, evaluate_run):
            with pytest.raises(AmflowError) as err:
                stage(tiny_params(), dataset="tiny", method="amflow", seed=0, data_dir=tmp_path / "data",
                      results_dir=tmp_path / "results", progress=False)
            msg = str(err.value)
            assert msg.startswith(f"{run}: another process is writing this run folder"), msg
            assert f"pid {holder.pid} on host" in msg and "amflow train --dataset tiny" in msg
        assert {k: v for k, v in _tree(run).items() if k != io.LOCK_FILE} == before  # nothing touched
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with io.exclusive_folder(run, "next"):  # the system frees a killed holder's lock
        pass


def test_evaluate_beside_a_running_training_names_the_training(tmp_path):
    from amflow.evaluate.evaluation import evaluate_run

    run = paths.run_dir(tmp_path / "results", "tiny", "amflow", 0)
    run.mkdir(parents=True)
    (run / paths.TRAIN_STATE).write_bytes(b"epoch 1 of a training under way")  # no train.json yet
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AmflowError) as err:
            evaluate_run(tiny_params(), dataset="tiny", method="amflow", seed=0, data_dir=tmp_path / "data",
                         results_dir=tmp_path / "results", progress=False)
        msg = str(err.value)
        assert msg.startswith(f"{run}: another process is writing this run folder"), msg
        assert f"amflow train --dataset tiny --method amflow --seed 0, pid {holder.pid}" in msg and "\n" not in msg
    finally:
        holder.kill()
        holder.wait(timeout=60)


@pytest.fixture
def read_only():
    """Make folders read-only for this process: their mode for a user; the immutable flag for root, whom
    modes do not stop. Restored afterwards (tmp_path must stay deletable)."""
    made = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("root here cannot make a folder read-only (chattr +i refused)")
        made.append(folder)

    yield make
    for folder in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_results_folder_is_one_line_naming_it(tmp_path, read_only, capsys):
    make_tiny_dataset(tmp_path / "data")
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump(tiny_params(epochs=1).model_dump(mode="json")))
    common = ["--params", str(params), "--dataset", "tiny", "--seed", "0", "--data-dir", str(tmp_path / "data"),
              "--results-dir", str(tmp_path / "results")]
    results = paths.results_root(tmp_path / "results", "tiny")
    run = paths.run_dir(results, "tiny", "frame", 0)
    run.mkdir(parents=True)
    (run / paths.TRAIN_JSON).write_text("{}")
    for folder in (run, results / "tiny"):  # the run's folder and its dataset's
        read_only(folder)
    for command, method, where in (("train", "aim", results / "tiny/aim"), ("evaluate", "frame", run / io.LOCK_FILE)):
        assert main([command, *common, "--method", method]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {where}: cannot be written"), err
        assert "--results-dir" in err


KILL_IN_SAVE = """
import os, signal, sys, torch
from pathlib import Path
from amflow.train import checkpoint as ckpt
torch.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # killed inside torch.save
ckpt.save_checkpoint(Path(sys.argv[1]) / "train_state.pt", {k: 0 for k in ckpt.REQUIRED_KEYS})
"""


def test_leftovers_of_a_kill_inside_torch_save_are_removed_at_the_next_start(tmp_path, capsys):
    from amflow.train.training import train_run

    make_tiny_dataset(tmp_path / "data")
    run = paths.run_dir(tmp_path / "results", "tiny", "frame", 0)
    run.mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, str(run)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == -signal.SIGKILL
    leftovers = io.temporaries(run, paths.TRAIN_STATE)
    assert len(leftovers) == 1 and not (run / paths.TRAIN_STATE).exists()
    info = train_run(tiny_params(epochs=1), dataset="tiny", method="frame", seed=0, data_dir=tmp_path / "data",
                     results_dir=tmp_path / "results", progress=False)
    assert info["status"] == "complete" and io.temporaries(run) == []
    assert f"removed {leftovers[0]}" in capsys.readouterr().err


# --------------------------------------------------------------------------- a Snakemake job killed mid-training
EPOCHS = 6
# The shipped tiny params with more epochs (room for a kill between two checkpoints), as a user types it.
CHEAPER = ("--configfile", "params/tiny.yaml", "--config", f"train={{epochs: {EPOCHS}}}")
TINY = load_params(ROOT / "params/tiny.yaml")
RESULTS = paths.results_root("results", TINY.name)
RUN = paths.run_dir(RESULTS, "synth_static", "frame", 0)
TARGET = str(RUN / paths.METRICS_JSON)
UPSTREAM = (str(paths.frames_dir("data", paths.dataset_key(TINY, "synth_static")) / "summary.json"),
            str(paths.backbone_file(RESULTS)))
# evaluated_with names the checkpoint by its sha256, and a checkpoint holds its training's seconds.
NOT_REPRODUCIBLE = ("train_time_s", "eval_time_s", "train_cpu_s", "eval_cpu_s", "epoch_times", "train_clips_per_s",
                    "mlflow_run_id", "evaluated_with")


def _train_process(snake: subprocess.Popen):
    for child in psutil.Process(snake.pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        # the training itself, not Snakemake (whose resolved params sit in .snakemake/, named in both)
        if "train" in cmd and "--dataset" in cmd and not any(Path(c).name == "snakemake" for c in cmd[:2]):
            return child
    return None


@pytest.mark.slow
def test_a_training_job_killed_mid_run_resumes_to_the_same_metrics_bit_for_bit(tmp_path):
    base = make_project_copy(tmp_path / "base")
    snakemake(base, "--cores", "2", *UPSTREAM, *CHEAPER)
    whole, killed = copy_of(base, tmp_path / "whole"), copy_of(base, tmp_path / "killed")
    snakemake(whole, "--cores", "2", TARGET, *CHEAPER)

    run = killed / RUN
    proc = subprocess.Popen([str(Path(sys.executable).parent / "snakemake"), "--cores", "2", TARGET, *CHEAPER], cwd=killed,
                            env=project_env(killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        while not (run / paths.TRAIN_STATE).exists():  # the first epoch is saved: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(0.02)
        train = _train_process(proc)
        assert train is not None
        train.send_signal(signal.SIGSTOP)  # freeze it, to check where it stands, then kill it
        assert not (run / paths.TRAIN_JSON).exists(), "training finished before it could be killed"
        train.kill()
        assert proc.wait(timeout=300) != 0  # Snakemake saw its job die
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = torch.load(run / paths.TRAIN_STATE, weights_only=True)
    assert 1 <= state["epoch"] < EPOCHS and not (run / paths.METRICS_JSON).exists()

    snakemake(killed, "--cores", "2", TARGET, *CHEAPER)  # the rerun: what the user types again
    log = (killed / paths.logs_root("logs", TINY.name) / "train/synth_static/frame/seed0.log").read_text()
    assert f"from epoch {state['epoch']}" in log  # it resumed rather than starting over
    a = json.loads((whole / TARGET).read_text())
    b = json.loads((killed / TARGET).read_text())
    assert {k: v for k, v in a.items() if k not in NOT_REPRODUCIBLE} == \
           {k: v for k, v in b.items() if k not in NOT_REPRODUCIBLE}
    digests = ("training_digest", "evaluation_digest")
    assert [a["evaluated_with"][k] for k in digests] == [b["evaluated_with"][k] for k in digests]
    history = [json.loads((p / RUN / paths.TRAIN_JSON).read_text())["history"]
               for p in (whole, killed)]
    timeless = [[{k: v for k, v in r.items() if k not in ("epoch_time", "clips_per_s", "data_wait_frac")} for r in h]
                for h in history]
    assert timeless[0] == timeless[1]


@pytest.mark.slow
def test_a_lost_checkpoint_is_made_again_before_the_evaluation_that_needs_it(tmp_path):
    """The checkpoint deleted after the run's evaluation, then `snakemake --forcerun evaluate`: Snakemake
    sees the training's output missing and makes it again first, so the evaluation succeeds and its
    results come back equal (nothing is deleted by a job that cannot succeed)."""
    project = make_project_copy(tmp_path / "project")
    tiny = ("--configfile", "params/tiny.yaml", "--config", "backbone={weights: random}")  # no pretraining
    snakemake(project, "--cores", "2", TARGET, *tiny)
    before = json.loads((project / TARGET).read_text())
    (project / RUN / paths.CHECKPOINT).unlink()
    rerun = (TARGET, "--forcerun", "evaluate", *tiny)  # the target first: --forcerun takes every word after it
    planned = snakemake(project, "-n", *rerun)
    assert {k: v for k, v in job_counts(planned).items() if k != "total"} == {"train": 1, "evaluate": 1}
    assert "Missing output files" in planned.stdout + planned.stderr
    snakemake(project, "--cores", "2", *rerun)
    after = json.loads((project / TARGET).read_text())
    assert {k: v for k, v in after.items() if k not in NOT_REPRODUCIBLE} == \
           {k: v for k, v in before.items() if k not in NOT_REPRODUCIBLE}
    assert (project / RUN / paths.CHECKPOINT).is_file()


def test_every_test_the_reliability_table_names_exists():
    text = (ROOT / "docs/reliability.md").read_text()
    named = re.findall(r"`tests/((?:\w+/)?test_\w+\.py)::(test_\w+)", text)
    assert len(named) > 20
    for file, test in named:
        assert re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(), re.M), f"{file}::{test}"
