"""``amflow sweep``: an Optuna study over the adapter's hyperparameters.

- TPE sampler, seeded for each new trial from the sweep's ``seed`` and the number of trials the study
  already holds (:func:`sampler_seed`): the same study history gives the same next point, and a rerun
  after a kill, or a second worker, never replays the random start-up points of an earlier run.
- Median or Hyperband pruner on the per-epoch validation top-1 the trainer reports.
- Storage: SQLite under the sweep folder by default, ``journal:PATH`` for a journal file, or an RDB URL
  (``postgresql://...``) shared across machines. ``--workers N`` starts N processes on one storage.
- Exactly the requested number of trials run to an end (complete, pruned, or failed with an error): a
  worker claims a trial only under a lock (a file lock for local storages, a PostgreSQL advisory lock
  otherwise) after counting the ended and running ones. A trial that raises is recorded FAIL with its
  error (user attr ``error``) and the sweep goes on. Trials left RUNNING by a killed sweep are marked
  failed when the sweep is rerun, and their parameters are queued again (user attr ``requeued_from``),
  so none is lost and none is run twice.
- Each trial is an MLflow run ``trial-<n>`` nested under one parent run per study (its id is the
  trial's user attr ``mlflow_run_id``) with its params and per-epoch metrics, and no model; the parent
  gets the best value and params. The best trial's model is logged once, into its run, and the other
  ended trials' checkpoints are deleted (:func:`keep_the_best`). The best trial is exported as a
  complete params file (``best.yaml``) with the base file's training budget: the sweep's ``fixed``
  keys (a shortened budget) are left out, the tuned values kept.
"""
from __future__ import annotations

import contextlib
import json
import sys
import warnings
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import optuna
import sqlalchemy
import torch
import yaml
from filelock import FileLock
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from amflow import identity, io, parallel, paths, tracking
from amflow.errors import AmflowError
from amflow.params_io import load_params, parse_override, resolve_raw, set_source, validate
from amflow.runs import run_paths
from amflow.sweep.space import (SweepSpec, check_space, decode, load_sweep_spec, suggest, trial_params_data,
                                with_values)
from amflow.train.training import train_run

FINISHED = ("COMPLETE", "PRUNED")
ERROR_ATTR = "error"          # user attr of a trial that raised: its error, one line
RUN_ID_ATTR = "mlflow_run_id"  # user attr: the trial's MLflow run
REQUEUED_ATTR = "requeued_from"  # user attr of a trial queued again: the interrupted trial's number


# --------------------------------------------------------------------------- storage and locking
def storage_url(arg: Optional[str], folder: Path) -> str:
    return arg or f"sqlite:///{(folder / paths.SWEEP_STUDY_DB).resolve()}"


def open_storage(url: str):
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    # sqlite waits for the lock instead of failing when several workers write at once.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


@contextlib.contextmanager
def claim_lock(url: str, folder: Path, study_name: str) -> Iterator[None]:
    """Serialise 'count trials, then ask for one' across every worker of the study."""
    if url.startswith(("sqlite", "journal:")):
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f".{study_name}.claim.lock")):
            yield
        return
    key = zlib.crc32(study_name.encode())  # one advisory lock per study, across machines
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    engine.dispose()


def make_pruner(spec: SweepSpec):
    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def sampler_seed(seed: int, trials: int) -> int:
    """The sampler's seed for the next trial of a study that holds ``trials`` trials."""
    return int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def make_sampler(spec: SweepSpec, trials: int):
    return optuna.samplers.TPESampler(seed=sampler_seed(spec.seed, trials))


def load_study(url: str, study_name: str, spec: SweepSpec):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=study_name, storage=open_storage(url), direction="maximize",
                               sampler=make_sampler(spec, 0), pruner=make_pruner(spec), load_if_exists=True)


