"""``results/<name>/report.md``: every table, every plot and a paragraph per table, all generated.

Every number in the report is read from ``table1.csv`` / ``ablations.csv`` (so the
report and the tables agree to the last digit, rounding included), from the camera-motion and backbone
JSON files, or from the params. No number is written by hand; the paragraphs say what the numbers say,
including when AM flow does not beat a baseline.

Differences are in percentage points between the rounded table values. With several seeds, a
difference no larger than the larger of the two seed standard deviations is called "not a clear
difference"; with one seed there is no error estimate and the report says so.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import pandas as pd

from amflow import io, methods, paths
from amflow.camera.rules import localisation_evidence, resolve_variant
from amflow.errors import AmflowError
from amflow.params import Params
from amflow.report import plots
from amflow.report.tables import ABLATIONS, FORMATS, TABLE1, read_table, variant_pivot
from amflow.workflow_plan import ablation_runs, table_runs

REPORT = paths.REPORT_MD


# --------------------------------------------------------------------------- small helpers
def pct(x: float) -> str:
    return f"{x:.2f}%"


def pts(x: float) -> str:
    return f"{abs(x):.2f} points"


def _num(x) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _row(table: pd.DataFrame, **keys) -> Optional[pd.Series]:
    mask = pd.Series(True, index=table.index)
    for k, v in keys.items():
        mask &= table[k] == v
    rows = table[mask]
    return None if rows.empty else rows.iloc[0]


def cell(row: pd.Series, name: str) -> str:
    """``mean`` or ``mean ± std`` of a per-seed figure, formatted exactly as in the CSV."""
    spec = FORMATS.get(name, "{:.2f}")
    mean, std = _num(row[f"{name}_mean"]), _num(row[f"{name}_std"])
    if mean is None:
        return "n/a"
    return spec.format(mean) + ("" if std is None else f" ± {spec.format(std)}")


def cells(table: pd.DataFrame, name: str) -> list[str]:
    """:func:`cell` of every row of ``table``: a display column."""
    return [cell(r, name) for _, r in table.iterrows()]


def fixed(value, name: str) -> str:
    """A per-model figure (params, GFLOPs) as the CSV writes it; 'n/a' when the run did not report it."""
    v = _num(value)
    if v is None:
        return "n/a"
    return FORMATS[name].format(v) if name in FORMATS else str(int(v))


def compare(a: str, a_row: pd.Series, b: str, b_row: pd.Series, col: str = "top1_pct") -> str:
    """'a beats b by ...' / 'a does not beat b ...' with the seed-spread caveat (names given as shown)."""
    am, bm = float(a_row[f"{col}_mean"]), float(b_row[f"{col}_mean"])
    diff = round(am - bm, 2)
    if diff > 0:
        text = f"{a} beats {b} ({pct(bm)}) by {pts(diff)}"
    elif diff < 0:
        text = f"{a} does not beat {b} ({pct(bm)}): it is {pts(diff)} lower"
    else:
        text = f"{a} ties with {b} ({pct(bm)})"
    stds = [s for s in (_num(a_row[f"{col}_std"]), _num(b_row[f"{col}_std"])) if s is not None]
    if diff != 0 and stds and abs(diff) <= max(stds):
        text += " (within one seed standard deviation: not a clear difference)"
    return text


def seeds_note(table: pd.DataFrame) -> str:
    n = sorted(set(int(x) for x in table["n_seeds"]))
    if n == [1]:
        return "Each figure comes from a single seed, so no error estimate is available."
    return (f"Figures are means over {', '.join(map(str, n))} seeds; ± is the sample standard deviation "
            f"over seeds.")


def rel(path: Path, results_dir: Path) -> str:
    return Path(os.path.relpath(path, results_dir)).as_posix()


def markdown(df: pd.DataFrame) -> str:
    # disable_numparse: tabulate would otherwise reformat '12.50' as '12.5' and break the match with the CSV
    return df.to_markdown(index=False, disable_numparse=True)


def check_rows(table: pd.DataFrame, keys: list[str], expected: list[tuple], path: Path, make: str) -> None:
    got = [tuple(str(v) for v in r) for r in table[keys].itertuples(index=False)]
    want = [tuple(str(v) for v in e) for e in expected]
    if got != want:
        raise AmflowError(f"{path}: its rows do not match the current params (stale table); rebuild it with "
                          f"`{make}`")


def camera_kind(params: Params, cameras: dict, dataset: str) -> Optional[str]:
    """'aligned' (moving camera) or 'static' for a dataset: the stage's decision, else the synth spec."""
    if dataset in cameras:
        return cameras[dataset].get("decision")
    synth = getattr(params.datasets.get(dataset), "synth", None)  # SynthMotion's settings
    if synth is not None:
        return "aligned" if synth.camera == "moving" else "static"
    return None


# --------------------------------------------------------------------------- inputs
def read_cameras(params: Params, results_dir: Path) -> dict:
    """dataset -> camera_motion.json content, for every dataset that has one."""
    out = {}
    for d in params.datasets:
        path = paths.camera_dir(results_dir, d) / paths.CAMERA_JSON
        if path.is_file():
            try:
                out[d] = io.read_json(path)
            except ValueError as exc:
                raise AmflowError(str(exc)) from None
    return out


def read_optional_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return io.read_json(path)
    except ValueError as exc:
        raise AmflowError(str(exc)) from None


