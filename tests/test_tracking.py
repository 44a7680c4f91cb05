"""MLflow tracking of real (tiny) runs: sqlite store, a real ``mlflow server``, resume, failing fast.

The runs use the real stage code (``train_run`` / ``evaluate_run``) with a tiny frame cache and a
2-block random-weight ViT, method ``frame`` (the cheapest; tracking does not depend on the method).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from amflow import io, paths, tracking
from amflow.errors import AmflowError
from standins_train import make_tiny_dataset, tiny_params

torch.set_num_threads(1)
MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_and_evaluate(root: Path, method: str = "frame", **train):
    from amflow.evaluate.run import evaluate_run
    from amflow.train.run import train_run

    params = tiny_params(epochs=2, **train)
    kw = dict(dataset="tiny", method=method, seed=0, data_dir=root / "data", results_dir=root / "results")
    info = train_run(params, progress=False, **kw)
    metrics = evaluate_run(params, progress=False, **kw)
    return info, metrics, root / "results" / "tiny" / method / "seed0"


def check_store(uri: str, run_dir: Path, data_dir: Path, epochs: int = 2):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    rec = io.read_json(run_dir / tracking.RUN_FILE)
    exp = client.get_experiment_by_name("amflow-tiny")
    assert exp is not None and rec["experiment_id"] == exp.experiment_id
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'frame-seed0'")
    assert [r.info.run_id for r in runs] == [rec["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    # params: the flattened resolved params plus the run's own
    assert run.data.params["train.epochs"] == "2" and run.data.params["run.method"] == "frame"
    assert run.data.params["backbone.kwargs.depth"] == "2"
    # one value per epoch, steps 1..E, for every per-epoch metric
    for key in ("train_loss", "val_top1", "lr", "clips_per_s"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, epochs + 1)), key
    assert 0.0 <= run.data.metrics["test_top1"] <= 1.0 and "test_mean_class_acc" in run.data.metrics
    tags = run.data.tags
    assert tags["stage"] == "evaluate" and tags["amflow.method"] == "frame"
    assert tags["data_manifest_sha256"] == tracking.file_sha256(paths.frames_dir(data_dir, paths.dataset_key(tiny_params(), "tiny")) / "manifest.csv")
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
    assert (root / "mlartifacts" / "amflow-tiny" / run.info.run_id).is_dir()


def test_resume_reuses_the_same_run(sqlite_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    from amflow.train.run import train_run

    root, uri, *_ = sqlite_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    params = tiny_params(epochs=3)
    kw = dict(dataset="tiny", method="frame", seed=1, data_dir=root / "data", results_dir=root / "results",
              progress=False)
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
    names = [r.info.run_name for r in client.search_runs([client.get_experiment_by_name("amflow-tiny").experiment_id])]
    assert names.count("frame-seed1") == 1
    # Deleting the checkpoint means training afresh (maybe with other params): a new MLflow run, not the old one.
    (run_dir / "checkpoint.pt").unlink()
    again = train_run(tiny_params(epochs=1), **kw)
    assert again["mlflow_run_id"] != run_id
    assert client.get_run(again["mlflow_run_id"]).data.params["train.epochs"] == "1"


class Pruned(Exception):
    pass


def test_sweep_parent_nests_trials_and_a_stopping_callback_is_not_a_failure(sqlite_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    from amflow.train.run import train_run

    root, uri, *_ = sqlite_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    params = tiny_params(epochs=3)
    parent = tracking.open_sweep_parent(params, dataset="tiny", study_name="study-x", sweep_spec={"trials": 2})
    assert parent.run_id and tracking.open_sweep_parent(params, dataset="tiny", study_name="study-x").run_id \
        == parent.run_id                                             # a resumed study reopens its parent

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
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "train.json").exists()
    parent.finish_sweep({"number": 0, "value": 0.5, "params": {"train.lr": 0.01}}, [run_dir / "train_log.csv"])
    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["best_value"] == 0.5
    assert run.data.tags["best.train.lr"] == "0.01" and run.data.params["sweep.trials"] == "2"
    assert [a.path for a in client.list_artifacts(parent.run_id, "sweep")] == ["sweep/train_log.csv"]


def test_unreachable_server_fails_before_training(tmp_path, monkeypatch):
    from amflow.train.run import train_run

    make_tiny_dataset(tmp_path / "data")
    uri = f"http://127.0.0.1:{free_port()}"           # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    t0 = time.perf_counter()
    with pytest.raises(AmflowError, match=uri.replace(".", r"\.")):
        train_run(tiny_params(), dataset="tiny", method="frame", seed=0, data_dir=tmp_path / "data",
                  results_dir=tmp_path / "results", progress=False)
    assert time.perf_counter() - t0 < 30
    run_dir = tmp_path / "results" / "tiny" / "frame" / "seed0"
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "train_log.csv").exists()


def test_tracking_switch_off_writes_nothing(tmp_path, monkeypatch):
    from amflow.train.run import train_run

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


def test_flatten_params():
    flat = tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": None})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "x", "e": "null"}


@pytest.mark.slow
@pytest.mark.skipif(not MLFLOW.exists(), reason="mlflow CLI not installed beside the interpreter")
def test_against_a_real_mlflow_server(tmp_path, monkeypatch):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server_artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
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
                pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        make_tiny_dataset(tmp_path / "data")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("AMFLOW_TRACKING", "1")
        _, _, run_dir = train_and_evaluate(tmp_path)
        run = check_store(uri, run_dir, tmp_path / "data")
        # artefacts went through the server's proxy into its artifacts destination
        stored = [p for p in (tmp_path / "server_artifacts").rglob("metrics.json")]
        assert stored and run.info.run_id in str(stored[0])
    finally:
        os.killpg(server.pid, 15)  # the server's own process group (it started its workers there)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()
