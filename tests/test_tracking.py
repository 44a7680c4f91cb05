"""MLflow tracking of real (tiny) runs: sqlite store, a real ``mlflow server``, resume, failing fast.

The runs use the real stage code (``train_run`` / ``evaluate_run``) with a tiny frame cache and a
2-block random-weight ViT, method ``frame`` (the cheapest; tracking does not depend on the method).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from amflow import io, paths, tracking
from amflow.errors import AmflowError
from standins_train import make_tiny_dataset, tiny_params

torch.set_num_threads(1)
MLFLOW = Path(sys.executable).parent / "mlflow"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_and_evaluate(root: Path, method: str = "frame", **train):
    from amflow.evaluate.evaluation import evaluate_run
    from amflow.stages.train import log_model
    from amflow.train.training import train_run

    params = tiny_params(epochs=2, **train)
    kw = dict(dataset="tiny", method=method, seed=0, data_dir=root / "data", results_dir=root / "results")
    info = train_run(params, progress=False, log_model=log_model, **kw)
    metrics = evaluate_run(params, progress=False, **kw)
    return info, metrics, root / "results" / "tiny" / method / "seed0"


EXPERIMENT = "amflow-tiny-tiny"   # <prefix>-<params name>-<dataset>: tiny_params is named "tiny"


def check_store(uri: str, run_dir: Path, data_dir: Path, epochs: int = 2):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    rec = io.read_json(run_dir / tracking.RUN_FILE)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None and rec["experiment_id"] == exp.experiment_id
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'frame-seed0'")
    assert [r.info.run_id for r in runs] == [rec["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    # params: what defines the run (its identity), flattened, plus the run's own
    assert run.data.params["train.epochs"] == "2" and run.data.params["run.method"] == "frame"
    assert run.data.params["backbone.kwargs.depth"] == "2"
    # the run's own dataset only, not the whole params file; not how it ran (workers, device)
    assert run.data.params["datasets.tiny.short_side"] == "16" and run.data.params["params_name"] == "tiny"
    assert not any(k.startswith(("datasets.other", "table_datasets", "ablations.", "sampling_overrides",
                                 "train.num_workers", "train.device")) for k in run.data.params), \
        sorted(run.data.params)
    # one value per epoch, steps 1..E, for every per-epoch metric
    for key in ("train_loss", "val_top1", "lr", "clips_per_s"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, epochs + 1)), key
    assert 0.0 <= run.data.metrics["test_top1"] <= 1.0 and "test_mean_class_acc" in run.data.metrics
    tags = run.data.tags
    assert tags["amflow.stage"] == "evaluate" and tags["amflow.method"] == "frame"
    manifest = paths.frames_dir(data_dir, paths.dataset_key(tiny_params(), "tiny")) / "manifest.csv"
    assert tags["amflow.data_manifest_sha256"] == tracking.file_sha256(manifest)
    # every tag is MLflow's own (mlflow.*) or in the project's one namespace
    assert all(k.startswith(("mlflow.", "amflow.")) for k in tags), sorted(tags)
    # the frame manifest is the run's dataset input, with MLflow's digest of it
    [inp] = run.inputs.dataset_inputs
    assert inp.dataset.name == "tiny-frames" and inp.dataset.source_type == "local"
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert json.loads(inp.dataset.profile)["num_rows"] == len(pd.read_csv(manifest))
    arts = {a.path for d in ("train", "evaluate") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"train/train.json", "train/train_log.csv", "train/params.yaml", "evaluate/metrics.json",
            "evaluate/confusion.png", "evaluate/curves.png", "evaluate/per_class.csv"} <= arts
    return run


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    make_tiny_dataset(root / "data")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("AMFLOW_TRACKING", "1")
    mp.delenv("AMFLOW_STOP_AFTER_EPOCH", raising=False)
    try:
        info, metrics, run_dir = train_and_evaluate(root)
        yield root, uri, info, metrics, run_dir
    finally:
        mp.undo()


def test_sqlite_store_holds_params_epoch_metrics_and_artefacts(sqlite_run):
    root, uri, info, metrics, run_dir = sqlite_run
    run = check_store(uri, run_dir, root / "data")
    assert info["mlflow_run_id"] == run.info.run_id == metrics["mlflow_run_id"]
    # artefacts live beside the database, not in the working folder
    assert (root / "mlartifacts" / EXPERIMENT / run.info.run_id).is_dir()


def test_a_rerun_continues_its_run_and_other_params_make_a_new_record(sqlite_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    from amflow.stages.train import log_model
    from amflow.train.training import train_run

    root, uri, *_ = sqlite_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    params = tiny_params(epochs=3)
    kw = dict(dataset="tiny", method="frame", seed=1, data_dir=root / "data", results_dir=root / "results",
              progress=False, log_model=log_model)
    first = train_run(params, stop_after_epoch=1, **kw)
    assert first["status"] == "stopped"
    run_dir = root / "results" / "tiny" / "frame" / "seed1"
    run_id = io.read_json(run_dir / tracking.RUN_FILE)["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status == "KILLED"
    info = train_run(params, **kw)
    assert info["mlflow_run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val_top1")]
    assert sorted(steps) == [1, 2, 3]                       # epoch 1 logged once, not twice
    names = [r.info.run_name for r in client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])]
    assert names.count("frame-seed1") == 1
    # Training afresh with other params (training state deleted): a new MLflow run; the old one is the
    # record of what ran, kept with its model and tagged superseded.
    (run_dir / paths.TRAIN_STATE).unlink()
    again = train_run(tiny_params(epochs=1), **kw)
    assert again["mlflow_run_id"] != run_id
    assert client.get_run(again["mlflow_run_id"]).data.params["train.epochs"] == "1"
    old = client.get_run(run_id)
    assert old.info.lifecycle_stage == "active" and old.data.params["train.epochs"] == "3"
    assert old.data.tags["amflow.superseded"] == "true" and old.data.tags["amflow.superseded_by"] == again["mlflow_run_id"]
    [model] = old.outputs.model_outputs
    assert client.get_logged_model(model.model_id).status.name == "READY"   # the old run's model stays usable
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    current = "attributes.run_name = 'frame-seed1' and tags.amflow.superseded = 'false'"  # the README's filter
    assert [r.info.run_id for r in client.search_runs([exp_id], current)] == [again["mlflow_run_id"]]
    # The same params again from scratch (a lost run folder): that run is redone, not added.
    (run_dir / paths.TRAIN_STATE).unlink()
    (run_dir / paths.CHECKPOINT).unlink()
    third = train_run(tiny_params(epochs=1), **kw)
    assert client.get_run(again["mlflow_run_id"]).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in client.search_runs([exp_id], current)] == [third["mlflow_run_id"]]
    assert sorted(r.info.run_id for r in client.search_runs([exp_id], "attributes.run_name = 'frame-seed1'")) \
        == sorted([run_id, third["mlflow_run_id"]])
    assert client.get_run(run_id).data.tags["amflow.superseded"] == "true"  # history stays history


class Pruned(Exception):
    pass


def test_sweep_parent_nests_trials_and_a_stopping_callback_is_not_a_failure(sqlite_run, monkeypatch):
    import optuna
    from mlflow.tracking import MlflowClient

    from amflow.stages.sweep import finish_parent, open_parent
    from amflow.train.training import train_run

    root, uri, *_ = sqlite_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    params = tiny_params(epochs=3)
    study = optuna.create_study(direction="maximize")
    parent = open_parent(params, dataset="tiny", method="frame", study_name="study-x", study=study,
                         spec={"trials": 2, "metric": "val_top1"})
    resumed = open_parent(params, dataset="tiny", method="frame", study_name="study-x", study=study,
                          spec={"trials": 4, "metric": "val_top1"})  # more trials: the same search
    assert parent.run_id and resumed.run_id == parent.run_id          # a resumed study reopens its parent

    def prune(record):
        if record["epoch"] == 1:
            raise Pruned()

    run_dir = root / "sweep" / "trial_0000"
    with pytest.raises(Pruned):
        train_run(params, dataset="tiny", method="frame", seed=0, data_dir=root / "data",
                  results_dir=root / "results", run_dir=run_dir, progress=False, callbacks=[prune],
                  parent_run_id=parent.run_id, tags={"amflow.trial": "0"})
    client = MlflowClient(tracking_uri=uri)
    child = client.get_run(io.read_json(run_dir / tracking.RUN_FILE)["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id and child.data.tags["amflow.trial"] == "0"
    assert child.info.status == "KILLED"                           # pruned, not failed
    assert (run_dir / paths.TRAIN_STATE).exists() and not (run_dir / paths.TRAIN_JSON).exists()
    finish_parent(parent, {"number": 0, "value": 0.5, "params": {"train.lr": 0.01}}, [run_dir / paths.TRAIN_LOG])
    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["best_value"] == 0.5
    assert run.data.tags["amflow.best.train.lr"] == "0.01" and run.data.params["sweep.trials"] == "2"
    assert [a.path for a in client.list_artifacts(parent.run_id, "sweep")] == ["sweep/train_log.csv"]


def test_the_logged_model_predicts_like_the_run_folder(sqlite_run, tmp_path, capsys):
    """The run's MLflow model (pyfunc, with a signature) loads from runs:/ and gives the run folder's answer."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from amflow.cli import main
    from amflow.evaluate.mlflow_model import load_predictor
    from amflow.evaluate.predict import Predictor
    from standins_train import CLASSES, moving_square
    from video_files import write_mp4

    root, uri, info, _, run_dir = sqlite_run
    client = MlflowClient(tracking_uri=uri)
    [output] = client.get_run(info["mlflow_run_id"]).outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.name == "model" and logged.source_run_id == info["mlflow_run_id"]
    video = tmp_path / "clip.mp4"
    write_mp4(video, moving_square(2, 12, 32, np.random.default_rng(1)))

    model_uri = f"runs:/{info['mlflow_run_id']}/model"
    from_model = load_predictor(model_uri, tracking_uri=uri)
    from_folder = Predictor.from_run_dir(run_dir)
    assert np.allclose(from_model.probabilities(video).numpy(), from_folder.probabilities(video).numpy(), atol=1e-6)

    with tracking.using_store(uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    sig = pyfunc.metadata.signature
    assert sig.inputs.input_names() == ["video"] and sig.params.to_dict()[0]["name"] == "top_k"
    table = pyfunc.predict(pd.DataFrame({"video": [str(video), str(video)]}), params={"top_k": 2})
    assert list(table.columns) == ["video", "rank", "label", "probability"] and len(table) == 4
    assert table["rank"].tolist() == [1, 2, 1, 2] and set(table["label"]) <= set(CLASSES)
    expected = from_folder.predict(video, 2)
    assert table["label"].tolist()[:2] == [n for n, _ in expected]

    # the CLI takes the same URI
    assert main(["predict", str(video), "--model-uri", model_uri, "--tracking-uri", uri, "--json"]) == 0
    [answer] = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in answer["predictions"]] == [n for n, _ in from_folder.predict(video, 4)]