# --------------------------------------------------------------------------- sections
def setup_section(params: Params, results_dir: Path) -> list[str]:
    rows = []
    for name, spec in params.datasets.items():
        s = getattr(spec, "synth", None)  # SynthMotion's settings
        rows.append({"dataset": name, "source": spec.source, "in table 1": "yes" if name in params.table_datasets
                     else "no",
                     "camera": s.camera if s else "", "difficulty": s.difficulty if s else "",
                     "resolution": f"{s.resolution} px" if s else f"short side {spec.short_side}",
                     "train/val/test videos": "/".join(str(s.split_sizes.get(k, "")) for k in
                                                      ("train", "val", "test")) if s else "from the source"})
    b, t, a, f = params.backbone, params.train, params.model.adapter, params.model.am_flow
    samp = params.sampling
    lines = ["## Setup", "", f"Params: `{params.name}`. Methods: {', '.join(f'`{m}`' for m in params.methods)}; "
             f"seeds: {', '.join(map(str, params.seeds))}.", "", markdown(pd.DataFrame(rows)), "",
             f"- Backbone: `{b.model}` {dict(b.kwargs) or ''} (frozen; weights: {b.weights}).",
             f"- Clips: {samp.mode} sampling, {samp.num_frames} frames of {samp.crop_size} px; test views: "
             f"{samp.test_clips} clip(s) x {samp.test_crops} crop(s)"
             + (f" (per-dataset overrides: {', '.join(params.sampling_overrides)})" if params.sampling_overrides
                else "") + ".",
             f"- Training: {t.epochs} epochs, batch {t.batch_size}, lr {t.lr}, weight decay {t.weight_decay}, "
             f"label smoothing {t.label_smoothing}; the same recipe for every method.",
             f"- Adapters: bottleneck {a.bottleneck}, position {a.position}, blocks {a.blocks}, TPU {a.tpu}. "
             f"AM flow: variant {f.variant}, temperature {f.temperature}, source {f.source}, "
             f"normalise {f.normalise}."]
    lines += ["", *backbone_lines(params, results_dir)]
    return lines


def backbone_lines(params: Params, results_dir: Path) -> list[str]:
    if params.backbone.weights != "pretrain":
        return [f"The backbone's weights come from `{params.backbone.weights}`; the pipeline did not pretrain it."]
    path = paths.backbone_dir(results_dir) / paths.BACKBONE_METRICS
    m = read_optional_json(path)
    if m is None:
        return [f"Backbone pretraining metrics: `{rel(path, results_dir)}` not found (run "
                f"`amflow pretrain-backbone`)."]
    # The pretrain stage's keys are its own: show every number it reports, flattened one level.
    flat = {}
    for k, v in m.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if isinstance(vv, (int, float))
                         and not isinstance(vv, bool)})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[k] = v
    if not flat:
        return [f"Backbone pretraining metrics: `{rel(path, results_dir)}` holds no numbers."]
    table = pd.DataFrame({"figure": list(flat), "value": [f"{v:.4g}" for v in flat.values()]})
    return [f"Backbone pretraining on the single-image attribute set (`{rel(path, results_dir)}`, values as "
            f"the stage reports them):", "", markdown(table)]


def camera_section(params: Params, cameras: dict, results_dir: Path) -> list[str]:
    lines = ["## Camera motion", ""]
    rows, links = [], []
    for d in params.datasets:
        c = cameras.get(d)
        if c is None:
            rows.append({"dataset": d, "decision": "not run", "moving videos (sample)": "", "share moving": "",
                         "threshold (of diagonal)": ""})
            continue
        counts = c.get("counts", {})
        share = c.get("share_moving")
        rows.append({"dataset": d, "decision": str(c.get("decision")),
                     "moving videos (sample)": f"{counts.get('moving', '')}/{counts.get('videos', '')}",
                     "share moving": "" if share is None else pct(100 * float(share)),
                     "threshold (of diagonal)": str(c.get("thresholds", {}).get("moving_threshold", ""))})
        png = paths.camera_dir(results_dir, d) / paths.CAMERA_PNG
        if png.is_file():
            links.append(f"![{d} camera motion]({rel(png, results_dir)})")
    lines += [markdown(pd.DataFrame(rows)), ""]
    decided = [(d, c.get("decision"), c.get("share_moving")) for d, c in cameras.items()]
    if decided:
        share_limit = params.camera_motion.dataset_moving_share
        parts = [f"`{d}` uses the **{dec}** variant ({pct(100 * float(s))} of the sampled videos moving; "
                 f"aligned above {pct(100 * share_limit)})" for d, dec, s in decided if s is not None]
        lines += ["The camera-motion stage decides each dataset's AM flow variant: " + "; ".join(parts) + ".", ""]
    lines += links + ([""] if links else [])
    checked = [f"on `{d}`, {text}" for d, text in variant_evidence(params, cameras, results_dir).items()]
    if checked:
        lines += ["Checked against the localisation of the actor (`amflow localise`, no training): "
                  + "; ".join(checked) + ".", ""]
    return lines


