"""The report's verdicts as data: each comparison the report makes is one function of the tables' numbers
returning a small record (the figures and the verdict). :mod:`amflow.report.wording` says them in words.

The rules, in one place:

- a difference between two methods is taken between the tables' rounded means (two decimals) and is
  *not clear* when no larger than the larger of the two seed standard deviations;
- a paired difference (seed by seed, ``*_vs_*`` columns) gets the verdict *yes* when mean - std > 0,
  *no* when mean + std < 0 and *not resolved* otherwise or with one seed (no std);
- two methods' order is *not settled* when their seed spreads (mean ± std of top-1) overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from amflow import methods
from amflow.report.display import number

YES, NO, UNRESOLVED, UNMEASURED, PARTLY = "yes", "no", "not resolved", "not measured", "in part"
# The localise stage's label-probe row (``label_probe.csv``, column ``scores``) of each fair-test setting.
PROBE_OF = {"static": "amflow", "aligned": "amflow", "shuffled": "shuffled", "rank_matched": "rank_matched",
            "uniform": "uniform", "footprint": "footprint", "oracle": "oracle"}


def row(table: pd.DataFrame, **keys) -> Optional[pd.Series]:
    """The first row of ``table`` whose columns equal ``keys``; None if there is none."""
    mask = pd.Series(True, index=table.index)
    for k, v in keys.items():
        mask &= table[k] == v
    rows = table[mask]
    return None if rows.empty else rows.iloc[0]


def by_top1(rows: pd.DataFrame) -> pd.DataFrame:
    """Best top-1 first; rows that tie keep the table's order."""
    return rows.sort_values("top1_pct_mean", ascending=False, kind="stable")


