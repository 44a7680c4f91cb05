"""``amflow sweep``: an Optuna study over the adapter's hyperparameters.

- Seeded TPE sampler; median or Hyperband pruner on the per-epoch validation top-1 the trainer reports.
- Storage: SQLite under the sweep folder by default, ``journal:PATH`` for a journal file, or an RDB URL
  (``postgresql://...``) shared across machines. ``--workers N`` starts N processes on one storage.
- Exactly the requested number of trials finish (complete or pruned): a worker claims a trial only
  under a lock (a file lock for local storages, a PostgreSQL advisory lock otherwise) after counting
  the finished and running ones. Trials left RUNNING by a killed sweep are marked failed when the sweep
  is rerun, and their parameters are queued again, so none is lost and none is run twice.
- Each trial is a nested MLflow run under one parent run per study; the parent gets the best value and
  params. The best trial is exported as a complete params file (``best.yaml``).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from amflow import io, tracking
from amflow.errors import AmflowError
from amflow.params import load_params, validate
from amflow.sweep.space import SweepSpec, check_space, decode, load_sweep_spec, suggest, trial_params_data

FINISHED = ("COMPLETE", "PRUNED")


# --------------------------------------------------------------------------- storage and locking
def sweep_dir(results_dir: Path, dataset: str, method: str) -> Path:
    return Path(results_dir) / "sweeps" / dataset / method


def storage_url(arg: Optional[str], folder: Path) -> str:
    return arg or f"sqlite:///{(folder / 'study.db').resolve()}"


def open_storage(url: str):
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

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
        from filelock import FileLock

        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / f".{study_name}.claim.lock")):
            yield
        return
    import sqlalchemy

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
    import optuna

    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def load_study(url: str, study_name: str, spec: SweepSpec):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=study_name, storage=open_storage(url), direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=spec.seed), pruner=make_pruner(spec),
                               load_if_exists=True)


def requeue_interrupted(study) -> int:
    """Trials left RUNNING by a killed sweep: mark them failed and queue their parameters again."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_system_attr(t._trial_id, "amflow_interrupted", True)
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
        n += 1
    return n


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
    import optuna

    from amflow.train.run import train_run

    spec: SweepSpec = ctx["spec"]
    values = suggest(trial, spec)
    data = trial_params_data(ctx["params_file"], spec, values)
    params = validate(data, f"{ctx['params_file']} (trial {trial.number})")
    run_dir = Path(ctx["folder"]) / "trials" / f"trial_{trial.number:04d}"
    best = {"value": float("-inf")}

    def report(record: dict) -> None:
        value = float(record[spec.metric])
        best["value"] = max(best["value"], value)
        trial.report(value, int(record["epoch"]))
        if trial.should_prune():
            raise _Pruned()

    try:
        train_run(params, dataset=ctx["dataset"], method=ctx["method"], seed=ctx["seed"],
                  data_dir=Path(ctx["data_dir"]), results_dir=Path(ctx["results_dir"]), run_dir=run_dir,
                  callbacks=[report], parent_run_id=ctx.get("parent_run_id"),
                  tags={"amflow.sweep": ctx["study_name"], "amflow.trial": str(trial.number)})
    except _Pruned:
        raise optuna.TrialPruned() from None
    return best["value"]


def worker(ctx: dict) -> int:
    """Claim and run trials until the study holds the requested number of finished trials."""
    from optuna.trial import TrialState

    if ctx.get("threads"):
        import torch

        torch.set_num_threads(int(ctx["threads"]))
    spec: SweepSpec = ctx["spec"]
    study = load_study(ctx["storage"], ctx["study_name"], spec)
    ran = 0
    while True:
        with claim_lock(ctx["storage"], Path(ctx["folder"]), ctx["study_name"]):
            c = counts(study)
            if sum(c.get(s, 0) for s in FINISHED) + c.get("RUNNING", 0) >= ctx["trials"]:
                return ran
            trial = study.ask()  # takes a queued (WAITING) trial first
        try:
            value = run_trial(trial, ctx)
        except Exception as exc:  # noqa: BLE001 -- the study must record every outcome
            import optuna

            if isinstance(exc, optuna.TrialPruned):
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, state=TrialState.FAIL)
                raise
        else:
            study.tell(trial, value)
        ran += 1