def variant_evidence(params: Params, cameras: dict, results_dir: Path) -> dict:
    """dataset -> the sentence of :func:`amflow.camera.rules.localisation_evidence`, for every dataset with
    a decision and a localisation table (or why the table cannot tell)."""
    out = {}
    for d in cameras:
        path = paths.localisation_dir(results_dir, d) / paths.LOCALISATION_CSV
        if path.is_file():
            try:
                variant, _ = resolve_variant(params.model.am_flow.variant, paths.camera_dir(results_dir, d))
                out[d] = localisation_evidence(variant, params.model.am_flow.alignment, pd.read_csv(path))["sentence"]
            except AmflowError as exc:
                out[d] = f"not checked (`{rel(path, results_dir)}`: {exc})"
    return out


def table1_section(params: Params, t1: pd.DataFrame, results_dir: Path) -> list[str]:
    # The ablation section's display is built alike from other columns (its rows are settings, not methods).
    display = pd.DataFrame({
        "dataset": t1["dataset"], "method": t1["method"],
        "top-1 (%)": cells(t1, "top1_pct"),
        "top-5 (%)": cells(t1, "top5_pct"),
        "mean class acc (%)": cells(t1, "mean_class_acc_pct"),
        "reversed top-1 (%)": cells(t1, "reversed_top1_pct"),
        "forward top-1, paired (%)": cells(t1, "forward_top1_paired_pct"),
        "right both ways (%)": cells(t1, "both_directions_top1_pct"),
        "top-1 − tpa, paired (points)": cells(t1, "top1_vs_tpa_pct"),
        "epochs to target": cells(t1, "epochs_to_target"),
        "seeds reaching it": [str(x) for x in t1["seeds_reaching_target"]],
        "epochs to 90%": cells(t1, "epochs_to_90pct"),
        "train time (s)": cells(t1, "train_time_s"),
        "train clips/s": cells(t1, "train_clips_per_s"),
        "trainable params": [fixed(x, "trainable_params") for x in t1["trainable_params"]],
        "total params": [fixed(x, "total_params") for x in t1["total_params"]],
        "GFLOPs/clip": [fixed(x, "gflops_per_clip") for x in t1["gflops_per_clip"]],
        "AM flow variant": t1["am_flow_variant"], "views": t1["views"].astype(str),
    })
    lines = ["## Table 1: methods compared", "", f"From `{TABLE1}`. {seeds_note(t1)}", "", markdown(display), "",
             f"![test top-1 per method](plots/{plots.ACCURACY})", ""]
    lines += [table1_paragraph(params, t1), "", overlap_paragraph(params, t1), ""]
    return lines


def _spread(row: pd.Series, col: str = "top1_pct") -> Optional[tuple[float, float]]:
    """(mean - std, mean + std) of a per-seed figure; None with one seed (no spread to compare)."""
    mean, std = _num(row[f"{col}_mean"]), _num(row[f"{col}_std"])
    return None if mean is None or std is None else (mean - std, mean + std)


def overlap_paragraph(params: Params, t1: pd.DataFrame) -> str:
    """Per dataset, which methods' seed spreads (mean ± std of top-1) overlap: their order is not settled."""
    out = []
    for d in params.table_datasets:
        rows = t1[t1["dataset"] == d].sort_values("top1_pct_mean", ascending=False, kind="stable")
        spreads = {r["method"]: _spread(r) for _, r in rows.iterrows()}
        if any(v is None for v in spreads.values()):
            out.append(f"On `{d}`, one seed per method: no spread, so no ranking of methods can be trusted.")
            continue
        names = list(spreads)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
                 if spreads[a][0] <= spreads[b][1] and spreads[b][0] <= spreads[a][1]]
        if pairs:
            out.append(f"On `{d}`, the seed spreads (mean ± std of top-1) overlap for "
                       + ", ".join(f"`{a}` and `{b}`" for a, b in pairs)
                       + ": their order is within the seed-to-seed variation.")
        else:
            out.append(f"On `{d}`, no two methods' seed spreads overlap.")
    return " ".join(out)


def verdict(mean: Optional[float], std: Optional[float]) -> str:
    """'yes' when mean - std > 0, 'no' when mean + std < 0, 'not resolved' otherwise (or one seed)."""
    if mean is None or std is None:
        return "not resolved"
    return "yes" if mean - std > 0 else "no" if mean + std < 0 else "not resolved"


def paired_sentence(row: pd.Series, col: str = "top1_vs_tpa_pct") -> tuple[str, str]:
    """(verdict, figure) of a paired top-1 difference (default: to tpa): 'yes' when mean - std > 0, 'no'
    when mean + std < 0 (it is worse), 'not resolved' when the spread covers 0."""
    mean, std = _num(row[f"{col}_mean"]), _num(row[f"{col}_std"])
    if mean is None:
        return "not measured", "no tpa run with the same seeds"
    figure = f"{mean:+.2f} ± {std:.2f} points over {int(row['n_seeds'])} seeds" if std is not None else \
        f"{mean:+.2f} points (one seed, no error estimate)"
    return verdict(mean, std), figure


