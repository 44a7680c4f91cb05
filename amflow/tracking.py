"""MLflow tracking: one experiment per dataset, one run per (method, seed), shared by train and evaluate.

- Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``params.tracking.uri``, else
  ``sqlite:///<cwd>/mlflow.db``. For a sqlite store the artefacts go to ``mlartifacts/`` beside the
  database file (not wherever the process happens to run).
- Experiment ``f"{tracking.experiment_prefix}-{dataset}"``; run name ``f"{method}-seed{seed}"``.
- Training creates the run (or reopens the one recorded in the run folder's ``mlflow_run.json`` when it
  resumes) and logs params, tags and one batched call of metrics per epoch; evaluation reopens the same
  run from ``mlflow_run.json`` and logs the test metrics and artefacts.
- An http(s) server is probed (``/health``, short timeout) before anything else, so an unreachable
  server fails before training starts, with an :class:`AmflowError` naming the URI.
- ``AMFLOW_TRACKING=0`` switches tracking off (unit tests whose subject is not tracking).

Everything here talks to one explicit ``MlflowClient``, never to mlflow's global "active run", so
several runs in one process (sweeps, tests) cannot step on each other.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Optional

from amflow import io
from amflow.errors import AmflowError

SWITCH_ENV = "AMFLOW_TRACKING"
RUN_FILE = "mlflow_run.json"
MAX_PARAM_LEN = 6000      # MLflow 3 limit on a param value
BATCH_LIMIT = 100         # params per log_batch request


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def resolve_uri(params=None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and params is not None:
        uri = params.tracking.uri
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    return uri


def experiment_name(params, dataset: str) -> str:
    return f"{params.tracking.experiment_prefix}-{dataset}"


def run_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, if a tracking server does not answer; prepare a sqlite store's folder."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise AmflowError(
                f"MLflow tracking server {uri} is not reachable ({url}: {exc}); start it "
                f"(mlflow server --backend-store-uri sqlite:///mlflow.db ...), fix MLFLOW_TRACKING_URI / "
                f"tracking.uri, or set {SWITCH_ENV}=0 to train without tracking") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AmflowError(f"MLflow store {uri}: cannot create the folder {db.parent} ({exc}); "
                              f"fix the tracking URI or set {SWITCH_ENV}=0") from None
        _create_sqlite_store(uri, db)
    elif uri.startswith(("file:", "/", "./", "../")) or (":" not in uri and uri != "databricks"):
        raise AmflowError(f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 refuses; "
                          f"use sqlite:///path/to/mlflow.db or an http(s):// server")


def _create_sqlite_store(uri: str, db: Path) -> None:
    """Create a new sqlite store's tables once: parallel jobs (Snakemake, sweep workers) that all find
    no database would otherwise run MLflow's migrations at the same time and fail."""
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    with FileLock(str(db) + ".lock"):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys; lists and scalars become JSON strings (MLflow params are strings)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    text = data if isinstance(data, str) else json.dumps(data)
    out[key] = text[:MAX_PARAM_LEN]
    return out


def file_sha256(path: Path) -> Optional[str]:
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_state(cwd: Optional[Path] = None) -> dict[str, str]:
    """Commit and dirty flag of the code (the package's own checkout), if git knows them."""
    cwd = cwd or Path(__file__).resolve().parent
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index of the user's checkout.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5,
                                env=env)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit.stdout.strip(),
            "git_dirty": str(bool(dirty.stdout.strip())).lower()}