def requeue_interrupted(study) -> int:
    """Trials left RUNNING by a killed sweep: mark them failed and queue their parameters again.

    Optuna's own requeue (heartbeats with ``RetryHeartbeatStaleTrialCallback``) is not used: it
    records heartbeats only inside ``study.optimize()``, which asks for its trial itself, so the claim
    lock could no longer cover "count, then ask" and parallel workers would overshoot the requested
    trial count; ``JournalStorage`` has no heartbeat; and a rerun would wait out the grace period
    before the interrupted trial runs again. A rerun therefore expects the killed sweep's workers gone.
    """
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={REQUEUED_ATTR: t.number}, skip_if_exists=False)
        n += 1
    return n


def ended(t) -> bool:
    """A trial that used up one of the requested trials: complete, pruned, or failed with an error
    (an interrupted trial failed without one, and its requeued twin takes its place)."""
    return t.state.name in FINISHED or (t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs)


def counts(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# --------------------------------------------------------------------------- one worker
class _Pruned(Exception):
    pass


def run_trial(trial, ctx: dict) -> float:
    """Train one configuration; report per-epoch val top-1 to the pruner."""
    spec: SweepSpec = ctx["spec"]
    values = suggest(trial, spec)
    params = validate(trial_params_data(ctx["base"], spec, values), f"{ctx['params_file']} (trial {trial.number})")
    run_dir = paths.sweep_trial_dir(ctx["folder"], trial.number)
    best = {"value": float("-inf")}

    def record_run_id() -> None:
        run_file = run_dir / tracking.RUN_FILE
        if RUN_ID_ATTR not in trial.user_attrs and run_file.exists():
            trial.set_user_attr(RUN_ID_ATTR, io.read_json(run_file)["run_id"])

    def report(record: dict) -> None:
        record_run_id()  # at the first epoch already, so an interrupted trial names its run too
        value = float(record[spec.metric])
        best["value"] = max(best["value"], value)
        trial.report(value, int(record["epoch"]))
        if trial.should_prune():
            raise _Pruned()

    try:
        train_run(params, dataset=ctx["dataset"], method=ctx["method"], seed=ctx["seed"],
                  data_dir=Path(ctx["data_dir"]), results_dir=Path(ctx["results_dir"]), run_dir=run_dir,
                  callbacks=[report], parent_run_id=ctx.get("parent_run_id"), run_name=f"trial-{trial.number}",
                  tags={"amflow.sweep": ctx["study_name"], "amflow.trial": str(trial.number)})
    except _Pruned:
        raise optuna.TrialPruned() from None
    finally:
        record_run_id()
    return best["value"]


def worker(ctx: dict) -> int:
    """Claim and run trials until the study holds the requested number of ended trials."""
    if ctx.get("threads"):
        torch.set_num_threads(int(ctx["threads"]))
    spec: SweepSpec = ctx["spec"]
    study = load_study(ctx["storage"], ctx["study_name"], spec)
    ran = 0
    while True:
        with claim_lock(ctx["storage"], Path(ctx["folder"]), ctx["study_name"]):
            trials = study.get_trials(deepcopy=False)
            if sum(ended(t) or t.state == TrialState.RUNNING for t in trials) >= ctx["trials"]:
                return ran
            # Under the claim lock, so every trial of the study is asked at another count.
            study.sampler = make_sampler(spec, len(trials))
            trial = study.ask()  # takes a queued (WAITING) trial first
        try:
            value = run_trial(trial, ctx)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number}: pruned", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 -- one failed configuration must not end the sweep
            error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
            trial.set_user_attr(ERROR_ATTR, error)
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number}: FAILED ({error}); the sweep goes on", file=sys.stderr)
        else:
            study.tell(trial, value)
            print(f"trial {trial.number}: {spec.metric} {value:.4f}", file=sys.stderr)
        ran += 1


# --------------------------------------------------------------------------- export
def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _dotted(data: dict, key: str):
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return "(schema default)"
        data = data[part]
    return data