def claims_section(params: Params, t1: pd.DataFrame, abl: Optional[pd.DataFrame]) -> list[str]:
    """The paper's three claims, one sentence each, with what was measured (including 'no')."""
    lines = ["## The paper's claims, as measured here", ""]
    for d in params.table_datasets:
        am, tpa = _row(t1, dataset=d, method="amflow"), _row(t1, dataset=d, method="tpa")
        if am is None or tpa is None:
            lines.append(f"- `{d}`: `amflow` and `tpa` are not both in table 1, so the claims are not measured.")
            continue
        verdict, figure = paired_sentence(am)
        lines.append(f"- **AM flow helps** on `{d}`: {verdict}. Paired top-1 difference `amflow` − `tpa` (the same "
                     f"adapter without AM flow): {figure}.")
        ae, te = _num(am["epochs_to_target_mean"]), _num(tpa["epochs_to_target_mean"])
        target = _num(am["target_val_top1_pct"])
        reach = (f"`amflow` reaches `tpa`'s final validation top-1 ({pct(target)}) in "
                 + (f"{ae:.2f} epochs" if ae is not None else "no epoch") + f" ({am['seeds_reaching_target']} "
                 f"seeds), `tpa` in " + (f"{te:.2f}" if te is not None else "no epoch") +
                 f" ({tpa['seeds_reaching_target']} seeds)") if target is not None else "no target"
        faster = ("yes" if ae is not None and (te is None or ae < te) and am["seeds_reaching_target"].split("/")[0]
                  == am["seeds_reaching_target"].split("/")[1] else "no")
        lines.append(f"- **AM flow converges faster** on `{d}`: {faster}. {reach}.")
    lines.append("- **The camera-matched variant helps**: " + variant_claim(params, abl))
    lines += control_lines(abl)
    return lines + ["", "A verdict is *yes* only when the difference minus its seed standard deviation is above 0; "
                    "*not resolved* means the seed-to-seed spread covers 0.", ""]


def control_lines(abl: Optional[pd.DataFrame]) -> list[str]:
    """What the controls say: the oracle (the actor's true coverage in place of AM flow) bounds what any
    saliency of this kind can add; the shuffled scores keep AM flow's values and lose their place."""
    if abl is None:
        return []
    out = []
    for _, row in abl[abl["axis"] == "control"].iterrows():
        verdict, figure = paired_sentence(row)
        if row["value"] == "oracle":
            text = ("so saliency of this kind can help here" if verdict == "yes" else
                    "so saliency of this kind cannot help on this benchmark, as far as these seeds tell"
                    if verdict == "no" else "so whether saliency can help here is not resolved")
            out.append(f"- **Control `oracle`** (the actor's true coverage in place of AM flow) on "
                       f"`{row['dataset']}` against `tpa`: {figure}; beats `tpa`: {verdict}, {text}.")
        elif row["value"] == "shuffled":
            out.append(f"- **Control `shuffled`** (AM flow's scores permuted across patches) on `{row['dataset']}` "
                       f"against `tpa`: {figure}.")
    return out


def variant_claim(params: Params, abl: Optional[pd.DataFrame]) -> str:
    if abl is None or not (abl["axis"] == "variant").any():
        return ("not measured by this run: the variant ablation is in `ablations.csv` "
                "(`snakemake --cores 8 ablations`).")
    sub = abl[abl["axis"] == "variant"]
    parts = []
    for d in dict.fromkeys(sub["dataset"]):
        st, al = _row(sub, value="static", dataset=d), _row(sub, value="aligned", dataset=d)
        if st is None or al is None:
            continue
        parts.append(f"on `{d}`, " + compare("aligned", al, "static", st))
    return ("; ".join(parts) + ".") if parts else "the variant ablation has no static and aligned pair."


def table1_paragraph(params: Params, t1: pd.DataFrame) -> str:
    """Per dataset: the winner and its margin, AM flow against TPA and AIM, where AM flow ranks."""
    out = []
    for d in params.table_datasets:
        rows = t1[t1["dataset"] == d].sort_values("top1_pct_mean", ascending=False, kind="stable")
        if rows.empty:
            continue
        best = rows.iloc[0]
        ties = rows[rows["top1_pct_mean"] == best["top1_pct_mean"]]
        if len(ties) > 1:
            text = (f"On `{d}`, {' and '.join(f'`{m}`' for m in ties['method'])} tie for the best top-1 "
                    f"({pct(best['top1_pct_mean'])}).")
        elif len(rows) > 1:
            second = rows.iloc[1]
            text = (f"On `{d}`, the best top-1 is `{best['method']}` with {pct(best['top1_pct_mean'])}, "
                    f"ahead of `{second['method']}` ({pct(second['top1_pct_mean'])}) by "
                    f"{pts(best['top1_pct_mean'] - second['top1_pct_mean'])}.")
        else:
            text = f"On `{d}`, only `{best['method']}` was run: {pct(best['top1_pct_mean'])}."
        am = _row(rows, method="amflow")
        if am is not None:
            # rank = 1 + methods strictly ahead, so a tie for first is reported as first
            rank = 1 + int((rows["top1_pct_mean"] > am["top1_pct_mean"]).sum())
            cmp = [compare("`amflow`", am, f"`{b}`", _row(rows, method=b))
                   for b in methods.comparison_order("amflow", set(rows["method"]))]
            text += (f" AM flow (`amflow`, {am['am_flow_variant']} variant) reaches {pct(am['top1_pct_mean'])} "
                     f"and ranks {rank} of {len(rows)}" + (": " + "; ".join(cmp) if cmp else "") + ".")
        fr = _row(rows, method="frame")
        if fr is not None:
            adapters = rows[rows["method"] != "frame"]
            above = int((adapters["top1_pct_mean"] > fr["top1_pct_mean"]).sum())
            text += (f" The order-blind `frame` baseline reaches {pct(fr['top1_pct_mean'])}; {above} of "
                     f"{len(adapters)} temporal methods are above it.")
        out.append(text)
    return " ".join(out)


