"""The result tables: ``results/<name>/table1.csv`` and the ablation tables, pure functions of ``metrics.json``.

Column scheme (the same whatever the number of seeds, so that scripts reading the CSV never break):

- keys: ``dataset, method`` (table 1) or ``axis, value, dataset`` (ablations), then ``n_seeds``;
- accuracies are **percentages** (``100 x`` the fraction in ``metrics.json``), marked ``_pct``;
- every figure that varies with the seed appears as ``<name>_mean`` and ``<name>_std``: the mean over
  seeds and the *sample* standard deviation (ddof = 1); with one seed the ``_std`` cell is empty.
  These are ``top1_pct``, ``top5_pct``, ``mean_class_acc_pct``, ``reversed_top1_pct``,
  ``forward_top1_paired_pct`` and ``both_directions_top1_pct`` (temporal-sensitivity diagnostic:
  accuracy on time-reversed test clips against the reversed label, forward accuracy on the same class
  subset, and the share of clips right both ways, which is 0 for a model blind to frame order; empty
  where the dataset has no time-reversal pairs), ``epochs_to_90pct``, ``train_time_s`` and
  ``train_clips_per_s`` (training throughput);
- table 1 only: ``top1_vs_tpa_pct``, the *paired* difference of top-1 to ``tpa`` (the same adapter
  without AM flow), seed by seed (mean and std over seeds of the per-seed differences; empty in the
  ``tpa`` row and where ``tpa`` has no run with the same seed); and convergence to one fixed accuracy
  for every method of a dataset: ``target_val_top1_pct`` (``tpa``'s final validation top-1, mean over
  seeds), ``epochs_to_target`` and ``time_to_target_s`` (the first epoch whose validation top-1 reaches
  it, and the training wall time up to the end of that epoch: mean and std over the seeds that reach it)
  and ``reaching_target_seeds`` (how many of the ``n_seeds`` seeds reach it);
- figures that depend on the model and not on the seed (``trainable_params``, ``total_params``,
  ``gflops_per_clip``, ``am_flow_variant``, ``views``) appear once; seeds that disagree on one of them
  are an error, not something to average away.

The fair test (``fair_test.csv``, written with the ablation tables when ``ablations.grid`` runs): one
row per (dataset, integration, setting) of the grid, ``setting`` being the AM flow variant (no
control) or the control; beside the paired difference to ``tpa``, ``share_of_footprint_gain``: per
seed ``(x - tpa) / (footprint - tpa)``, the footprint oracle of the same integration being the
reference for what knowing where the actor is can add (mean and std over the seeds where that
oracle's gain is positive, counted in ``footprint_gain_seeds``); ``top1_vs_uniform_pct``, the paired
difference to the same integration with uniform scores (what the integration adds without knowing
where anything is); and the convergence columns of table 1.

Purity: only the runs' ``metrics.json`` are read, rows follow the params' order
(:func:`amflow.workflow_plan.table_runs` / :func:`ablation_runs`), and every float column has a fixed
format (:data:`amflow.report.display.FORMATS`), so the same inputs give the same bytes. The tables hold
numbers only: the text of a cell is made when it is written or shown (:mod:`amflow.report.display`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from amflow import io, paths
from amflow.errors import AmflowError
from amflow.params import Params
from amflow.report.display import fmt
from amflow.workflow_plan import REFERENCE, ablation_runs, reference_runs, table_runs

TABLE1 = paths.TABLE1_CSV
ABLATIONS = paths.ABLATIONS_CSV

REQUIRED_KEYS = ("dataset", "method", "seed", "top1", "top5", "mean_class_acc", "views", "trainable_params",
                 "total_params", "gflops_per_clip", "train_time_s", "val_curve", "epochs_to_90pct",
                 "am_flow_variant")
# Fractions in metrics.json -> percentages in the tables; the temporal ones may be null.
ACCURACIES = ("top1", "top5", "mean_class_acc", "reversed_top1", "forward_top1_paired", "both_directions_top1")
PER_SEED = tuple(f"{k}_pct" for k in ACCURACIES) + ("epochs_to_90pct", "train_time_s", "train_clips_per_s")
PER_MODEL = ("trainable_params", "total_params", "gflops_per_clip", "am_flow_variant", "views")

# Table 1's comparison columns (see the module docstring), after the per-seed figures.
COMPARISON = ["top1_vs_tpa_pct_mean", "top1_vs_tpa_pct_std", "target_val_top1_pct", "epochs_to_target_mean",
              "epochs_to_target_std", "time_to_target_s_mean", "time_to_target_s_std", "reaching_target_seeds"]


def columns(keys: Iterable[str]) -> list[str]:
    """The column order of a table with these leading key columns."""
    stats = [f"{name}_{s}" for name in PER_SEED for s in ("mean", "std")]
    return list(keys) + ["n_seeds"] + stats + list(PER_MODEL)


TABLE1_COLUMNS = columns(("dataset", "method")) + COMPARISON
ABLATION_COLUMNS = columns(("axis", "value", "dataset")) + COMPARISON[:2]
FAIR_TEST_COLUMNS = ["dataset", "integration", "setting", "n_seeds", "top1_pct_mean", "top1_pct_std",
                     "top1_vs_tpa_pct_mean", "top1_vs_tpa_pct_std", "top1_vs_uniform_pct_mean",
                     "top1_vs_uniform_pct_std", "share_of_footprint_gain_mean",
                     "share_of_footprint_gain_std", "footprint_gain_seeds", *COMPARISON[2:]]


# --------------------------------------------------------------------------- reading runs
def load_metrics(path: Path, *, dataset: str, seed: int, method: Optional[str] = None) -> dict:
    """One run's ``metrics.json``, checked: present, complete, for the run it claims, fractions in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise AmflowError(f"{path}: metrics not found; make it with `snakemake --cores 8 {path}` "
                          f"(trains and evaluates that run)")
    try:
        m = io.read_json(path)
    except ValueError as exc:
        raise AmflowError(str(exc)) from None
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise AmflowError(f"{path}: keys {missing} missing; it was written by an older evaluator: delete it and "
                          f"rerun `snakemake --cores 8 {path}`")
    got = (m["dataset"], int(m["seed"])) + ((m["method"],) if method else ())
    want = (dataset, int(seed)) + ((method,) if method else ())
    if got != want:
        raise AmflowError(f"{path}: holds the metrics of {got}, but this folder is the run {want}; "
                          f"the file was copied or moved: delete it and rerun `snakemake --cores 8 {path}`")
    for k in ACCURACIES:
        v = m.get(k)
        if v is not None and not (0.0 <= float(v) <= 1.0):
            raise AmflowError(f"{path}: '{k}' is {v}, but accuracies are fractions in [0, 1]")
    return m