# --------------------------------------------------------------------------- export
def export_best(study, spec: SweepSpec, ctx: dict, output: Path) -> dict:
    best = study.best_trial
    values = decode(spec, best.params)
    data = trial_params_data(ctx["params_file"], spec, values)
    data["name"] = f"{data.get('name', 'params')}-best-{ctx['method']}"
    validate(data, str(output))  # what we write must load
    dvc_args = " ".join(f"-S '{ctx['params_file']}:{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}'"
                        for k, v in {**spec.fixed, **values}.items())
    header = (f"# Best trial {best.number} of study '{ctx['study_name']}': {spec.metric} = {best.value:.4f}\n"
              f"# Use: snakemake --cores 8 results/table1.csv --configfile {output}\n"
              f"#  or: dvc exp run {dvc_args}\n")
    io.write_text(output, header + yaml.safe_dump(data, sort_keys=False))
    return {"number": best.number, "value": best.value, "params": values}


def save_plots(study, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    paths = []
    for name, fn in (("optimization_history.png", ovm.plot_optimization_history),
                     ("param_importances.png", ovm.plot_param_importances)):
        try:
            ax = fn(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need 2+ completed trials
            print(f"skipped {name}: {exc}", file=sys.stderr)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.tight_layout()
        with io.atomic_path(folder / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        paths.append(folder / name)
    return paths


# --------------------------------------------------------------------------- entry point
def run_sweep(args) -> dict:
    params_file = str(args.params)
    base = load_params(params_file)
    spec = load_sweep_spec(args.space)
    if args.trials is not None:
        spec.trials = args.trials
    check_space(params_file, spec)
    folder = sweep_dir(args.results_dir, args.dataset, args.method)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(args.storage, folder)
    study_name = args.study_name or f"{base.name}-{args.dataset}-{args.method}"
    study = load_study(url, study_name, spec)
    requeued = requeue_interrupted(study)
    if requeued:
        print(f"requeued {requeued} trial(s) interrupted by an earlier run of study '{study_name}'", file=sys.stderr)

    parent = tracking.open_sweep_parent(base, dataset=args.dataset, study_name=study_name, study=study,
                                        sweep_spec=spec.model_dump())
    ctx = dict(spec=spec, params_file=params_file, dataset=args.dataset, method=args.method, seed=base.seeds[0],
               data_dir=str(args.data_dir), results_dir=str(args.results_dir), folder=str(folder), storage=url,
               study_name=study_name, trials=spec.trials, parent_run_id=parent.run_id)
    workers = max(1, int(args.workers))
    if workers == 1:
        worker(ctx)
    else:
        ctx["threads"] = max(1, (os.cpu_count() or 1) // workers)
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(worker, [ctx] * workers)

    c = counts(study)
    finished = sum(c.get(s, 0) for s in FINISHED)
    if c.get("COMPLETE", 0) == 0:
        raise AmflowError(f"study '{study_name}' in {url} has no completed trial (states: {c}); "
                          "widen the space or lower the pruner's aggressiveness")
    output = args.output or folder / "best.yaml"
    best = export_best(study, spec, ctx, Path(output))
    plots = save_plots(study, folder)
    summary = {"study": study_name, "storage": url, "trials": finished, "states": c, "best": best,
               "best_params_file": str(output)}
    io.write_json(folder / "summary.json", summary)
    parent.finish_sweep(best, [folder / "summary.json", Path(output), *plots])
    print(f"study '{study_name}': {finished} finished trials ({c}); best {spec.metric} {best['value']:.4f} "
          f"(trial {best['number']}) -> {output}")
    return summary