# --------------------------------------------------------------------------- two methods
@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` on a per-seed figure (top-1): both means, ``a - b`` and whether it is clear."""
    a: str
    b: str
    a_mean: float
    b_mean: float
    diff: float
    clear: bool


def compare(a: str, a_row: pd.Series, b: str, b_row: pd.Series, col: str = "top1_pct") -> Comparison:
    am, bm = float(a_row[f"{col}_mean"]), float(b_row[f"{col}_mean"])
    diff = round(am - bm, 2)
    stds = [s for s in (number(a_row[f"{col}_std"]), number(b_row[f"{col}_std"])) if s is not None]
    return Comparison(a, b, am, bm, diff, clear=not (diff != 0 and stds and abs(diff) <= max(stds)))


@dataclass(frozen=True)
class Paired:
    """A paired difference (mean and std over seeds of the per-seed differences) and its verdict."""
    mean: Optional[float]
    std: Optional[float]
    n_seeds: int
    verdict: str


def resolve(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None or std is None:
        return UNRESOLVED
    return YES if mean - std > 0 else NO if mean + std < 0 else UNRESOLVED


def paired(r: pd.Series, col: str = "top1_vs_tpa_pct") -> Paired:
    """The paired difference of column ``col`` of a table row (default: top-1 to ``tpa``)."""
    mean, std = number(r[f"{col}_mean"]), number(r[f"{col}_std"])
    return Paired(mean, std, int(r["n_seeds"]), UNMEASURED if mean is None else resolve(mean, std))


# --------------------------------------------------------------------------- table 1
@dataclass(frozen=True)
class Faster:
    """Whether `amflow` reaches `tpa`'s final validation top-1 in fewer epochs: yes only when every seed
    of `amflow` reaches it and `tpa` needs more epochs or never does."""
    target: Optional[float]
    amflow_epochs: Optional[float]
    tpa_epochs: Optional[float]
    amflow_reaching: tuple[int, int]
    tpa_reaching: tuple[int, int]
    verdict: str


def reaching(r: pd.Series) -> tuple[int, int]:
    """(seeds that reach the target, seeds)."""
    k = number(r["reaching_target_seeds"])
    return (0 if k is None else int(k)), int(r["n_seeds"])


def faster(am: pd.Series, tpa: pd.Series) -> Faster:
    ae, te = number(am["epochs_to_target_mean"]), number(tpa["epochs_to_target_mean"])
    k, n = reaching(am)
    yes = ae is not None and (te is None or ae < te) and k == n
    return Faster(number(am["target_val_top1_pct"]), ae, te, (k, n), reaching(tpa), YES if yes else NO)


@dataclass(frozen=True)
class Claims:
    """The paper's claims about `amflow` against `tpa` on one dataset; None: not both in table 1."""
    dataset: str
    helps: Optional[Paired]
    faster: Optional[Faster]


def claims(datasets: list[str], t1: pd.DataFrame) -> list[Claims]:
    out = []
    for d in datasets:
        am, tpa = row(t1, dataset=d, method="amflow"), row(t1, dataset=d, method="tpa")
        if am is None or tpa is None:
            out.append(Claims(d, None, None))
        else:
            out.append(Claims(d, paired(am), faster(am, tpa)))
    return out


@dataclass(frozen=True)
class Overlap:
    """Pairs of methods whose seed spreads (mean ± std of top-1) overlap; None with one seed."""
    dataset: str
    pairs: Optional[list[tuple[str, str]]]


def overlaps(datasets: list[str], t1: pd.DataFrame) -> list[Overlap]:
    out = []
    for d in datasets:
        rows = by_top1(t1[t1["dataset"] == d])
        spreads = {}
        for _, r in rows.iterrows():
            mean, std = number(r["top1_pct_mean"]), number(r["top1_pct_std"])
            spreads[r["method"]] = None if mean is None or std is None else (mean - std, mean + std)
        if any(v is None for v in spreads.values()):
            out.append(Overlap(d, None))
            continue
        names = list(spreads)
        out.append(Overlap(d, [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
                               if spreads[a][0] <= spreads[b][1] and spreads[b][0] <= spreads[a][1]]))
    return out


@dataclass(frozen=True)
class Ranking:
    """One dataset of table 1: the methods best first, those tying for the best, where `amflow` ranks
    (1 + methods strictly ahead) and how it compares with each baseline, and how many temporal methods
    beat the order-blind `frame`."""
    dataset: str
    order: list[tuple[str, float]]
    tied: list[str]
    amflow_variant: Optional[str]
    amflow_rank: Optional[int]
    against: list[Comparison]
    frame_top1: Optional[float]
    above_frame: Optional[int]


def ranking(dataset: str, t1: pd.DataFrame) -> Optional[Ranking]:
    rows = by_top1(t1[t1["dataset"] == dataset])
    if rows.empty:
        return None
    best = rows["top1_pct_mean"].iloc[0]
    am, fr = row(rows, method="amflow"), row(rows, method="frame")
    variant = rank = None
    against = []
    if am is not None:
        variant = str(am["am_flow_variant"])
        rank = 1 + int((rows["top1_pct_mean"] > am["top1_pct_mean"]).sum())
        against = [compare("amflow", am, b, row(rows, method=b))
                   for b in methods.comparison_order("amflow", set(rows["method"]))]
    above = None
    if fr is not None:
        above = int((rows[rows["method"] != "frame"]["top1_pct_mean"] > fr["top1_pct_mean"]).sum())
    return Ranking(dataset, [(str(m), float(v)) for m, v in zip(rows["method"], rows["top1_pct_mean"])],
                   [str(m) for m in rows[rows["top1_pct_mean"] == best]["method"]], variant, rank, against,
                   None if fr is None else float(fr["top1_pct_mean"]), above)


@dataclass(frozen=True)
class FrameOrder:
    """Per dataset, each method's share (%) of clips right both ways (forwards and played backwards). A
    model blind to frame order is never right both ways, so a share above 0 shows a method uses the order
    (and one for `frame` shows an evaluation error)."""
    dataset: str
    both: dict[str, float]
    users: list[str]           # methods right both ways on some clips, most first


def frame_order(dataset: str, rows: pd.DataFrame) -> FrameOrder:
    """``rows``: table 1's rows of ``dataset`` that have the time-reversal figures."""
    both = {str(r["method"]): float(r["both_directions_top1_pct_mean"]) for _, r in rows.iterrows()}
    return FrameOrder(dataset, both, sorted((m for m, v in both.items() if v > 0), key=lambda m: -both[m]))


@dataclass(frozen=True)
class Epochs90:
    """Per dataset, each method's epochs to 90% of its own final validation accuracy, the fewest, and
    how `amflow` compares with the others (None without `amflow` or another method): the
    faster-convergence claim is supported (yes) when it needs fewer epochs than every other method, not
    (no) when fewer than none, in part otherwise."""
    dataset: str
    epochs: dict[str, float]
    fewest: list[str]
    amflow_fewer: Optional[int]
    amflow_more: Optional[int]
    verdict: Optional[str]


def epochs_to_90(dataset: str, rows: pd.DataFrame) -> Epochs90:
    """``rows``: table 1's rows of ``dataset`` that have ``epochs_to_90pct``."""
    ep = {str(r["method"]): float(r["epochs_to_90pct_mean"]) for _, r in rows.iterrows()}
    fewest = [m for m, e in ep.items() if e == min(ep.values())]
    if "amflow" not in ep or len(ep) == 1:
        return Epochs90(dataset, ep, fewest, None, None, None)
    others = [e for m, e in ep.items() if m != "amflow"]
    fewer, more = sum(ep["amflow"] < e for e in others), sum(ep["amflow"] > e for e in others)
    return Epochs90(dataset, ep, fewest, fewer, more,
                    YES if fewer == len(others) else NO if fewer == 0 else PARTLY)


# --------------------------------------------------------------------------- ablations
@dataclass(frozen=True)
class VariantResult:
    """The variant ablation on one dataset: aligned against static, and the better of the two against no
    AM flow (`none`)."""
    dataset: str
    aligned_vs_static: Optional[Comparison]
    best_vs_none: Optional[Comparison]


def variant_results(abl: Optional[pd.DataFrame]) -> Optional[list[VariantResult]]:
    """Per dataset of the ablation table's ``variant`` axis; None without that axis."""
    if abl is None or not (abl["axis"] == "variant").any():
        return None
    variant_rows = abl[abl["axis"] == "variant"]
    out = []
    for d in dict.fromkeys(variant_rows["dataset"]):
        rows = variant_rows[variant_rows["dataset"] == d]
        st, al, none = (row(rows, value=v) for v in ("static", "aligned", "none"))
        pair = compare("aligned", al, "static", st) if st is not None and al is not None else None
        best = None
        gated = [(v, r) for v, r in (("static", st), ("aligned", al)) if r is not None]
        if none is not None and gated:
            v, r = max(gated, key=lambda vr: float(vr[1]["top1_pct_mean"]))
            best = compare(v, r, "none", none)
        out.append(VariantResult(d, pair, best))
    return out


@dataclass(frozen=True)
class Control:
    """A control run of the ablations against `tpa` (paired)."""
    dataset: str
    control: str
    paired: Paired


def controls(abl: pd.DataFrame) -> list[Control]:
    """The ``oracle`` (the actor's true coverage in place of AM flow: what saliency of this kind can add)
    and ``shuffled`` (AM flow's values without their place) rows, in table order."""
    return [Control(r["dataset"], r["value"], paired(r)) for _, r in abl[abl["axis"] == "control"].iterrows()
            if r["value"] in ("oracle", "shuffled")]


@dataclass(frozen=True)
class AxisRange:
    """An ablation axis on one dataset: its best and worst setting by top-1 (the same with one setting)."""
    dataset: str
    settings: int
    best: str
    best_top1: float
    worst: str
    worst_top1: float


def axis_ranges(axis_rows: pd.DataFrame) -> list[AxisRange]:
    out = []
    for d in dict.fromkeys(axis_rows["dataset"]):
        rows = by_top1(axis_rows[axis_rows["dataset"] == d])
        best, worst = rows.iloc[0], rows.iloc[-1]
        out.append(AxisRange(d, len(rows), str(best["value"]), float(best["top1_pct_mean"]), str(worst["value"]),
                             float(worst["top1_pct_mean"])))
    return out


# --------------------------------------------------------------------------- the fair test
def probe_accuracy(probes: dict[str, pd.DataFrame], dataset: str, setting: str) -> Optional[float]:
    """The label probe's val accuracy (fraction) on the scores of a fair-test setting; None if not probed."""
    probe = probes.get(dataset)
    if probe is None or PROBE_OF[setting] not in set(probe["scores"]):
        return None
    return float(probe.set_index("scores").loc[PROBE_OF[setting], "val_accuracy"])


@dataclass(frozen=True)
class FairClaim:
    """One claim of the fair test: ``setting`` against ``against`` ('tpa', or 'uniform' for the footprint
    oracle's second claim), paired; the label probe of the setting's scores; for an AM flow variant, the
    share of the footprint oracle's gain it recovers (mean, std, seeds where that oracle gains)."""
    dataset: str
    integration: str
    setting: str
    against: str
    paired: Paired
    probe: Optional[float]
    share: Optional[tuple[float, Optional[float], int]]


def fair_test_claims(fair: pd.DataFrame, probes: dict[str, pd.DataFrame]) -> list[FairClaim]:
    """Per (dataset, integration): the footprint oracle against tpa and against uniform scores, each
    control against tpa, each AM flow variant against tpa."""
    out = []
    for (d, integration), sub in fair.groupby(["dataset", "integration"], sort=False):
        by = sub.set_index("setting")

        def claim(setting: str, against: str = "tpa") -> FairClaim:
            r = by.loc[setting]
            share = None
            if setting in ("static", "aligned") and number(r["share_of_footprint_gain_mean"]) is not None:
                share = (float(r["share_of_footprint_gain_mean"]), number(r["share_of_footprint_gain_std"]),
                         int(r["footprint_gain_seeds"]))
            return FairClaim(d, integration, setting, against, paired(r, f"top1_vs_{against}_pct"),
                             probe_accuracy(probes, d, setting) if against == "tpa" else None, share)

        if "footprint" in by.index:
            out.append(claim("footprint"))
            if "uniform" in by.index:
                out.append(claim("footprint", "uniform"))
        out += [claim(s) for s in ("oracle", "rank_matched", "shuffled", "uniform", "static", "aligned")
                if s in by.index]
    return out