def _per_seed_values(m: dict) -> dict:
    out = {f"{k}_pct": (None if m.get(k) is None else 100.0 * float(m[k])) for k in ACCURACIES}
    e = m.get("epochs_to_90pct")
    out["epochs_to_90pct"] = None if e is None else float(e)
    out["train_time_s"] = float(m["train_time_s"])
    out["train_clips_per_s"] = None if m.get("train_clips_per_s") is None else float(m["train_clips_per_s"])
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof = 1; NaN below two values), NaN for no values."""
    arr = np.asarray(xs, dtype=np.float64)
    return (float(arr.mean()) if arr.size else math.nan, float(arr.std(ddof=1)) if arr.size > 1 else math.nan)


def reach(m: dict, target: float) -> tuple[Optional[int], Optional[float]]:
    """(epoch, training seconds to the end of it) at which a run's validation top-1 first reaches
    ``target`` (a fraction), or (None, None) if it never does."""
    curve, times = m["val_curve"], m.get("epoch_times") or []
    for epoch, value in enumerate(curve, start=1):
        if float(value) >= target - 1e-9:  # the curve's values are fractions k/n: no rounding slack needed
            return epoch, (float(sum(times[:epoch])) if len(times) >= epoch else None)
    return None, None


def comparison(dataset: str, method: str, loaded: dict) -> dict:
    """Table 1's comparison cells of (dataset, method): the paired difference of top-1 to REFERENCE and
    the convergence to REFERENCE's final validation accuracy. ``loaded``: (dataset, method, seed) -> metrics."""
    row = dict.fromkeys(COMPARISON, math.nan)
    ref = {s: m for (d, mm, s), m in loaded.items() if (d, mm) == (dataset, REFERENCE)}
    mine = {s: m for (d, mm, s), m in loaded.items() if (d, mm) == (dataset, method)}
    if not ref:
        return row
    if method != REFERENCE:
        diffs = [100.0 * (float(mine[s]["top1"]) - float(ref[s]["top1"])) for s in mine if s in ref]
        row["top1_vs_tpa_pct_mean"], row["top1_vs_tpa_pct_std"] = _mean_std(diffs)
    target = float(np.mean([float(m["val_curve"][-1]) for m in ref.values()]))
    row["target_val_top1_pct"] = 100.0 * target
    reached = [reach(m, target) for m in mine.values()]
    epochs = [e for e, _ in reached if e is not None]
    seconds = [t for e, t in reached if e is not None and t is not None]
    row["epochs_to_target_mean"], row["epochs_to_target_std"] = _mean_std(epochs)
    row["time_to_target_s_mean"], row["time_to_target_s_std"] = _mean_std(seconds)
    row["reaching_target_seeds"] = len(epochs)
    return row