def temporal_section(params: Params, t1: pd.DataFrame) -> list[str]:
    cols = ["reversed_top1_pct_mean", "forward_top1_paired_pct_mean", "both_directions_top1_pct_mean"]
    have = t1.dropna(subset=cols)
    lines = ["## Temporal sensitivity (time-reversed clips)", ""]
    if have.empty:
        return lines + ["No run in table 1 has the time-reversal figures: the datasets have no time-reversal "
                        "class pairs, or the runs' `metrics.json` predate this diagnostic (rerun "
                        "`amflow evaluate`).", ""]
    rows, text = [], []
    for d in params.table_datasets:
        sub = have[have["dataset"] == d]
        if sub.empty:
            continue
        both = {}
        for _, r in sub.iterrows():
            both[r["method"]] = float(r["both_directions_top1_pct_mean"])
            rows.append({"dataset": d, "method": r["method"], "forward, paired (%)": cell(r, "forward_top1_paired_pct"),
                         "reversed (%)": cell(r, "reversed_top1_pct"),
                         "right both ways (%)": cell(r, "both_directions_top1_pct"),
                         "uses frame order": "yes" if both[r["method"]] > 0 else "no"})
        users = sorted((m for m, v in both.items() if v > 0), key=lambda m: -both[m])
        t = f"On `{d}`, {len(users)} of {len(both)} methods are right both ways on some clips"
        t += (f" (most: `{users[0]}`, {pct(both[users[0]])})." if users else ".")
        if "frame" in both:
            t += (f" The `frame` baseline is right both ways on {pct(both['frame'])} of the clips, "
                  + ("as a model that ignores frame order must be." if both["frame"] == 0 else
                     "although a model that ignores frame order cannot be: check the evaluation."))
        if "amflow" in both:
            others = ", ".join(f"`{m}` {pct(v)}" for m, v in both.items() if m not in ("amflow", "frame"))
            t += (f" `amflow` is right both ways on {pct(both['amflow'])}"
                  + (f" (against {others})" if others else "") + ".")
        text.append(t)
    return lines + [
        "Test clips are also played backwards and scored against the label of the reversed action (move left "
        "becomes move right, grow becomes shrink; a class like stay is its own reversal). *Right both ways* is "
        "the share of clips, among the classes whose reversal is another class, classified right forwards and "
        "backwards. A model blind to frame order gives a clip and its reversal the same prediction, so it is "
        "never right both ways: 0% for it, and every clip right both ways shows that a model uses frame order. "
        "*Forward, paired* and *reversed* are the plain accuracies of the clips with a time-reversal label "
        "and of their reversals.", "", markdown(pd.DataFrame(rows)), "", " ".join(text), ""]


def convergence_section(params: Params, t1: pd.DataFrame) -> list[str]:
    lines = ["## Convergence", "", f"![validation top-1 per epoch](plots/{plots.CONVERGENCE})", ""]
    fixed_rows = t1.dropna(subset=["target_val_top1_pct"])
    if not fixed_rows.empty:
        lines += ["Epochs and training time to one fixed validation top-1, the same for every method of a "
                  "dataset: `tpa`'s final validation top-1 (mean over seeds; the dashed line). Means are over the "
                  "seeds that reach it.", "",
                  markdown(pd.DataFrame({
                      "dataset": fixed_rows["dataset"], "method": fixed_rows["method"],
                      "target (%)": [FORMATS["target_val_top1_pct"].format(x) for x in fixed_rows["target_val_top1_pct"]],
                      "epochs to target": cells(fixed_rows, "epochs_to_target"),
                      "time to target (s)": cells(fixed_rows, "time_to_target_s"),
                      "seeds reaching it": fixed_rows["seeds_reaching_target"].astype(str)})), ""]
    text = []
    for d in params.table_datasets:
        sub = t1[t1["dataset"] == d].dropna(subset=["epochs_to_90pct_mean"])
        if sub.empty:
            continue
        ep = {r["method"]: float(r["epochs_to_90pct_mean"]) for _, r in sub.iterrows()}
        fastest = min(ep.values())
        best = [m for m, e in ep.items() if e == fastest]
        t = (f"On `{d}`, epochs to reach 90% of the final validation accuracy: "
             + ", ".join(f"`{m}` {e:.2f}" for m, e in ep.items())
             + f"; fewest: {', '.join(f'`{m}`' for m in best)}.")
        if "amflow" in ep and len(ep) > 1:
            others = {m: e for m, e in ep.items() if m != "amflow"}
            fewer = sum(ep["amflow"] < e for e in others.values())
            more = sum(ep["amflow"] > e for e in others.values())
            t += (f" Of the {len(others)} other methods, `amflow` needs fewer epochs than {fewer}, as many as "
                  f"{len(others) - fewer - more} and more than {more}"
                  + (", which supports the faster-convergence claim here." if fewer == len(others) else
                     ", so the faster-convergence claim is not supported here." if fewer == 0 else
                     ", so the faster-convergence claim holds only in part here."))
        text.append(t)
    lines += [" ".join(text) + " The figure is relative to each method's own final accuracy: a method that "
              "learns little can reach 90% of it early, so read it together with table 1.", ""]
    return lines


