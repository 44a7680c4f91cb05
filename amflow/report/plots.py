"""Plots of the table runs: validation accuracy per epoch (convergence) and top-1 per method.

Both read only the runs' ``metrics.json`` (through :mod:`amflow.report.tables`, so the same checks
apply) and table 1, and are written atomically under ``results/<name>/plots/`` by ``amflow tables
--which table1`` (so the default run makes them). PNG metadata carries no software version
or date, so unchanged inputs give unchanged files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

from amflow import io, paths  # noqa: E402
from amflow.errors import AmflowError  # noqa: E402
from amflow.params import Params  # noqa: E402
from amflow.workflow_plan import table_runs  # noqa: E402

CONVERGENCE = paths.CONVERGENCE_PNG
ACCURACY = paths.ACCURACY_PNG


def val_curves(params: Params, results_dir: Path, loaded: dict) -> pd.DataFrame:
    """Long table ``dataset, method, seed, epoch (1-based), val_top1_pct`` of every table run
    (``loaded``: (dataset, method, seed) -> its checked ``metrics.json``)."""
    rows = []
    for d, m, s in table_runs(params):
        path = paths.run_dir(results_dir, d, m, s) / paths.METRICS_JSON
        curve = loaded[(d, m, s)]["val_curve"]
        if not curve:
            raise AmflowError(f"{path}: 'val_curve' is empty; the run logged no validation epoch: rerun it")
        rows += [{"dataset": d, "method": m, "seed": s, "epoch": e, "val_top1_pct": 100.0 * float(v)}
                 for e, v in enumerate(curve, start=1)]
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "epoch", "val_top1_pct"])


def _save(fig, path: Path) -> None:
    io.write_png(fig, path, dpi=120)
    plt.close(fig)


def plot_convergence(curves: pd.DataFrame, datasets: list[str], methods: list[str], path: Path,
                     targets: Optional[dict[str, float]] = None) -> Path:
    """One panel per dataset, one line per method: mean over seeds, band = min..max over seeds; a dashed
    line at the dataset's convergence target (``targets``: dataset -> %), when there is one."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, d in zip(axes[0], datasets):
        for i, m in enumerate(methods):
            c = curves[(curves["dataset"] == d) & (curves["method"] == m)]
            if c.empty:
                continue
            g = c.groupby("epoch")["val_top1_pct"]
            mean, lo, hi = g.mean(), g.min(), g.max()
            ax.plot(mean.index, mean.values, marker="o", ms=3, color=colours(i), label=m)
            if c["seed"].nunique() > 1:
                ax.fill_between(mean.index, lo.values, hi.values, color=colours(i), alpha=0.15, linewidth=0)
        target = (targets or {}).get(d)
        if target is not None and not np.isnan(target):
            ax.axhline(target, color="0.3", linestyle="--", linewidth=1, label="target (tpa final)")
        ax.set_title(d)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation top-1 (%)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_accuracy(table: pd.DataFrame, path: Path, chance: Optional[dict[str, float]] = None) -> Path:
    """Grouped bars of test top-1 (%) per dataset and method, error bars = std over seeds; a dotted
    line over each dataset's group at chance (``chance``: dataset -> %, 100 / number of classes)."""
    datasets = list(dict.fromkeys(table["dataset"]))
    methods = list(dict.fromkeys(table["method"]))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(datasets) * len(methods) / 2, 3.6))
    width = 0.8 / len(methods)
    x = np.arange(len(datasets))
    for i, m in enumerate(methods):
        rows = table[table["method"] == m].set_index("dataset").reindex(datasets)
        err = rows["top1_pct_std"].fillna(0).to_numpy(dtype=float)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, rows["top1_pct_mean"].to_numpy(dtype=float), width,
               yerr=err if err.any() else None, capsize=2, label=m)
    for i, d in enumerate(datasets):
        if chance and d in chance:
            ax.hlines(chance[d], i - 0.45, i + 0.45, colors="0.2", linestyles=":", linewidth=1.2,
                      label="chance" if i == 0 else None)
    ax.set_xticks(x, datasets)
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8, ncol=min(len(methods), 5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


def chance_levels(loaded: dict) -> dict[str, float]:
    """dataset -> chance top-1 (%), 100 / the number of classes its runs were trained on."""
    return {d: 100.0 / int(m["num_classes"]) for (d, _, _), m in loaded.items() if m.get("num_classes")}


def write_plots(params: Params, results_dir: Path, table: pd.DataFrame, loaded: dict) -> dict[str, Path]:
    """``results/<name>/plots/convergence.png`` and ``accuracy.png`` from table 1 and its runs' metrics
    (``loaded``: (dataset, method, seed) -> metrics); returns name -> path."""
    out = paths.plots_dir(results_dir)
    curves = val_curves(params, results_dir, loaded)
    targets = ({r["dataset"]: float(r["target_val_top1_pct"]) for _, r in table.iterrows()}
               if "target_val_top1_pct" in table else None)
    return {"convergence": plot_convergence(curves, list(params.table_datasets), list(params.methods),
                                            out / CONVERGENCE, targets),
            "accuracy": plot_accuracy(table, out / ACCURACY, chance_levels(loaded))}
