"""MLflow tracking, the store side: where the store is, checking and opening it (once per process),
retrying a busy one, and one opener for the run of any stage (:func:`open_run`). Each stage builds
what its run logs: its identity (:mod:`amflow.identity`, logged as the run's params), its metrics,
artefacts and model.

- Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``params.tracking.uri``, else
  ``sqlite:///<cwd>/mlflow.db``. For a sqlite store the artefacts go to ``mlartifacts/`` beside the
  database file (not wherever the process happens to run).
- Experiment ``f"{tracking.experiment_prefix}-{params.name}-{experiment}"``, ``experiment`` a dataset
  (or ``pretrain_images``), so two params files never share one. Every tag this project sets starts
  with ``amflow.``.
- A run is found again by its key (a run folder under the results folder, tag ``amflow.run_key``)
  and its identity's digest: a rerun with the same params reuses its MLflow run (resume, or an attempt
  that died before logging anything) or replaces it; a run with other params is a new run, and the
  old one stays as the record of what ran, tagged superseded (:func:`_reuse_or_replace`). A run left
  RUNNING by an attempt that died is marked KILLED when the next attempt starts.
- Training records its run id in the run folder (``mlflow_run.json``); evaluation reopens that run
  (:func:`reopen_run`) and logs the test metrics and artefacts.
- An http(s) server is probed before anything else (``/health`` and one API call, short timeouts, no
  retries), and MLflow's own HTTP retries are bounded (:data:`ENV_DEFAULTS`), so an unreachable or
  failing server stops the stage within seconds, with an :class:`AmflowError` naming the URI.
- Opening a run and the final logging retry, with a bound, on a store that is busy ("database is
  locked": sqlite on a shared filesystem); see :func:`with_retries`.
- ``AMFLOW_TRACKING=0`` switches tracking off: :func:`open_run` then returns a :class:`NullTracker`,
  which takes every call and does nothing, so a stage never asks whether tracking is on.

Everything here talks to one explicit ``MlflowClient`` per store, never to mlflow's global "active
run", so several runs in one process (sweeps, tests) cannot step on each other.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, TypeVar

from amflow import io, methods
from amflow.errors import AmflowError

SWITCH_ENV = "AMFLOW_TRACKING"
RUN_FILE = "mlflow_run.json"
MAX_PARAM_LEN = 6000      # MLflow 3 limit on a param value
BATCH_LIMIT = 100         # params per log_batch request
TAG = "amflow."           # the one namespace of this project's tags
SUPERSEDED = f"{TAG}superseded"  # "true" on a training run that a run with other params replaced
# MLflow's own HTTP retries default to 7 with backoff factor 2 (minutes against a failing server).
# These bound them to seconds, and keep MLflow's artefact progress bars out of log files; a value the
# user set in the environment wins.
ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
BUSY_MARKERS = ("database is locked", "database table is locked")
RETRY_ATTEMPTS = 8        # with the delays below: about a minute of waiting on a busy store
RETRY_BASE_S = 0.5
RETRY_MAX_S = 20.0

T = TypeVar("T")


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
    """``<prefix>-<params name>-<dataset>``: each params file has its own experiments."""
    return f"{params.tracking.experiment_prefix}-{params.name}-{dataset}"


def run_name(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def run_key(run_dir: Path, results_dir: Path) -> str:
    """What makes two trainings "the same run": the run folder, relative to the results folder when it
    lies inside (so a moved project keeps its keys), else absolute."""
    run_dir, results_dir = Path(run_dir).resolve(), Path(results_dir).resolve()
    try:
        return run_dir.relative_to(results_dir).as_posix()
    except ValueError:
        return run_dir.as_posix()


def _key_tag(key: str) -> str:
    # A hash: a folder name may hold quotes, which MLflow's search filter cannot escape.
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def set_env_defaults() -> None:
    for name, value in ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    _quiet_store_tracebacks()


class _DropStoreTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def _quiet_store_tracebacks() -> None:
    """MLflow's SQL store logs the whole traceback of a database error before raising it again; every
    caller here reports that error in one line of its own, so the copy is dropped (a full disk would
    otherwise log one traceback per call)."""
    logger = logging.getLogger("mlflow.store.db.utils")  # the module whose session wrapper logs them
    if not any(isinstance(f, _DropStoreTracebacks) for f in logger.filters):
        logger.addFilter(_DropStoreTracebacks())


def is_busy(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in BUSY_MARKERS)


def describe(exc: BaseException) -> str:
    """``Type: first line`` of an error (MLflow's messages go on with the SQL or the HTTP body)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def with_retries(fn: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS) -> T:
    """``fn()``, retried with exponential back-off (and jitter, so parallel jobs spread out) while the
    store answers "database is locked"; any other error, or the last attempt's, propagates."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001  (MlflowException or SQLAlchemy's OperationalError)
            if attempt == attempts or not is_busy(exc):
                raise
            delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * (1 + random.random())
            print(f"MLflow store busy while {what} (attempt {attempt}/{attempts}: database is locked); "
                  f"retrying in {delay:.1f} s", file=sys.stderr)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _probe(url: str, timeout_s: float, data: Optional[bytes] = None) -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, if a tracking server does not answer; prepare a sqlite store's folder.

    A server is asked twice without retries: ``/health``, and one cheap API call (a server whose
    health check answers while its API fails, say behind a proxy returning 503, fails here rather
    than in MLflow's retry loop)."""
    set_env_defaults()
    if uri.startswith(("http://", "https://")):
        fix = (f"start it (mlflow server --backend-store-uri ...), fix MLFLOW_TRACKING_URI / tracking.uri, "
               f"or set {SWITCH_ENV}=0 to run without tracking")
        base = uri.rstrip("/")
        for url, data in ((f"{base}/health", None),
                          (f"{base}/api/2.0/mlflow/experiments/search", json.dumps({"max_results": 1}).encode())):
            try:
                status = _probe(url, timeout_s, data)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                raise AmflowError(f"MLflow tracking server {uri} is not reachable ({url}: {exc}); {fix}") from None
            if status != 200:
                raise AmflowError(f"MLflow tracking server {uri} answers HTTP {status} at {url} (no training "
                                  f"was started); {fix}")
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
        with_retries(lambda: MlflowClient(tracking_uri=uri).search_experiments(max_results=1),
                     f"opening {uri}")


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
    return io.file_digest(path)


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
    # mlflow.source.git.commit is MLflow's own tag (its UI shows it); the rest is ours.
    return {"mlflow.source.git.commit": commit.stdout.strip(),
            f"{TAG}git_dirty": str(bool(dirty.stdout.strip())).lower()}


class Store(NamedTuple):
    uri: str
    client: Any  # an MlflowClient on ``uri``


@functools.lru_cache(maxsize=None)
def _open_store(uri: str) -> Store:
    from mlflow.tracking import MlflowClient

    check_reachable(uri)
    return Store(uri, MlflowClient(tracking_uri=uri))


def open_store(params=None, uri: Optional[str] = None) -> Store:
    """The tracking store (``uri``, else :func:`resolve_uri`), checked and opened once per process: every
    run of the process (a sweep's trials, evaluation after training) talks to it through one client."""
    return _open_store(uri or resolve_uri(params))


class NullTracker:
    """Tracking switched off: every call is accepted and ignored (the one "off" of this module)."""

    run_id: Optional[str] = None
    uri: Optional[str] = None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None: ...
    def log_epoch(self, record: dict) -> None: ...
    def sync_history(self, history: list[dict]) -> None: ...
    def log_artifacts(self, paths: Iterable[Path], artifact_path: Optional[str] = None) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_json(self, data: Any, artifact_file: str) -> None: ...
    def log_dataset(self, table, *, name: str, source: str, context: str) -> None: ...
    def log_model(self, flavor, name: str, **kwargs) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class Tracker:
    """One MLflow run, addressed by id through the store's client."""

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id
        self.client = open_store(uri=uri).client

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
        """One batched request per epoch: every number of the trainer's record, step = its epoch (1-based)."""
        self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

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
        """A JSON artefact from memory."""
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=io._json_default) + "\n",
                             artifact_file)

    def log_dataset(self, table, *, name: str, source: str, context: str) -> None:
        """Record a table (a pandas DataFrame, e.g. the frame manifest) as the run's dataset input, with
        MLflow's digest, schema and profile of it; ``context`` is MLflow's "training", "evaluation"..."""
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag

        with warnings.catch_warnings():
            # A local path matches MLflow's local-file source under two registrations; either is right.
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            ds = mlflow.data.from_pandas(table, source=source, name=name)
        entity = Dataset(**ds.to_dict())
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(entity, tags=[
            InputTag(key="mlflow.data.context", value=context)])])

    def log_model(self, flavor, name: str, **kwargs):
        """``Model.log`` of ``flavor`` into this run: an MLflow 3 logged model in the run's experiment,
        an output of the run (``runs:/<run id>/<name>``, ``models:/<model id>``).

        The logged model is created here, through this run's client, so that it lands in the run's
        experiment; the rest of model logging only has MLflow's process-wide tracking URI, pointed at
        this run's store for the call."""
        from mlflow.models import Model

        run = self.client.get_run(self.run_id)
        model = self.client.create_logged_model(run.info.experiment_id, name=name, source_run_id=self.run_id,
                                                params=run.data.params)
        with using_store(self.uri):
            return Model.log(artifact_path=None, name=name, flavor=flavor, run_id=self.run_id,
                             model_id=model.model_id, **kwargs)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for a block (for the MLflow APIs that have no
    client form), then put it back, with the ``MLFLOW_TRACKING_URI`` variable that it also sets."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _recorded_run(run_dir: Path, uri: str) -> Optional[str]:
    """The run id this folder recorded at its last start, if it was on the same store."""
    rec = io.read_json_record(Path(run_dir) / RUN_FILE)
    if rec is None:
        return None
    return rec.get("run_id") if rec.get("tracking_uri") == uri else None