def ablation_section(params: Params, abl: Optional[pd.DataFrame], cameras: dict, results_dir: Path) -> list[str]:
    lines = ["## Ablations", ""]
    if abl is None:
        return lines + [f"`{ABLATIONS}` not built; make it with `snakemake --cores 8 "
                        f"{Path(results_dir) / ABLATIONS}`.", ""]
    lines += [f"From `{ABLATIONS}` (one `ablation_<axis>.csv` per axis holds the same rows). Every ablation "
              f"run is `amflow` with one setting changed, except `tpu_tpa` (the TPUs of `tpa`, the adapter without "
              f"AM flow) and `grid` (variant-integration-control, crossed). The paired difference is to `tpa` of "
              f"the same dataset and seed: with the same TPU for the `tpu` rows, table 1's run otherwise. "
              f"{seeds_note(abl)}", ""]
    for axis in dict.fromkeys(abl["axis"]):
        sub = abl[abl["axis"] == axis]
        display = pd.DataFrame({
            "value": sub["value"], "dataset": sub["dataset"],
            "top-1 (%)": cells(sub, "top1_pct"),
            "top-1 − tpa, paired (points)": cells(sub, "top1_vs_tpa_pct"),
            "mean class acc (%)": cells(sub, "mean_class_acc_pct"),
            "epochs to 90%": cells(sub, "epochs_to_90pct"),
            "trainable params": [fixed(x, "trainable_params") for x in sub["trainable_params"]],
            "GFLOPs/clip": [fixed(x, "gflops_per_clip") for x in sub["gflops_per_clip"]],
            "AM flow variant": sub["am_flow_variant"]})
        lines += [f"### {axis}", "", markdown(display), ""]
        if axis == "variant":
            pivot = variant_pivot(abl)
            shown = pivot.map(lambda x: "" if pd.isna(x) else FORMATS["top1_pct"].format(x)).reset_index()
            lines += ["Top-1 (%) by variant (rows) and dataset (columns):", "", markdown(shown), "",
                      variant_paragraph(params, sub, cameras), ""]
        else:
            lines += [axis_paragraph(axis, sub), ""]
    return lines


def variant_paragraph(params: Params, sub: pd.DataFrame, cameras: dict) -> str:
    out = []
    for d in dict.fromkeys(sub["dataset"]):
        rows = sub[sub["dataset"] == d]
        kind = camera_kind(params, cameras, d)
        label = {"aligned": "moving camera", "static": "static camera"}.get(kind, "camera unknown")
        st, al, none = (_row(rows, value=v) for v in ("static", "aligned", "none"))
        t = f"On `{d}` ({label})"
        if st is not None and al is not None:
            diff = round(float(al["top1_pct_mean"]) - float(st["top1_pct_mean"]), 2)
            t += f", aligned reaches {pct(al['top1_pct_mean'])} and static {pct(st['top1_pct_mean'])}: "
            t += (f"aligned beats static by {pts(diff)}" if diff > 0 else
                  f"aligned does not beat static (it is {pts(diff)} lower)" if diff < 0 else "they tie")
            if kind == "aligned":
                t += (", as camera-motion compensation should on a moving camera" if diff > 0 else
                      ", although this is the dataset where camera-motion compensation should help")
            elif kind == "static":
                t += "; with a static camera the transforms are near identity, so a small gap is expected"
            t += "."
        else:
            t += "."
        if none is not None:
            gated = [(v, r) for v, r in (("static", st), ("aligned", al)) if r is not None]
            if gated:
                v, r = max(gated, key=lambda vr: float(vr[1]["top1_pct_mean"]))
                t += " Against no AM flow: " + compare(f"the better variant, `{v}`,", r, "`none`", none) + "."
        out.append(t)
    return " ".join(out)


def axis_paragraph(axis: str, sub: pd.DataFrame) -> str:
    out = []
    for d in dict.fromkeys(sub["dataset"]):
        rows = sub[sub["dataset"] == d].sort_values("top1_pct_mean", ascending=False, kind="stable")
        best, worst = rows.iloc[0], rows.iloc[-1]
        if len(rows) == 1:
            out.append(f"On `{d}`, {axis} = {best['value']} reaches {pct(best['top1_pct_mean'])}.")
            continue
        spread = float(best["top1_pct_mean"]) - float(worst["top1_pct_mean"])
        out.append(f"On `{d}`, the best {axis} setting is `{best['value']}` ({pct(best['top1_pct_mean'])}) and "
                   f"the worst `{worst['value']}` ({pct(worst['top1_pct_mean'])}), a spread of {pts(spread)}.")
    return " ".join(out)


# What each fair-test setting's scores are, and the label probe (localise) that reads the same scores.
SETTINGS = {"static": "AM flow, static variant", "aligned": "AM flow, aligned variant",
            "shuffled": "AM flow's scores permuted across patches", "rank_matched": "AM flow's values ranked by the "
            "actor's coverage", "uniform": "uniform scores (no location)", "footprint": "the actor's footprint over "
            "the clip (where, not how it moves)", "oracle": "the actor's coverage frame by frame (its trajectory)"}
