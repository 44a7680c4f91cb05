"""``results/<name>/report.md``: every table, every plot and a paragraph per table, all generated.

Every number in the report is read from ``table1.csv`` / ``ablations.csv`` (so the
report and the tables agree to the last digit, rounding included), from the camera-motion and backbone
JSON files, or from the params. No number is written by hand; the paragraphs say what the numbers say,
including when AM flow does not beat a baseline.

This module reads the inputs and lays out the sections. What each comparison concludes is decided in
:mod:`amflow.report.verdicts` (records of figures and verdicts, with the rules), said in
:mod:`amflow.report.wording` (the sentences), and every table is shown through
:mod:`amflow.report.display` (one column spec per table).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import pandas as pd

from amflow import io, paths
from amflow.camera.rules import localisation_evidence, resolve_variant
from amflow.errors import AmflowError
from amflow.params import Params
from amflow.report import display, verdicts, wording
from amflow.report.display import markdown, show
from amflow.report.tables import ABLATIONS, TABLE1, read_table, variant_pivot
from amflow.report.wording import pct
from amflow.workflow_plan import ablation_runs, table_runs

REPORT = paths.REPORT_MD


# --------------------------------------------------------------------------- small helpers
def seeds_note(table: pd.DataFrame) -> str:
    n = sorted(set(int(x) for x in table["n_seeds"]))
    if n == [1]:
        return "Each figure comes from a single seed, so no error estimate is available."
    return (f"Figures are means over {', '.join(map(str, n))} seeds; ± is the sample standard deviation "
            f"over seeds.")


def rel(path: Path, results_dir: Path) -> str:
    return Path(os.path.relpath(path, results_dir)).as_posix()


def plot(name: str, results_dir: Path) -> str:
    """A figure of ``amflow tables`` (``paths.plots_dir``), as the report links it."""
    return rel(paths.plots_dir(results_dir) / name, results_dir)


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
    lines = ["## Table 1: methods compared", "", f"From `{TABLE1}`. {seeds_note(t1)}", "",
             markdown(show(t1, display.TABLE1)), "",
             f"![test top-1 per method]({plot(paths.ACCURACY_PNG, results_dir)})", ""]
    rankings = [r for d in params.table_datasets if (r := verdicts.ranking(d, t1)) is not None]
    lines += [" ".join(wording.ranking_text(r) for r in rankings), "",
              wording.overlap_paragraph(verdicts.overlaps(params.table_datasets, t1)), ""]
    return lines


def claims_section(params: Params, t1: pd.DataFrame, abl: Optional[pd.DataFrame]) -> list[str]:
    """The paper's three claims, one sentence each, with what was measured (including 'no')."""
    controls = verdicts.controls(abl) if abl is not None else []
    return ["## The paper's claims, as measured here", "",
            *wording.claim_lines(verdicts.claims(params.table_datasets, t1), verdicts.variant_results(abl), controls)]


def temporal_section(params: Params, t1: pd.DataFrame) -> list[str]:
    cols = ["reversed_top1_pct_mean", "forward_top1_paired_pct_mean", "both_directions_top1_pct_mean"]
    have = t1.dropna(subset=cols)
    lines = ["## Temporal sensitivity (time-reversed clips)", ""]
    if have.empty:
        return lines + ["No run in table 1 has the time-reversal figures: the datasets have no time-reversal "
                        "class pairs, or the runs' `metrics.json` predate this diagnostic (rerun "
                        "`amflow evaluate`).", ""]
    shown, text = [], []
    for d in params.table_datasets:
        sub = have[have["dataset"] == d]
        if sub.empty:
            continue
        shown.append(sub)
        text.append(wording.frame_order_text(verdicts.frame_order(d, sub)))
    return lines + [
        "Test clips are also played backwards and scored against the label of the reversed action (move left "
        "becomes move right, grow becomes shrink; a class like stay is its own reversal). *Right both ways* is "
        "the share of clips, among the classes whose reversal is another class, classified right forwards and "
        "backwards. A model blind to frame order gives a clip and its reversal the same prediction, so it is "
        "never right both ways: 0% for it, and every clip right both ways shows that a model uses frame order. "
        "*Forward, paired* and *reversed* are the plain accuracies of the clips with a time-reversal label "
        "and of their reversals.", "", markdown(show(pd.concat(shown), display.TEMPORAL)), "", " ".join(text), ""]