def aggregate(runs: list[tuple[Path, dict]], where: str) -> dict:
    """Mean and sample std over seeds of the per-seed figures; the per-model figures, checked equal."""
    row: dict = {"n_seeds": len(runs)}
    values = [_per_seed_values(m) for _, m in runs]
    for name in PER_SEED:
        xs = [v[name] for v in values]
        present = [x for x in xs if x is not None]
        if present and len(present) != len(xs):
            lacking = [str(p) for (p, _), x in zip(runs, xs) if x is None]
            raise AmflowError(f"{where}: '{name.removesuffix('_pct')}' is null in {lacking} but not in the other "
                              f"seeds; the evaluations are inconsistent: delete those files and rerun them")
        arr = np.asarray(present, dtype=np.float64)
        row[f"{name}_mean"] = float(arr.mean()) if arr.size else math.nan
        row[f"{name}_std"] = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    for name in PER_MODEL:
        seen = [m[name] for _, m in runs]
        if any(s != seen[0] for s in seen):
            detail = ", ".join(f"{p}: {s!r}" for (p, _), s in zip(runs, seen))
            raise AmflowError(f"{where}: '{name}' differs between seeds ({detail}); the seeds ran different "
                              f"models or settings: rerun them with the same params")
        row[name] = seen[0]
    return row


def _unique(items: Iterable) -> list:
    """First-appearance order without duplicates (the params' order, seeds folded)."""
    return list(dict.fromkeys(items))


# --------------------------------------------------------------------------- the tables (numbers)
def load_table_runs(params: Params, results_dir: Path) -> dict:
    """(dataset, method, seed) -> checked ``metrics.json`` of every run of :func:`table_runs`."""
    return {(d, m, s): load_metrics(paths.run_dir(results_dir, d, m, s) / paths.METRICS_JSON, dataset=d, seed=s,
                                    method=m) for d, m, s in table_runs(params)}