def train_with_pretrained_backbone(root: Path, seeds=(0,)) -> tuple[str, list[dict]]:
    """Runs of the tiny dataset on a pipeline-pretrained backbone file (random weights saved as the
    pretraining would), tracked in root/mlflow.db; returns the store's URI and each run's train.json."""
    import timm
    from safetensors.torch import save_file

    from amflow.params_io import validate
    from amflow.stages.train import log_model
    from amflow.train.training import train_run

    make_tiny_dataset(root / "data")
    data = tiny_params(epochs=1).model_dump(mode="json")
    data["backbone"]["weights"] = "pretrain"
    data["pretrain_images"] = {"images": 100, "val_images": 100}
    params = validate(data)
    backbone = paths.backbone_file(root / "results" / "tiny")
    backbone.parent.mkdir(parents=True)
    torch.manual_seed(0)
    net = timm.create_model(params.backbone.model, pretrained=False, num_classes=0, **params.backbone.kwargs)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(backbone))
    infos = [train_run(params, dataset="tiny", method="frame", seed=seed, data_dir=root / "data",
                       results_dir=root / "results" / "tiny", progress=False, log_model=log_model) for seed in seeds]
    return f"sqlite:///{root / 'mlflow.db'}", infos


def test_the_model_carries_its_backbone_as_one_artefact(tmp_path, monkeypatch, capsys):
    """The models of two runs on the pipeline's pretrained backbone refer to one MLflow artefact of it
    (logged once, with its hash), not to its path: with the results folder gone, backbone included, the
    model loads from its store and predicts what the run folder predicted."""
    import shutil

    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from amflow.cli import main
    from amflow.evaluate.mlflow_model import load_predictor
    from amflow.evaluate.predict import Predictor
    from standins_train import moving_square
    from video_files import write_mp4

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    uri, infos = train_with_pretrained_backbone(tmp_path, seeds=(0, 1))
    client = MlflowClient(tracking_uri=uri)
    video = tmp_path / "clip.mp4"
    write_mp4(video, moving_square(1, 12, 32, np.random.default_rng(2)))
    run_dirs = [paths.run_dir(tmp_path / "results" / "tiny", "tiny", "frame", seed) for seed in (0, 1)]
    expected = [Predictor.from_run_dir(d).predict(video, 3) for d in run_dirs]
    configs = []
    for info in infos:
        with tracking.using_store(uri):
            configs.append(mlflow.pyfunc.load_model(f"runs:/{info['mlflow_run_id']}/model").model_config)
    assert configs[0] == configs[1] and not configs[0]["backbone_file"]  # no path of this machine
    backbone = paths.backbone_file(tmp_path / "results" / "tiny")
    assert configs[0]["backbone_sha256"] == io.file_digest(backbone)
    [store] = client.search_runs([client.get_experiment_by_name("amflow-backbones").experiment_id])
    assert configs[0]["backbone_uri"] == f"runs:/{store.info.run_id}/backbone/backbone.safetensors"

    shutil.rmtree(tmp_path / "results")  # the run folders and the backbone file
    for info, want in zip(infos, expected):
        got = load_predictor(f"runs:/{info['mlflow_run_id']}/model", tracking_uri=uri).predict(video, 3)
        assert [n for n, _ in got] == [n for n, _ in want]
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-6)
    # A local copy of the backbone still stands in for the artefact (--backbone), and is checked.
    capsys.readouterr()
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(other))
    assert main(["predict", str(video), "--model-uri", f"runs:/{infos[0]['mlflow_run_id']}/model",
                 "--tracking-uri", uri, "--backbone", str(other)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error:") and "other.safetensors" in line


def test_a_run_killed_before_its_first_checkpoint_is_marked_and_reused(sqlite_run, monkeypatch, capsys):
    """A kill leaves the MLflow run RUNNING with no epoch logged; the next attempt marks it and reuses it."""
    from mlflow.tracking import MlflowClient

    from amflow.train import training as R
    from amflow.train.trainer import Trainer

    root, uri, *_ = sqlite_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    kw = dict(dataset="tiny", method="frame", seed=2, data_dir=root / "data", results_dir=root / "results",
              progress=False)

    class Killed(BaseException):
        pass

    def die(self):
        raise Killed()

    with monkeypatch.context() as m:
        m.setattr(Trainer, "fit", die)                       # dies before the first checkpoint ...
        m.setattr(R, "_finish_quietly", lambda tracker, status: None)   # ... with no chance to close its run
        with pytest.raises(Killed):
            R.train_run(tiny_params(epochs=1), **kw)
    run_dir = paths.run_dir(root / "results", "tiny", "frame", 2)
    first = io.read_json(run_dir / tracking.RUN_FILE)["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(first).info.status == "RUNNING" and not (run_dir / paths.TRAIN_STATE).exists()
    capsys.readouterr()
    info = R.train_run(tiny_params(epochs=1), **kw)
    err = capsys.readouterr().err
    assert f"MLflow run {first} (frame-seed2) was left RUNNING" in err and "marked it KILLED" in err
    assert info["mlflow_run_id"] == first
    assert client.get_run(first).info.status == "FINISHED"
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert len(client.search_runs([exp_id], "attributes.run_name = 'frame-seed2'")) == 1


# `amflow train` on a sqlite store whose disk fills up at the first epoch's metrics: SQLite then refuses
# every new metric row ("database or disk is full"), through SQLAlchemy and MLflow as a real full disk does.
FULL_DISK = """
import sqlite3, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
from amflow.cli import main

@event.listens_for(Engine, "before_cursor_execute")
def full(conn, cursor, statement, parameters, context, executemany):
    if statement.lstrip().upper().startswith(("INSERT INTO METRICS", "INSERT INTO LATEST_METRICS")):
        raise sqlite3.OperationalError("database or disk is full")

sys.exit(main(sys.argv[1:]))
"""


def test_a_store_that_fills_up_stops_tracking_with_one_line_and_training_goes_on(tmp_path):
    from mlflow.tracking import MlflowClient

    make_tiny_dataset(tmp_path / "data")
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump(tiny_params(epochs=2).model_dump(mode="json")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = ["train", "--params", str(params), "--dataset", "tiny", "--method", "frame", "--seed", "0",
           "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "AMFLOW_TRACKING": "1", "PYTHONPATH": str(ROOT)}
    env.pop("AMFLOW_STOP_AFTER_EPOCH", None)
    out = subprocess.run([sys.executable, "-c", FULL_DISK, *cmd], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]                      # the training went on to its end
    about = [line for line in out.stderr.splitlines()
             if "disk is full" in line or line.startswith(("warning", "error"))]
    assert len(about) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    run_dir = paths.run_dir(tmp_path / "results" / "tiny", "tiny", "frame", 0)
    assert about[0].startswith(f"warning: {run_dir}: MLflow logging failed at epoch 1") and \
        "database or disk is full" in about[0] and "rerun the same `amflow train` command" in about[0]
    info = io.read_json(run_dir / paths.TRAIN_JSON)
    assert info["epochs"] == 2 and (run_dir / paths.CHECKPOINT).is_file()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(info["mlflow_run_id"]).info.status == "FAILED"  # ended, not left RUNNING
    # Space again: the same command logs what the store missed, without training again.
    again = subprocess.run([sys.executable, "-m", "amflow.cli", *cmd], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0 and "from epoch 2" in again.stderr, again.stderr[-3000:]
    run = client.get_run(info["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_top1")) == [1, 2]


def test_a_busy_store_is_retried_and_a_failing_one_loses_no_results(sqlite_run, monkeypatch, capsys):
    """"database is locked" at the end of training is retried; if it persists, train.json and the checkpoint
    are on disk, the error says so, and the same command then logs without training again."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from amflow.stages.train import log_model
    from amflow.train.training import train_run

    root, uri, *_ = sqlite_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    monkeypatch.setattr(tracking, "RETRY_BASE_S", 0.01)
    kw = dict(dataset="tiny", method="frame", seed=3, data_dir=root / "data", results_dir=root / "results",
              progress=False, log_model=log_model)
    real = MlflowClient.set_terminated
    calls = {"n": 0, "fail": 2}

    def locked(self, run_id, status=None, end_time=None):
        calls["n"] += 1
        if status == "FINISHED" and calls["fail"] > 0:
            calls["fail"] -= 1
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, status=status, end_time=end_time)

    monkeypatch.setattr(MlflowClient, "set_terminated", locked)
    info = train_run(tiny_params(epochs=1), **kw)
    assert capsys.readouterr().err.count("database is locked") == 2
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(info["mlflow_run_id"]).info.status == "FINISHED"

    # A store that stays locked: the training's results are on disk and the error names the way out.
    run_dir = paths.run_dir(root / "results", "tiny", "frame", 4)
    calls["fail"] = 10 ** 6
    with pytest.raises(AmflowError, match="results are saved.*rerun the same `amflow train`"):
        train_run(tiny_params(epochs=1), **{**kw, "seed": 4})
    saved = io.read_json(run_dir / paths.TRAIN_JSON)
    assert saved["status"] == "complete" and (run_dir / paths.CHECKPOINT).exists()
    run_id = saved["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and len(run.outputs.model_outputs) == 1   # marked; the model logged once
    calls["fail"] = 0
    again = train_run(tiny_params(epochs=1), **{**kw, "seed": 4})
    assert again["mlflow_run_id"] == run_id and again["history"] == saved["history"]   # logged, not retrained
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "final_val_top1" in run.data.metrics
    assert len(run.outputs.model_outputs) == 1


@pytest.mark.slow
def test_a_really_locked_sqlite_store_is_waited_for(tmp_path, monkeypatch, capsys):
    """Another process's write lock on the sqlite file (as on a busy shared filesystem) outlasts MLflow's own
    20 s wait at the end of a training: the logging retries until the lock goes, and the run is complete."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    from amflow.train.training import train_run

    make_tiny_dataset(tmp_path / "data")
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    holder = {}

    def lock_the_store(record):  # after the last epoch's checkpoint and logging, before the final logging
        con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        con.execute("BEGIN EXCLUSIVE")
        holder["timer"] = threading.Timer(25, lambda: (con.execute("COMMIT"), con.close()))
        holder["timer"].start()

    try:
        info = train_run(tiny_params(epochs=1), dataset="tiny", method="frame", seed=0, data_dir=tmp_path / "data",
                         results_dir=tmp_path / "results", progress=False, callbacks=[lock_the_store])
    finally:
        holder["timer"].join(timeout=120)
    assert "MLflow store busy" in capsys.readouterr().err          # it did have to retry
    run = MlflowClient(tracking_uri=f"sqlite:///{db}").get_run(info["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "final_val_top1" in run.data.metrics


class Only503(BaseHTTPRequestHandler):
    """A tracking server whose /health answers while its API fails (a proxy in front of a dead backend)."""

    api_calls = 0

    def _answer(self):
        if self.path.startswith("/health"):
            body, code = b"OK", 200
        else:
            type(self).api_calls += 1
            body, code = b"Service Unavailable", 503
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):  # quiet
        pass


def test_a_server_answering_503_stops_training_at_once_with_one_line(tmp_path, monkeypatch, capsys):
    from amflow.cli import main
    from amflow.train.training import write_params_yaml

    server = ThreadingHTTPServer(("127.0.0.1", 0), Only503)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    watchdog = threading.Timer(300, server.shutdown)  # stops itself even if the test hangs
    watchdog.start()
    try:
        make_tiny_dataset(tmp_path / "data")
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("AMFLOW_TRACKING", "1")
        params_file = tmp_path / "tiny.yaml"
        write_params_yaml(params_file, tiny_params())
        rc = main(["train", "--params", str(params_file), "--dataset", "tiny", "--method", "frame",
                   "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results")])
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error:"), err
    assert uri in err[0] and "HTTP 503" in err[0] and "no training was started" in err[0]
    assert Only503.api_calls == 1                                   # asked once, not retried for minutes
    run_dir = paths.run_dir(tmp_path / "results", "tiny", "frame", 0)
    assert not (run_dir / paths.TRAIN_STATE).exists() and not (run_dir / paths.TRAIN_LOG).exists()


def test_pretraining_is_a_tracked_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from amflow.stages.pretrain_images import generate_pretrain_images
    from amflow.params_io import validate
    from amflow.stages.pretrain_backbone import pretrain_backbone

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    params = validate({"name": "t", "datasets": {}, "table_datasets": [],
                       "pretrain_images": {"images": 200, "val_images": 100, "seed": 3, "workers": 1},
                       "backbone": {"model": "vit_tiny_patch16_224", "kwargs": {
                           "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}},
                       "pretrain": {"epochs": 2, "batch_size": 64, "lr": 3e-3, "min_gain_over_chance": 0.0}})
    images = paths.pretrain_images_dir(tmp_path / "data", params)
    generate_pretrain_images(params, images)
    out = paths.backbone_dir(tmp_path / "results")
    client = MlflowClient(tracking_uri=uri)
    for _ in range(2):                                    # a rerun replaces the run, never adds one
        pretrain_backbone(params, images, out, track=True, results_dir=tmp_path / "results")
        exp = client.get_experiment_by_name("amflow-t-pretrain_images")
        [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "pretrain-backbone" and run.info.status == "FINISHED"
    assert run.data.tags["amflow.stage"] == "pretrain_backbone" and run.data.params["pretrain.epochs"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
    metrics = io.read_json(out / paths.METRICS_JSON)
    assert run.data.metrics["mean_accuracy"] == pytest.approx(metrics["mean_accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"backbone.safetensors", "metrics.json"}
    assert run.inputs.dataset_inputs[0].dataset.name == "pretrain_images-train"


def test_unreachable_server_fails_before_training(tmp_path, monkeypatch):
    from amflow.train.training import train_run

    make_tiny_dataset(tmp_path / "data")
    uri = f"http://127.0.0.1:{free_port()}"           # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    with pytest.raises(AmflowError, match=uri.replace(".", r"\.") + ".*not reachable"):
        train_run(tiny_params(), dataset="tiny", method="frame", seed=0, data_dir=tmp_path / "data",
                  results_dir=tmp_path / "results", progress=False)
    run_dir = tmp_path / "results" / "tiny" / "frame" / "seed0"
    assert not (run_dir / paths.TRAIN_STATE).exists() and not (run_dir / paths.TRAIN_LOG).exists()


def test_tracking_switch_off_writes_nothing(tmp_path, monkeypatch):
    from amflow.train.training import train_run

    make_tiny_dataset(tmp_path / "data")
    monkeypatch.setenv("AMFLOW_TRACKING", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    info = train_run(tiny_params(epochs=1), dataset="tiny", method="frame", seed=0, data_dir=tmp_path / "data",
                     results_dir=tmp_path / "results", progress=False)
    assert info["mlflow_run_id"] is None
    assert not (tmp_path / "never.db").exists()
    assert not (tmp_path / "results" / "tiny" / "frame" / "seed0" / tracking.RUN_FILE).exists()


def test_uri_precedence_and_file_store_refusal(monkeypatch, tmp_path):
    params = tiny_params()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri(params) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    params.tracking.uri = "sqlite:///elsewhere.db"
    assert tracking.resolve_uri(params) == "sqlite:///elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.resolve_uri(params) == "http://example.invalid:5000"
    with pytest.raises(AmflowError, match="file store"):
        tracking.check_reachable("./mlruns")


def test_using_store_puts_the_process_wide_uri_back(monkeypatch, tmp_path):
    """Model logging points MLflow's global URI at a run's store; the variable that decides later runs'
    store (MLFLOW_TRACKING_URI) must be as before, set or not."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a.db'}")
    with tracking.using_store(f"sqlite:///{tmp_path / 'b.db'}"):
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'b.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking.using_store(f"sqlite:///{tmp_path / 'b.db'}"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_flatten_params():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": None})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "x", "e": "null"}


NEEDS_MLFLOW_CLI = pytest.mark.skipif(not MLFLOW.exists(), reason="mlflow CLI not installed beside the interpreter")


@contextlib.contextmanager
def mlflow_serving(args: list, folder: Path, port: int):
    """An MLflow server (`mlflow server` or `mlflow ui`) on 127.0.0.1:port, up (its /health answers) for
    the block, then stopped with its workers."""
    uri = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "w")
    server = subprocess.Popen([str(MLFLOW), *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow did not come up: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, 15)  # the server's own process group (it started its workers there)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()


@pytest.mark.slow
@NEEDS_MLFLOW_CLI
def test_against_a_real_mlflow_server(tmp_path, monkeypatch):
    args = ["server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server_artifacts")]
    with mlflow_serving(args, tmp_path, free_port()) as uri:
        make_tiny_dataset(tmp_path / "data")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("AMFLOW_TRACKING", "1")
        _, _, run_dir = train_and_evaluate(tmp_path)
        run = check_store(uri, run_dir, tmp_path / "data")
        # artefacts went through the server's proxy into its artifacts destination
        stored = [p for p in (tmp_path / "server_artifacts").rglob("metrics.json")]
        assert stored and run.info.run_id in str(stored[0])


@pytest.mark.slow
@NEEDS_MLFLOW_CLI
def test_the_readme_mlflow_ui_shows_the_runs(tmp_path, monkeypatch):
    """`mlflow ui --backend-store-uri sqlite:///mlflow.db` (README), in the folder of a tracked run, with
    --port added as a user would when 5000 is taken: the UI's API lists the run's experiment and run."""
    make_tiny_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    _, _, run_dir = train_and_evaluate(tmp_path)
    run_id = io.read_json(run_dir / tracking.RUN_FILE)["run_id"]
    with mlflow_serving(["ui", "--backend-store-uri", "sqlite:///mlflow.db"], tmp_path, free_port()) as uri:
        with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=30) as r:
            got = json.loads(r.read())["run"]
    assert got["info"]["run_id"] == run_id and got["info"]["status"] == "FINISHED"
    assert {m["key"] for m in got["data"]["metrics"]} >= {"train_loss", "test_top1"}


@pytest.mark.slow
@NEEDS_MLFLOW_CLI
def test_a_copied_tracking_store_serves_the_model_without_the_run_folder(tmp_path, monkeypatch):
    """The logged model is portable: a run tracked by an MLflow server (its store and artefacts in one
    folder) is copied to another folder, the original folder (run folder, backbone, store) removed, a
    server started on the copy, and the model from it predicts the same top-5 as `amflow predict --run`
    did on the original run folder."""
    import shutil

    from standins_train import moving_square
    from video_files import write_mp4

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    video = tmp_path / "clip.mp4"
    write_mp4(video, moving_square(1, 12, 32, np.random.default_rng(2)))
    args = ["server", "--backend-store-uri", "sqlite:///store.db", "--artifacts-destination", "artifacts"]
    with mlflow_serving(args, first, free_port()) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("AMFLOW_TRACKING", "1")
        _, [info] = train_with_pretrained_backbone(first)
    run_dir = paths.run_dir(first / "results" / "tiny", "tiny", "frame", 0)

    def predict(*how) -> list:
        out = subprocess.run([sys.executable, "-m", "amflow.cli", "predict", str(video), "--json", *how],
                             capture_output=True, text=True, env={**os.environ, "AMFLOW_TRACKING": "1"}, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)[0]["predictions"]

    expected = predict("--run", str(run_dir))
    assert len(expected) == 4  # the tiny dataset's classes (fewer than 5)
    second.mkdir()
    for name in ("store.db", "artifacts"):
        src = first / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, second / name)
    shutil.rmtree(first)
    with mlflow_serving(args, second, free_port()) as uri:
        got = predict("--model-uri", f"runs:/{info['mlflow_run_id']}/model", "--tracking-uri", uri)
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert np.allclose([p["probability"] for p in got], [p["probability"] for p in expected], atol=1e-6)