def export_best(study, spec: SweepSpec, ctx: dict, output: Path) -> dict:
    """The best trial as a params file: the base (with ``--set``) and the tuned values, but not the
    sweep's ``fixed`` keys: those shortened every trial, and the file is meant for full runs."""
    best = study.best_trial
    values = decode(spec, best.params)
    data = with_values(ctx["base"], values)
    data["name"] = f"{data.get('name', 'params')}-best-{ctx['method']}"
    validate(data, str(output))  # what we write must load
    changed = {**dict(ctx["overrides"]), **values}
    dvc_args = " ".join(f"-S '{ctx['params_file']}:{k}={_flow(v)}'" for k, v in changed.items())
    header = [f"# Best trial {best.number} of study '{ctx['study_name']}': {spec.metric} = {best.value:.4f}",
              f"# Use: snakemake --cores 8 results/table1.csv --configfile {output}",
              f"#  or: dvc exp run {dvc_args}"]
    header += [f"# The sweep trained with {k}={_flow(v)} ({ctx['space_file']} 'fixed'); this file keeps "
               f"{ctx['params_file']}'s {_flow(_dotted(ctx['base'], k))}" for k, v in spec.fixed.items()]
    io.write_text(output, "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False))
    return {"number": best.number, "value": best.value, "params": values}


def open_parent(params, *, dataset: str, method: str, study_name: str, study, spec: dict):
    """The parent MLflow run ``sweep-<study>`` of a study (trials nest under it with ``parent_run_id``);
    a resumed study with the same search reopens it."""
    tracker = tracking.open_run(params, identity.sweep(params, dataset, method, study_name, spec),
                                experiment=dataset, key=f"sweep/{study_name}", name=f"sweep-{study_name}",
                                resume=True)
    tracking.with_retries(lambda: tracker.log_params({
        "sweep.trials": str(spec.get("trials")), "sweep.study": study_name,
        "sweep.sampler": type(study.sampler).__name__, "sweep.pruner": type(study.pruner).__name__}),
        f"logging the params of the sweep {study_name}")
    return tracker


def finish_parent(tracker, best: dict, artifacts: Iterable[Path] = ()) -> None:
    """Record the best trial (metric ``best_value``, tags ``amflow.best.<param>`` and ``amflow.best_model``)
    and the study's files in the parent run, and close it."""
    tracker.log_metrics({"best_value": best["value"], "best_trial": best["number"]})
    # Tags, not params: a resumed study may find a better trial later, and params are immutable.
    tracker.set_tags({f"{tracking.TAG}best.{k}": v if isinstance(v, str) else json.dumps(v)
                      for k, v in best.get("params", {}).items()})
    if best.get("model_uri"):  # the best trial's model, the one model of the sweep
        tracker.set_tags({f"{tracking.TAG}best_model": best["model_uri"]})
    tracker.log_artifacts([Path(p) for p in artifacts], artifact_path="sweep")
    tracker.finish("FINISHED")


def keep_the_best(study, ctx: dict, params) -> Optional[str]:
    """The sweep's one model: the best trial's, logged into its MLflow run (once: a resumed sweep with
    the same best logs nothing); the checkpoints of the other ended trials are deleted (a trial still
    running in another process keeps its own). Returns the model's URI (None without tracking)."""
    from amflow.evaluate.mlflow_model import log_run_model  # imports mlflow's model code

    best = study.best_trial
    uri = None
    run_id = best.user_attrs.get(RUN_ID_ATTR)
    best_dir = paths.sweep_trial_dir(ctx["folder"], best.number)
    if run_id and tracking.enabled():
        weights = run_paths(params, ctx["dataset"], ctx["method"], ctx["seed"], Path(ctx["data_dir"]),
                            Path(ctx["results_dir"])).backbone_weights
        tracker = tracking.Tracker(tracking.resolve_uri(params), run_id)
        uri = tracking.with_retries(lambda: log_run_model(tracker, params_yaml=best_dir / paths.PARAMS_YAML,
                                                          checkpoint=best_dir / paths.CHECKPOINT, backbone=weights),
                                    f"logging the model of the best trial {best.number}")
    for t in study.get_trials(deepcopy=False):
        if t.number != best.number and t.state != TrialState.RUNNING and t.state != TrialState.WAITING:
            for name in (paths.CHECKPOINT, "checkpoint.stale.pt"):
                (paths.sweep_trial_dir(ctx["folder"], t.number) / name).unlink(missing_ok=True)
    return uri


def save_plots(study, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    written = []
    for name, fn in (("optimization_history.png", ovm.plot_optimization_history),
                     ("param_importances.png", ovm.plot_param_importances)):
        try:
            ax = fn(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need 2+ completed trials
            print(f"skipped {name}: {exc}", file=sys.stderr)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.tight_layout()
        io.write_png(fig, folder / name, dpi=120)
        plt.close(fig)
        written.append(folder / name)
    return written


# --------------------------------------------------------------------------- entry point
def run_sweep(args) -> dict:
    params_file, space_file = str(args.params), str(args.space)
    items = getattr(args, "set", None) or []
    overrides = [parse_override(item) for item in items]
    base = with_values(resolve_raw(params_file), dict(overrides))
    base_params = load_params(params_file, with_values({}, dict(overrides)) or None, set_source(items))
    spec = load_sweep_spec(space_file)
    if args.trials is not None:
        spec.trials = args.trials
    check_space(base, spec, dataset=args.dataset, method=args.method, space_file=space_file, params_file=params_file)
    folder = paths.sweep_dir(args.results_dir, args.dataset, args.method)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(args.storage, folder)
    study_name = args.study_name or f"{base_params.name}-{args.dataset}-{args.method}"
    study = load_study(url, study_name, spec)
    requeued = requeue_interrupted(study)
    if requeued:
        print(f"requeued {requeued} trial(s) interrupted by an earlier run of study '{study_name}'", file=sys.stderr)

    parent = open_parent(base_params, dataset=args.dataset, method=args.method, study_name=study_name, study=study,
                         spec=spec.model_dump(mode="json"))
    ctx = dict(spec=spec, base=base, overrides=overrides, params_file=params_file, space_file=space_file,
               dataset=args.dataset, method=args.method, seed=base_params.seeds[0], data_dir=str(args.data_dir),
               results_dir=str(args.results_dir), folder=str(folder), storage=url, study_name=study_name,
               trials=spec.trials, parent_run_id=parent.run_id)
    workers = max(1, int(args.workers))
    if workers == 1:
        worker(ctx)
    else:
        ctx["threads"] = max(1, parallel.usable_cores() // workers)
        with parallel.spawn_pool(workers) as pool:
            pool.map(worker, [ctx] * workers)

    c = counts(study)
    finished = sum(ended(t) for t in study.get_trials(deepcopy=False))
    if c.get("COMPLETE", 0) == 0:
        errors = [t.user_attrs[ERROR_ATTR] for t in study.get_trials(deepcopy=False) if ERROR_ATTR in t.user_attrs]
        first = f"; first error: {errors[0]}" if errors else ""
        raise AmflowError(f"study '{study_name}' in {url} has no completed trial (states: {c}){first}; "
                          "fix the error, widen the space or lower the pruner's aggressiveness")
    output = args.output or folder / paths.SWEEP_BEST
    best = export_best(study, spec, ctx, Path(output))
    best["model_uri"] = keep_the_best(study, ctx, base_params)
    plots = save_plots(study, folder)
    summary = {"study": study_name, "storage": url, "trials": finished, "states": c, "best": best,
               "best_params_file": str(output)}
    io.write_json(folder / paths.SWEEP_SUMMARY, summary)
    finish_parent(parent, best, [folder / paths.SWEEP_SUMMARY, Path(output), *plots])
    print(f"study '{study_name}': {finished} trials ended ({c}); best {spec.metric} {best['value']:.4f} "
          f"(trial {best['number']}) -> {output}")
    return summary