def table1(params: Params, results_dir: Path, loaded: Optional[dict] = None) -> pd.DataFrame:
    """One row per (dataset, method) of :func:`table_runs`, in params order; numeric values."""
    runs = table_runs(params)
    files = {(d, m, s): paths.run_dir(results_dir, d, m, s) / paths.METRICS_JSON for d, m, s in runs}
    loaded = loaded if loaded is not None else load_table_runs(params, results_dir)
    rows = []
    for dataset, method in _unique((d, m) for d, m, _ in runs):
        mine = [(files[k], loaded[k]) for k in files if k[:2] == (dataset, method)]
        rows.append({"dataset": dataset, "method": method, **aggregate(mine, f"{dataset}/{method}"),
                     **comparison(dataset, method, loaded)})
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def ablation_table(params: Params, results_dir: Path) -> pd.DataFrame:
    """Long format, one row per (axis, value, dataset) of :func:`ablation_runs`, in params order, with the
    paired top-1 difference to ``tpa`` of the same dataset and seed: for an AM flow run with another TPU
    (axis ``tpu``), the ``tpu_tpa`` run of that TPU when there is one (the same adapter without AM flow);
    otherwise table 1's ``tpa`` run."""
    runs = ablation_runs(params)
    ref = {(d, s): load_metrics(paths.run_dir(results_dir, d, m, s) / paths.METRICS_JSON, dataset=d, seed=s, method=m)
           for d, m, s in reference_runs(params)}
    loaded = {}  # (axis, value, dataset) -> [(seed, path, metrics)], in params order
    for r in runs:
        path = paths.ablation_run_dir(results_dir, r.axis, r.value, r.dataset, r.seed) / paths.METRICS_JSON
        loaded.setdefault((r.axis, r.value, r.dataset), []).append(
            (r.seed, path, load_metrics(path, dataset=r.dataset, seed=r.seed)))
    top1 = {(*key, seed): float(m["top1"]) for key, group in loaded.items() for seed, _, m in group}

    def base(axis: str, value: str, dataset: str, seed: int) -> Optional[float]:
        same_tpu = top1.get(("tpu_tpa", value, dataset, seed)) if axis == "tpu" else None
        if same_tpu is not None:
            return same_tpu
        return float(ref[(dataset, seed)]["top1"]) if (dataset, seed) in ref else None

    rows = []
    for (axis, value, dataset), group in loaded.items():
        diffs = [100.0 * (float(m["top1"]) - b) for seed, _, m in group
                 if (b := base(axis, value, dataset, seed)) is not None]
        mean, std = _mean_std(diffs)
        rows.append({"axis": axis, "value": value, "dataset": dataset,
                     **aggregate([(path, m) for _, path, m in group], f"ablation {axis}={value} on {dataset}"),
                     "top1_vs_tpa_pct_mean": mean, "top1_vs_tpa_pct_std": std})
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def fair_test_table(params: Params, results_dir: Path) -> pd.DataFrame:
    """The fair test's rows (module docstring) from the ``grid`` ablation runs and table 1's ``tpa`` runs."""
    grid = [r for r in ablation_runs(params) if r.axis == "grid"]
    ref = {(d, s): load_metrics(paths.run_dir(results_dir, d, m, s) / paths.METRICS_JSON, dataset=d, seed=s, method=m)
           for d, m, s in reference_runs(params)}
    runs: dict[tuple[str, str], dict[int, dict]] = {}
    for r in grid:
        path = paths.ablation_run_dir(results_dir, r.axis, r.value, r.dataset, r.seed) / paths.METRICS_JSON
        runs.setdefault((r.dataset, r.value), {})[r.seed] = load_metrics(path, dataset=r.dataset, seed=r.seed)
    rows = []
    for (dataset, value), by_seed in runs.items():
        variant, integration, control = value.split("-", 2)
        footprint = runs.get((dataset, f"auto-{integration}-footprint"), {})
        uniform = runs.get((dataset, f"auto-{integration}-uniform"), {})
        to_uniform = [100.0 * (float(m["top1"]) - float(uniform[s]["top1"])) for s, m in by_seed.items() if s in uniform]
        diffs, shares, gains = [], [], 0
        for seed, m in by_seed.items():
            if (dataset, seed) not in ref:
                continue
            base = float(ref[(dataset, seed)]["top1"])
            diffs.append(100.0 * (float(m["top1"]) - base))
            if seed in footprint and float(footprint[seed]["top1"]) > base:
                gains += 1
                shares.append((float(m["top1"]) - base) / (float(footprint[seed]["top1"]) - base))
        top1 = [100.0 * float(m["top1"]) for m in by_seed.values()]
        loaded = {**{(dataset, REFERENCE, s): m for (d, s), m in ref.items() if d == dataset},
                  **{(dataset, value, s): m for s, m in by_seed.items()}}
        conv = comparison(dataset, value, loaded)
        rows.append({"dataset": dataset, "integration": integration,
                     "setting": variant if control == "none" else control, "n_seeds": len(by_seed),
                     **dict(zip(("top1_pct_mean", "top1_pct_std"), _mean_std(top1))),
                     **dict(zip(("top1_vs_tpa_pct_mean", "top1_vs_tpa_pct_std"), _mean_std(diffs))),
                     **dict(zip(("top1_vs_uniform_pct_mean", "top1_vs_uniform_pct_std"), _mean_std(to_uniform))),
                     **dict(zip(("share_of_footprint_gain_mean", "share_of_footprint_gain_std"), _mean_std(shares))),
                     "footprint_gain_seeds": gains if footprint else math.nan,
                     **{k: conv[k] for k in COMPARISON[2:]}})
    return pd.DataFrame(rows, columns=FAIR_TEST_COLUMNS)


def variant_pivot(ablations: pd.DataFrame) -> pd.DataFrame:
    """Top-1 (%) of the variant axis: one row per variant, one column per dataset, in table order."""
    v = ablations[ablations["axis"] == "variant"]
    pivot = v.pivot(index="value", columns="dataset", values="top1_pct_mean")
    pivot = pivot.reindex(index=_unique(v["value"]), columns=_unique(v["dataset"]))
    pivot.index.name, pivot.columns.name = "variant", None
    return pivot


# --------------------------------------------------------------------------- formatting and files
def format_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as the exact text the CSV holds (fixed decimals; empty for missing)."""
    out = {}
    for col in df.columns:
        base = col.removesuffix("_mean").removesuffix("_std")
        out[col] = [fmt(v, base) for v in df[col].tolist()]
    return pd.DataFrame(out, columns=list(df.columns), dtype=object)


def to_csv_text(df: pd.DataFrame) -> str:
    return format_table(df).to_csv(index=False, lineterminator="\n")


def ablation_axis_file(results_dir: Path, axis: str) -> Path:
    return paths.ablation_table_file(results_dir, axis)


def read_table(path: Path, make: str) -> pd.DataFrame:
    """A table written by `amflow tables` (:mod:`amflow.stages.tables`), numbers parsed back (the report reads
    these, so its numbers are the table's, rounding included). ``make``: the command that writes it."""
    path = Path(path)
    if not path.is_file():
        raise AmflowError(f"{path}: not found; make it with `{make}`")
    # Keys stay text ('0' is a block index, not a number); everything else numeric where it parses.
    text = ("dataset", "method", "axis", "value", "am_flow_variant", "views", "integration", "setting")
    df = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False)
    for col in df.columns:
        if col in text:
            continue
        df[col] = pd.to_numeric(df[col].replace("", np.nan))
    return df
