"""How a number of the result tables is shown: the CSV's fixed decimals and the report's table columns.

The tables (:mod:`amflow.report.tables`) hold numbers; they become text here only, when the CSV is
written or a table is shown in the report or the README. A display is a list of :class:`Column`, each a
header and the text of a row's cell, made by one of :func:`text`, :func:`seed_figure`, :func:`figure` or
:func:`of_seeds`; :func:`show` applies it. Every table of the report and the README is declared below
(``TABLE1``, ``ABLATIONS``, ``FAIR_TEST``, ...), so a figure looks the same wherever it appears.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import pandas as pd

# Fixed decimals per figure: percentages (``*_pct``) have two; a figure with neither is written as it is.
FORMATS = {"share_of_footprint_gain": "{:.3f}", "footprint_gain_seeds": "{:.0f}", "reaching_target_seeds": "{:.0f}",
           "epochs_to_90pct": "{:.2f}", "train_time_s": "{:.1f}", "gflops_per_clip": "{:.4f}",
           "train_clips_per_s": "{:.1f}", "epochs_to_target": "{:.2f}", "time_to_target_s": "{:.1f}",
           "label_probe_val_pct": "{:.1f}"}


def spec(name: str) -> Optional[str]:
    """The format of figure ``name`` (without ``_mean``/``_std``); None: written as it is."""
    return FORMATS.get(name, "{:.2f}" if name.endswith("_pct") else None)


def number(x) -> Optional[float]:
    """A table cell as a float; None for a missing one (empty in the CSV, NaN once read)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def fmt(value, name: str) -> str:
    """One cell as the CSV writes it: the figure's fixed decimals, empty when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    s = spec(name)
    return str(value) if s is None else s.format(float(value))


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[pd.Series], str]


def text(header: str, col: str) -> Column:
    """A key or label column (dataset, method, variant), shown as it is."""
    return Column(header, lambda r: str(r[col]))


def seed_figure(header: str, name: str) -> Column:
    """``mean`` or ``mean ± std`` of a per-seed figure (columns ``<name>_mean``, ``<name>_std``) with the
    CSV's decimals; 'n/a' when it was not measured."""
    return Column(header, lambda r: seed_cell(r, name))


def seed_cell(row: pd.Series, name: str) -> str:
    s = spec(name) or "{:.2f}"
    mean, std = number(row[f"{name}_mean"]), number(row[f"{name}_std"])
    if mean is None:
        return "n/a"
    return s.format(mean) + ("" if std is None else f" ± {s.format(std)}")


def figure(header: str, name: str, missing: str = "n/a") -> Column:
    """A figure with one value per row (params, GFLOPs, a target): the CSV's decimals, a count as an
    integer, ``missing`` when the row has none."""
    def cell(r: pd.Series) -> str:
        v = number(r[name])
        if v is None:
            return missing
        s = spec(name)
        return str(int(v)) if s is None else s.format(v)
    return Column(header, cell)


def of_seeds(row: pd.Series, col: str = "reaching_target_seeds") -> str:
    """'k/n': the seeds of ``col`` out of the row's seeds; empty when not measured."""
    k = number(row[col])
    return "" if k is None else f"{int(k)}/{int(row['n_seeds'])}"


def show(table: pd.DataFrame, columns: list[Column]) -> pd.DataFrame:
    """The display of ``table``: one text column per :class:`Column`, one row per table row."""
    rows = [r for _, r in table.iterrows()]
    return pd.DataFrame({c.header: [c.cell(r) for r in rows] for c in columns}, dtype=object)


def markdown(df: pd.DataFrame) -> str:
    # disable_numparse: tabulate would otherwise reformat '12.50' as '12.5' and break the match with the CSV
    return df.to_markdown(index=False, disable_numparse=True)


# --------------------------------------------------------------------------- the tables shown
TABLE1 = [
    text("dataset", "dataset"), text("method", "method"),
    seed_figure("top-1 (%)", "top1_pct"), seed_figure("top-5 (%)", "top5_pct"),
    seed_figure("mean class acc (%)", "mean_class_acc_pct"), seed_figure("reversed top-1 (%)", "reversed_top1_pct"),
    seed_figure("forward top-1, paired (%)", "forward_top1_paired_pct"),
    seed_figure("right both ways (%)", "both_directions_top1_pct"),
    seed_figure("top-1 − tpa, paired (points)", "top1_vs_tpa_pct"),
    seed_figure("epochs to target", "epochs_to_target"), Column("seeds reaching it", of_seeds),
    seed_figure("epochs to 90%", "epochs_to_90pct"), seed_figure("train time (s)", "train_time_s"),
    seed_figure("train clips/s", "train_clips_per_s"), figure("trainable params", "trainable_params"),
    figure("total params", "total_params"), figure("GFLOPs/clip", "gflops_per_clip"),
    text("AM flow variant", "am_flow_variant"), text("views", "views"),
]
# Table 1's time-reversal columns.
TEMPORAL = [text("dataset", "dataset"), text("method", "method"),
            seed_figure("forward, paired (%)", "forward_top1_paired_pct"),
            seed_figure("reversed (%)", "reversed_top1_pct"),
            seed_figure("right both ways (%)", "both_directions_top1_pct"),
            # a model blind to frame order is never right both ways
            Column("uses frame order", lambda r: "yes" if float(r["both_directions_top1_pct_mean"]) > 0 else "no")]
CONVERGENCE = [text("dataset", "dataset"), text("method", "method"), figure("target (%)", "target_val_top1_pct"),
               seed_figure("epochs to target", "epochs_to_target"),
               seed_figure("time to target (s)", "time_to_target_s"), Column("seeds reaching it", of_seeds)]
ABLATIONS = [
    text("value", "value"), text("dataset", "dataset"), seed_figure("top-1 (%)", "top1_pct"),
    seed_figure("top-1 − tpa, paired (points)", "top1_vs_tpa_pct"),
    seed_figure("mean class acc (%)", "mean_class_acc_pct"), seed_figure("epochs to 90%", "epochs_to_90pct"),
    figure("trainable params", "trainable_params"), figure("GFLOPs/clip", "gflops_per_clip"),
    text("AM flow variant", "am_flow_variant"),
]
# ``label_probe_val_pct``: the localise stage's label probe of the row's scores, joined by the report.
FAIR_TEST = [
    text("dataset", "dataset"), text("integration", "integration"), text("scores", "setting"),
    seed_figure("top-1 (%)", "top1_pct"), seed_figure("− tpa, paired", "top1_vs_tpa_pct"),
    seed_figure("share of footprint's gain", "share_of_footprint_gain"),
    seed_figure("epochs to tpa's final val", "epochs_to_target"),
    figure("label probe (val %)", "label_probe_val_pct", missing=""),
]
README_TABLE1 = [
    text("dataset", "dataset"), text("method", "method"), seed_figure("test top-1 (%)", "top1_pct"),
    seed_figure("top-1 − tpa, paired (points)", "top1_vs_tpa_pct"),
    Column("epochs to tpa's final val top-1",
           lambda r: f"{seed_cell(r, 'epochs_to_target')} ({of_seeds(r)} seeds)"),
]
README_ABLATIONS = [text("axis", "axis"), text("value", "value"), text("dataset", "dataset"),
                    seed_figure("test top-1 (%)", "top1_pct"),
                    seed_figure("top-1 − tpa, paired (points)", "top1_vs_tpa_pct")]