class NullTracker:
    """Tracking switched off: every call is accepted and ignored."""

    run_id: Optional[str] = None
    uri: Optional[str] = None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None: ...
    def log_epoch(self, record: dict) -> None: ...
    def sync_history(self, history: list[dict]) -> None: ...
    def log_artifacts(self, paths: Iterable[Path], artifact_path: Optional[str] = None) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_json(self, data: Any, artifact_file: str) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class Tracker:
    """One MLflow run, addressed by id through an explicit client."""

    EPOCH_KEYS = ("lr", "train_loss", "train_acc", "val_top1", "val_loss", "epoch_time", "clips_per_s",
                  "data_wait_frac")

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)

    # ------------------------------------------------------------------ opening a run
    @classmethod
    def open_for_training(cls, params, *, dataset: str, method: str, seed: int, run_dir: Path,
                          tags: Optional[dict] = None, parent_run_id: Optional[str] = None, resume: bool = False,
                          name: Optional[str] = None):
        """Create the run or, when ``resume`` (training continues a checkpoint), reopen the one this run
        folder recorded. A fresh training never reuses an old record: its params may differ. Rank 0 only.
        ``name`` replaces the run name ``<method>-seed<k>`` (a sweep's ``trial-<n>``)."""
        if not enabled():
            return NullTracker()
        uri = resolve_uri(params)
        check_reachable(uri)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run_file = Path(run_dir) / RUN_FILE
        run_id = None
        if resume and run_file.exists():
            rec = io.read_json(run_file)
            if rec.get("tracking_uri") == uri:
                try:
                    client.get_run(rec["run_id"])
                    run_id = rec["run_id"]
                except MlflowException:
                    run_id = None  # deleted from the store: start a new run
        all_tags = {"amflow.dataset": dataset, "amflow.method": method, "amflow.seed": str(seed),
                    "amflow.run_dir": str(Path(run_dir).resolve()), "stage": "train", **git_state(), **(tags or {})}
        if parent_run_id is None:
            parent_run_id = _active_parent(uri)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if run_id is None:
            exp_id = _experiment_id(client, experiment_name(params, dataset), uri)
            name = name or run_name(method, seed)
            run = client.create_run(exp_id, run_name=name, tags=all_tags)
            run_id = run.info.run_id
            io.write_json(run_file, {"tracking_uri": uri, "experiment_id": exp_id, "run_id": run_id,
                                     "experiment": experiment_name(params, dataset), "run_name": name})
        else:
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "stage", "train")
        return cls(uri, run_id)

    @classmethod
    def open_existing(cls, run_dir: Path, params=None):
        """Reopen the run recorded by training (evaluation); a NullTracker when off or never tracked."""
        if not enabled():
            return NullTracker()
        run_file = Path(run_dir) / RUN_FILE
        if not run_file.exists():
            return NullTracker()
        rec = io.read_json(run_file)
        uri = rec["tracking_uri"]
        check_reachable(uri)
        return cls(uri, rec["run_id"])

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH_LIMIT])

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def log_epoch(self, record: dict) -> None:
        """One batched request per epoch, step = epoch number (1-based)."""
        self.log_metrics({k: record[k] for k in self.EPOCH_KEYS if k in record}, step=int(record["epoch"]))

    def sync_history(self, history: list[dict]) -> None:
        """On resume: log the epochs the store lacks (a crash between checkpoint and logging loses none)."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
        for record in history:
            if int(record["epoch"]) not in logged:
                self.log_epoch(record)

    def log_artifacts(self, paths: Iterable[Path], artifact_path: Optional[str] = None) -> None:
        for p in paths:
            if Path(p).exists():
                self.client.log_artifact(self.run_id, str(p), artifact_path)

    def log_json(self, data: Any, artifact_file: str) -> None:
        """A JSON artefact from memory (so the file on disk can still be written last)."""
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=io._json_default) + "\n",
                             artifact_file)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _experiment_id(client, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # Keep artefacts beside the database instead of in the caller's working directory.
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another job created it between our lookup and our create (parallel Snakemake jobs).
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _active_parent(uri: str) -> Optional[str]:
    """A fluent ``mlflow.start_run()`` around us (a sweep) on the same store becomes our parent run."""
    try:
        import mlflow

        run = mlflow.active_run()
        if run is not None and mlflow.get_tracking_uri() == uri:
            return run.info.run_id
    except Exception:  # noqa: BLE001  (no active run machinery: no parent)
        return None
    return None


# --------------------------------------------------------------------------- sweeps
class SweepParent:
    """The parent MLflow run of one Optuna study; trials are nested under it (``parent_run_id``)."""

    def __init__(self, tracker: Optional[Tracker]):
        self.tracker = tracker
        self.run_id = tracker.run_id if tracker is not None else None

    def finish_sweep(self, best: dict, artifacts: Iterable[Path] = ()) -> None:
        """Record the best trial (metric ``best_value``, tags ``best.<param>``) and the study's files."""
        if self.tracker is None:
            return
        self.tracker.log_metrics({"best_value": best["value"], "best_trial": best["number"]})
        # Tags, not params: a resumed study may find a better trial later, and params are immutable.
        self.tracker.set_tags({f"best.{k}": json.dumps(v) if not isinstance(v, str) else v
                               for k, v in best.get("params", {}).items()})
        self.tracker.log_artifacts([Path(p) for p in artifacts], artifact_path="sweep")
        self.tracker.finish("FINISHED")


def open_sweep_parent(params, *, dataset: str, study_name: str, study=None, sweep_spec: Optional[dict] = None
                      ) -> SweepParent:
    """Create (or, when the study is resumed, reopen) the parent run ``sweep-<study>`` of a sweep."""
    if not enabled():
        return SweepParent(None)
    uri = resolve_uri(params)
    check_reachable(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment_id(client, experiment_name(params, dataset), uri)
    found = client.search_runs([exp_id], filter_string=f"tags.`amflow.sweep_study` = '{study_name}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {"stage": "sweep", "amflow.sweep_study": study_name, "amflow.dataset": dataset, **git_state()}
        run_id = client.create_run(exp_id, run_name=f"sweep-{study_name}", tags=tags).info.run_id
    tracker = Tracker(uri, run_id)
    extra = {"sweep.study": study_name}
    if study is not None:
        extra["sweep.sampler"] = type(study.sampler).__name__
        extra["sweep.pruner"] = type(study.pruner).__name__
    tracker.log_params({**flatten(sweep_spec or {}, "sweep."), **extra})
    return SweepParent(tracker)