def _reuse_or_replace(client, exp_id: str, tags: dict, *, recorded: Optional[str], resume: bool,
                      name: str) -> str:
    """The run id to train into: an existing run of the same key and params when it can continue, else a
    new one. A run is a record of what ran:

    - a run of the key with the same params digest continues when this attempt resumes its state, or
      when it ended before logging anything of its work (no epoch, not finished); one that cannot
      continue (an earlier attempt, say trained from scratch again after a crash, or a finished run of a
      stage that logs once) is the same record redone: it is replaced
      (soft-deleted; ``mlflow gc`` purges, the UI can restore);
    - a run of the key with other params stays, with its model, tagged ``amflow.superseded=true`` and
      ``amflow.superseded_by=<the new run's id>`` (every training run carries ``amflow.superseded``, so
      the UI's filter ``tags.amflow.superseded = 'false'`` shows the current runs);
    - a superseded run is history: never continued, never deleted.

    A run left RUNNING by an attempt that died is marked KILLED."""
    from mlflow.entities import ViewType

    key_tag, digest = tags[f"{TAG}run_key"], tags[f"{TAG}params_digest"]
    found = client.search_runs([exp_id], filter_string=f"tags.`{TAG}run_key` = '{key_tag}'",
                               run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time DESC"])
    found.sort(key=lambda r: r.info.run_id != recorded)  # the recorded run first
    reuse, replaced, superseded = None, [], []
    for run in found:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
            print(f"MLflow run {run.info.run_id} ({run.info.run_name}) was left RUNNING by an attempt that ended "
                  f"without closing it; marked it KILLED", file=sys.stderr)
        if run.data.tags.get(SUPERSEDED) == "true":
            continue
        if run.data.tags.get(f"{TAG}params_digest") != digest:
            superseded.append(run)
        elif reuse is None and (resume or (run.info.status != "FINISHED" and "train_loss" not in run.data.metrics)):
            reuse = run
        else:
            replaced.append(run)
    for run in replaced:
        client.delete_run(run.info.run_id)
        print(f"MLflow run {run.info.run_id} ({run.info.run_name}): replaced by this training of the same params "
              f"(deleted; `mlflow runs restore --run-id {run.info.run_id}` brings it back)", file=sys.stderr)
    if reuse is None:
        run_id = client.create_run(exp_id, run_name=name, tags={**tags, SUPERSEDED: "false"}).info.run_id
    else:
        run_id = reuse.info.run_id
        client.update_run(run_id, status="RUNNING", name=name)
        for k, v in {**tags, SUPERSEDED: "false"}.items():
            if reuse.data.tags.get(k) != v:
                client.set_tag(run_id, k, v)
    for run in superseded:
        client.set_tag(run.info.run_id, SUPERSEDED, "true")
        client.set_tag(run.info.run_id, f"{TAG}superseded_by", run_id)
        print(f"MLflow run {run.info.run_id} ({run.info.run_name}): superseded by run {run_id}, trained with other "
              f"params (kept with its model, tagged {SUPERSEDED}=true)", file=sys.stderr)
    return run_id


def open_run(params, identity, *, experiment: str, key: str, name: str, tags: Optional[dict] = None,
             record: Optional[Path] = None, resume: bool = False, parent_run_id: Optional[str] = None):
    """The MLflow run of one run of a stage, with the params of its ``identity``
    (:mod:`amflow.identity`) logged; a :class:`NullTracker` when tracking is off.

    The run is in the experiment ``<prefix>-<params name>-<experiment>`` and is found again by ``key``
    (what makes two attempts "the same run": a run folder, say) and the identity's digest
    (:func:`_reuse_or_replace`: the same params continue or replace it, other params supersede it).
    ``record``: a folder where the run id is written (``mlflow_run.json``, which evaluation reopens with
    :func:`reopen_run`) and looked for first; ``resume``: the attempt continues an earlier one's state;
    ``parent_run_id``: nest the run (default: a fluent ``mlflow.start_run()`` around us, a sweep's)."""
    if not enabled():
        return NullTracker()
    store = open_store(params)
    exp_name = experiment_name(params, experiment)
    exp_id = with_retries(lambda: _experiment_id(store.client, exp_name, store.uri),
                          f"opening the MLflow experiment {exp_name}")
    all_tags = {f"{TAG}stage": identity.stage, **{f"{TAG}{k}": str(v) for k, v in identity.names.items()},
                f"{TAG}params_name": params.name, f"{TAG}run_key": _key_tag(key),
                f"{TAG}params_digest": identity.digest, **git_state(), **(tags or {})}
    parent_run_id = parent_run_id or _active_parent(store.uri)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id

    def start() -> str:
        recorded = _recorded_run(record, store.uri) if record is not None else None
        run_id = _reuse_or_replace(store.client, exp_id, all_tags, recorded=recorded, resume=resume, name=name)
        if record is not None:
            io.write_json(Path(record) / RUN_FILE, {"tracking_uri": store.uri, "experiment_id": exp_id,
                                                    "run_id": run_id, "experiment": exp_name, "run_name": name})
        return run_id

    tracker = Tracker(store.uri, with_retries(start, f"opening the MLflow run {name} ({key})"))
    logged = {**flatten(identity.params), **flatten(identity.names, "run."), **flatten(identity.extra),
              "params_name": params.name}
    with_retries(lambda: tracker.log_params(logged), f"logging the params of the MLflow run {name} ({key})")
    return tracker


def reopen_run(run_dir: Path):
    """The MLflow run that training recorded in ``run_dir`` (evaluation logs into it); a NullTracker when
    tracking is off or the run was not tracked."""
    if not enabled():
        return NullTracker()
    rec = io.read_json_record(Path(run_dir) / RUN_FILE)
    if rec is None:
        return NullTracker()
    return Tracker(rec["tracking_uri"], rec["run_id"])


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


# --------------------------------------------------------------------------- frozen backbones
BACKBONE_SHA = f"{TAG}backbone_sha256"
BACKBONE_ARTIFACT_DIR = "backbone"


def backbone_artifact(client, uri: str, experiment_prefix: str, weights: Path) -> dict[str, str]:
    """The frozen backbone file as an MLflow artefact, logged once per content: the run
    ``backbone-<sha256[:12]>`` of the experiment ``<prefix>-backbones``, found again by its tag
    ``amflow.backbone_sha256``. Returns the model config that refers to it: ``backbone_uri``
    (``runs:/<id>/backbone/<file name>``) and ``backbone_sha256``, so that a logged model carries no path
    of the machine that trained it, and every model of every run shares one copy of a 340 MB backbone."""
    weights = Path(weights)
    sha = io.file_digest(weights)
    name = f"{experiment_prefix}-backbones"

    def find() -> Optional[str]:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return None
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{BACKBONE_SHA}` = '{sha}' and "
                                  f"attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"],
                                  max_results=1)
        return runs[0].info.run_id if runs else None

    def log() -> str:
        run_id = find()
        if run_id is None:
            exp_id = _experiment_id(client, name, uri)
            run_id = client.create_run(exp_id, run_name=f"backbone-{sha[:12]}", tags={
                BACKBONE_SHA: sha, f"{TAG}stage": "backbone", f"{TAG}backbone_file": weights.name}).info.run_id
            client.log_artifact(run_id, str(weights), BACKBONE_ARTIFACT_DIR)
            client.set_terminated(run_id, status="FINISHED")  # complete: only now does find() see it
        return run_id

    lock = contextlib.nullcontext()
    if uri.startswith("sqlite:///"):  # parallel jobs on one machine: one copy, not one each
        from filelock import FileLock

        lock = FileLock(uri[len("sqlite:///"):] + ".lock")  # the store's lock (see _create_sqlite_store)
    with lock:
        run_id = with_retries(log, f"logging the backbone {weights}")
    return {"backbone_uri": f"runs:/{run_id}/{BACKBONE_ARTIFACT_DIR}/{weights.name}", "backbone_sha256": sha}