def convergence_section(params: Params, t1: pd.DataFrame, results_dir: Path) -> list[str]:
    lines = ["## Convergence", "", f"![validation top-1 per epoch]({plot(paths.CONVERGENCE_PNG, results_dir)})", ""]
    fixed_rows = t1.dropna(subset=["target_val_top1_pct"])
    if not fixed_rows.empty:
        lines += ["Epochs and training time to one fixed validation top-1, the same for every method of a "
                  "dataset: `tpa`'s final validation top-1 (mean over seeds; the dashed line). Means are over the "
                  "seeds that reach it.", "",
                  markdown(show(fixed_rows, display.CONVERGENCE)), ""]
    text = []
    for d in params.table_datasets:
        sub = t1[t1["dataset"] == d].dropna(subset=["epochs_to_90pct_mean"])
        if sub.empty:
            continue
        text.append(wording.epochs90_text(verdicts.epochs_to_90(d, sub)))
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
        lines += [f"### {axis}", "", markdown(show(sub, display.ABLATIONS)), ""]
        if axis == "variant":
            pivot = variant_pivot(abl)
            shown = pivot.map(lambda x: display.fmt(x, "top1_pct")).reset_index()
            lines += ["Top-1 (%) by variant (rows) and dataset (columns):", "", markdown(shown), "",
                      wording.variant_paragraph(verdicts.variant_results(abl),
                                                {d: camera_kind(params, cameras, d) for d in params.datasets}), ""]
        else:
            lines += [wording.axis_paragraph(axis, verdicts.axis_ranges(sub)), ""]
    return lines


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
    accuracies = [verdicts.probe_accuracy(probes, d, st) for d, st in zip(fair["dataset"], fair["setting"])]
    shown = show(fair.assign(label_probe_val_pct=[math.nan if a is None else 100 * a for a in accuracies]),
                 display.FAIR_TEST)
    lines += [f"From `{paths.FAIR_TEST_CSV}`: every integration with each AM flow variant, and every control with "
              "every integration; the paired difference is to table 1's `tpa` of the same seed. The footprint "
              "oracle says where the actor is over the clip and nothing about how it moves; the per-frame oracle "
              "carries its trajectory, which leaks the label (see its label probe: a linear classifier on the "
              "scores alone, without the video). The share of the footprint oracle's gain is taken seed by seed.",
              "", markdown(shown), ""]
    lines += [wording.fair_claim_line(c) for c in verdicts.fair_test_claims(fair, probes)]
    return lines + ["", "A verdict is *yes* only when the difference minus its seed standard deviation is above 0.", ""]


def localisation_section(params: Params, results_dir: Path) -> list[str]:
    """Does AM flow find the actor (``amflow localise``, no training): per dataset with ground truth, the
    best block of each method, against the pixel-difference baselines."""
    lines = ["## Localisation: does AM flow find the moving actor?", ""]
    found = False
    for d in params.table_datasets:
        folder = paths.localisation_dir(results_dir, d)
        path = folder / paths.LOCALISATION_CSV
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
        png = folder / paths.LOCALISATION_PNG
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
    lines += convergence_section(params, t1, results_dir)
    lines += ablation_section(params, abl, cameras, results_dir)
    lines += fair_test_section(params, results_dir)
    lines += localisation_section(params, results_dir)
    lines += heatmap_section(params, results_dir)
    return "\n".join(lines).rstrip() + "\n"