PROBE_OF = {"static": "amflow", "aligned": "amflow", "shuffled": "shuffled", "rank_matched": "rank_matched",
            "uniform": "uniform", "footprint": "footprint", "oracle": "oracle"}


def fair_test_claims(fair: pd.DataFrame, probes: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The fair test's claims as data: one row per (dataset, integration, claim) with its verdict and figure."""
    rows = []
    for (d, integration), sub in fair.groupby(["dataset", "integration"], sort=False):
        by = sub.set_index("setting")
        probe = probes.get(d)

        def fig(setting: str, col: str = "top1_vs_tpa_pct") -> tuple[str, str]:
            r = by.loc[setting]
            return paired_sentence(r, col)

        def probed(setting: str) -> str:
            if probe is None or PROBE_OF[setting] not in set(probe["scores"]):
                return ""
            acc = float(probe.set_index("scores").loc[PROBE_OF[setting], "val_accuracy"])
            return f"; a linear probe on these scores alone reaches {100 * acc:.1f}% val top-1"

        if "footprint" in by.index:
            v, f = fig("footprint")
            rows.append((d, integration, "knowing where the actor is helps (footprint oracle against tpa)", v,
                         f + probed("footprint")))
        if "footprint" in by.index and "uniform" in by.index:
            v, f = fig("footprint", "top1_vs_uniform_pct")
            rows.append((d, integration, "the gain comes from where the weights point (footprint against uniform)",
                         v, f))
        for setting in ("oracle", "rank_matched", "shuffled", "uniform"):
            if setting in by.index:
                v, f = fig(setting)
                rows.append((d, integration, f"{SETTINGS[setting]} beats tpa", v, f + probed(setting)))
        for variant in ("static", "aligned"):
            if variant in by.index:
                v, f = fig(variant)
                r = by.loc[variant]
                share = _num(r["share_of_footprint_gain_mean"])
                if share is not None:
                    sd = _num(r["share_of_footprint_gain_std"])
                    f += (f"; it recovers {share:.2f}" + (f" ± {sd:.2f}" if sd is not None else "") +
                          f" of the footprint oracle's gain ({int(r['footprint_gain_seeds'])} seeds where that "
                          f"oracle gains)")
                rows.append((d, integration, f"AM flow helps ({variant} variant against tpa)", v, f + probed(variant)))
    return pd.DataFrame(rows, columns=["dataset", "integration", "claim", "verdict", "figure"])


def read_probes(params: Params, results_dir: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for d in params.datasets:
        path = paths.localisation_dir(results_dir, d) / paths.LABEL_PROBE_CSV
        if path.is_file():
            out[d] = pd.read_csv(path)
    return out


def fair_test_section(params: Params, results_dir: Path) -> list[str]:
    """AM flow against tpa, integration by integration, beside the controls that bound what knowing where
    the actor is can add (``fair_test.csv``), with each control's label probe (``label_probe.csv``)."""
    path = results_dir / paths.FAIR_TEST_CSV
    lines = ["## The fair test: does knowing where the actor is help, and does AM flow find it?", ""]
    if not path.is_file():
        return lines + ["Not run: it needs `ablations.grid` (`snakemake --cores 8 ablations`).", ""]
    fair = read_table(path, "")
    probes = read_probes(params, results_dir)
    shown = pd.DataFrame({
        "dataset": fair["dataset"], "integration": fair["integration"], "scores": fair["setting"],
        "top-1 (%)": cells(fair, "top1_pct"), "− tpa, paired": cells(fair, "top1_vs_tpa_pct"),
        "share of footprint's gain": cells(fair, "share_of_footprint_gain"),
        "epochs to tpa's final val": cells(fair, "epochs_to_target"),
        "label probe (val %)": [f"{100 * float(probes[d].set_index('scores').loc[PROBE_OF[st], 'val_accuracy']):.1f}"
                                if d in probes and PROBE_OF[st] in set(probes[d]["scores"]) else ""
                                for d, st in zip(fair["dataset"], fair["setting"])]})
    claims = fair_test_claims(fair, probes)
    lines += [f"From `{paths.FAIR_TEST_CSV}`: every integration with each AM flow variant, and every control with "
              "every integration; the paired difference is to table 1's `tpa` of the same seed. The footprint "
              "oracle says where the actor is over the clip and nothing about how it moves; the per-frame oracle "
              "carries its trajectory, which leaks the label (see its label probe: a linear classifier on the "
              "scores alone, without the video). The share of the footprint oracle's gain is taken seed by seed.",
              "", markdown(shown), ""]
    lines += [f"- On `{r.dataset}` with `{r.integration}`: **{r.claim}**: {r.verdict}. {r.figure}."
              for r in claims.itertuples()]
    return lines + ["", "A verdict is *yes* only when the difference minus its seed standard deviation is above 0.", ""]


def localisation_section(params: Params, results_dir: Path) -> list[str]:
    """Does AM flow find the actor (``amflow localise``, no training): per dataset with ground truth, the
    best block of each method, against the pixel-difference baselines."""
    lines = ["## Localisation: does AM flow find the moving actor?", ""]
    found = False
    for d in params.table_datasets:
        folder = paths.localisation_dir(results_dir, d)
        path = folder / "localisation.csv"
        if not path.is_file():
            continue
        found = True
        table = pd.read_csv(path)
        best = table.loc[table.groupby("method", sort=False)["auc"].idxmax()]
        shown = pd.DataFrame({"method": best["method"], "best block": ["" if pd.isna(b) else str(int(b)) for b in best["block"]],
                              "mass ratio": [f"{x:.2f}" for x in best["mass_ratio"]],
                              "ROC AUC": [f"{x:.3f}" for x in best["auc"]]})
        top = best.loc[best["auc"].idxmax()]
        lines += [f"### `{d}`", "", markdown(shown), "",
                  f"Best at finding the actor: `{top['method']}` (ROC AUC {top['auc']:.3f}, mass ratio "
                  f"{top['mass_ratio']:.2f}; 0.5 and 1 mean no information). Every block: `{rel(path, results_dir)}`.",
                  ""]
        if "auc_distractors" in table and table["auc_distractors"].notna().any():
            against = table.assign(block=["all" if pd.isna(b) else str(int(b)) for b in table["block"]]).pivot(
                index="method", columns="block", values="auc_distractors").reindex(list(dict.fromkeys(table["method"])))
            lines += ["The actor against the distractors (ROC AUC of the actor's patches against patches only "
                      "distractors cover; 0.5 = no better than chance at telling them apart), per block:", "",
                      markdown(against.map(lambda x: "" if pd.isna(x) else f"{x:.3f}").reset_index()), ""]
        png = folder / "localisation.png"
        if png.is_file():
            lines += [f"![{d} localisation]({rel(png, results_dir)})", ""]
    if not found:
        return lines + ["Not measured: run `amflow localise` (a SynthMotion dataset with its ground truth; "
                        "`snakemake --cores 8 report` does it).", ""]
    return lines + ["Scores of the frozen backbone's AM flow per variant and block, and of per-patch pixel "
                    "differences (with and without camera compensation), against the patches the actor covers "
                    "(SynthMotion's render plan): the *mass ratio* is the share of the scores on the actor's "
                    "patches over their share of the area.", ""]


def heatmap_section(params: Params, results_dir: Path) -> list[str]:
    lines = ["## AM flow heat maps", ""]
    out = paths.plots_dir(results_dir)
    png, gif = out / paths.HEATMAPS_PNG, out / paths.HEATMAPS_GIF
    if "amflow" not in params.methods:
        return lines + ["Not made: table 1 of these params has no `amflow` run (`methods`), whose maps they show.", ""]
    if not png.is_file():
        return lines + [f"Not made; run `amflow heatmaps` (`snakemake --cores 8 {png}`).", ""]
    lines += [f"![AM flow heat maps, static against aligned]({rel(png, results_dir)})", ""]
    if gif.is_file():
        lines += [f"Animated: [{rel(gif, results_dir)}]({rel(gif, results_dir)}).", ""]
    info = read_optional_json(out / paths.HEATMAPS_JSON)
    if info and info.get("clips"):
        parts = []
        for c in info["clips"]:
            s, a = float(c["static_cv"]), float(c["aligned_cv"])
            parts.append(f"on `{c['dataset']}` ({c['decision']} decision, test video `{c['video_id']}`, block "
                         f"{c['block']}) the static map has a coefficient of variation of {s:.2f} and the aligned "
                         f"map {a:.2f}, so the aligned map is "
                         + ("more uniform" if a < s else "less uniform" if a > s else "as uniform"))
        lines += ["Rows: frames, static AM flow, aligned AM flow, from the trained `amflow` run (seed "
                  f"{info.get('seed')}); a near-uniform map has a coefficient of variation near 0: "
                  + "; ".join(parts) + ".", ""]
    return lines


# --------------------------------------------------------------------------- the report
def build_report(params: Params, results_dir: Path) -> str:
    results_dir = Path(results_dir)
    t1_path = results_dir / TABLE1
    t1 = read_table(t1_path, f"snakemake --cores 8 {t1_path}")
    check_rows(t1, ["dataset", "method"], list(dict.fromkeys((d, m) for d, m, _ in table_runs(params))), t1_path,
               f"amflow tables --which table1 --results-dir {results_dir}")
    abl_path = results_dir / ABLATIONS
    abl = None
    if abl_path.is_file():
        abl = read_table(abl_path, "")
        check_rows(abl, ["axis", "value", "dataset"],
                   list(dict.fromkeys((r.axis, r.value, r.dataset) for r in ablation_runs(params))), abl_path,
                   f"amflow tables --which ablations --results-dir {results_dir}")
    cameras = read_cameras(params, results_dir)
    lines = ["# AM Flow: results report", "",
             f"Generated by `amflow report` from the files under `{results_dir}` (params `{params.name}`). "
             "Every number is read from the tables and JSON files; regenerate rather than edit.", ""]
    lines += claims_section(params, t1, abl)
    lines += setup_section(params, results_dir) + [""]
    lines += camera_section(params, cameras, results_dir)
    lines += table1_section(params, t1, results_dir)
    lines += temporal_section(params, t1)
    lines += convergence_section(params, t1)
    lines += ablation_section(params, abl, cameras, results_dir)
    lines += fair_test_section(params, results_dir)
    lines += localisation_section(params, results_dir)
    lines += heatmap_section(params, results_dir)
    return "\n".join(lines).rstrip() + "\n"


def write_report(params: Params, results_dir: Path) -> Path:
    path = Path(results_dir) / REPORT
    io.write_text(path, build_report(params, results_dir))
    return path
