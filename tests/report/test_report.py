"""The generated report (numbers from the tables, honest verdicts) and the heat-map rendering."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from amflow import paths
from amflow.errors import AmflowError
from amflow.stages import heatmaps as hm
from amflow.report import display, report, tables, verdicts, wording
from amflow.stages.report import write_report
from amflow.stages.tables import write_tables
from test_tables import TOP1, metrics, small_params, write, write_ablations, write_runs


def write_cameras(results: Path) -> None:
    for d, decision, share in (("synth_static", "static", 0.05), ("synth_moving", "aligned", 0.95)):
        write(paths.camera_dir(results, d) / paths.CAMERA_JSON,
              {"dataset": d, "decision": decision, "share_moving": share,
               "counts": {"videos": 60, "moving": round(60 * share)}, "thresholds": {"moving_threshold": 0.01}})


def build(tmp_path, top1=TOP1, ablations=True):
    p = small_params()
    write_runs(p, tmp_path, top1)
    write_tables(p, tmp_path, which="table1")
    if ablations:
        write_ablations(p, tmp_path)
        write_tables(p, tmp_path, which="ablations")
    write_cameras(tmp_path)
    write(paths.backbone_dir(tmp_path) / paths.METRICS_JSON, {"val": {"mean_accuracy": 0.8123}, "epochs": 3})
    path = write_report(p, tmp_path)
    return p, path.read_text()


def table1_paragraph(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("On `synth_static`, the best top-1"))


def test_winner_and_margin_match_the_table(tmp_path):
    _, text = build(tmp_path)
    t1 = tables.read_table(tmp_path / "table1.csv", "")
    para = table1_paragraph(text)
    for d in ("synth_static", "synth_moving"):
        m = re.search(rf"On `{d}`, the best top-1 is `(\w+)` with ([\d.]+)%, ahead of `(\w+)` \(([\d.]+)%\) by "
                      r"([\d.]+) points", para)
        assert m, para
        sub = t1[t1["dataset"] == d].sort_values("top1_pct_mean", ascending=False)
        assert m.group(1) == sub.iloc[0]["method"] and float(m.group(2)) == sub.iloc[0]["top1_pct_mean"]
        assert m.group(3) == sub.iloc[1]["method"]
        assert float(m.group(5)) == pytest.approx(sub.iloc[0]["top1_pct_mean"] - sub.iloc[1]["top1_pct_mean"])
    assert "the best top-1 is `amflow` with 72.00%" in para      # static: amflow wins
    assert "the best top-1 is `tpa` with 57.00%" in para         # moving: tpa wins


def test_amflow_losing_is_reported(tmp_path):
    _, text = build(tmp_path)
    para = table1_paragraph(text)
    moving = para[para.index("On `synth_moving`"):]
    assert "`amflow` does not beat `tpa` (57.00%): it is 6.00 points lower" in moving
    assert "aligned variant) reaches 51.00% and ranks 2 of 3" in moving
    assert "`amflow` beats `frame` (30.00%) by 21.00 points" in moving
    static = para[:para.index("On `synth_moving`")]
    assert "`amflow` beats `tpa` (62.00%) by 10.00 points" in static and "does not beat" not in static


def test_close_results_are_not_called_a_win(tmp_path):
    top1 = dict(TOP1)
    top1[("synth_static", "amflow")] = (0.61, 0.64)   # 62.50 vs tpa 62.00, stds ~2.1 and ~2.8
    _, text = build(tmp_path, top1, ablations=False)
    assert "`amflow` beats `tpa` (62.00%) by 0.50 points (within one seed standard deviation" in text
    assert "`ablations.csv` not built" in text


def test_report_tables_and_links(tmp_path):
    _, text = build(tmp_path)
    t1 = pd.read_csv(tmp_path / "table1.csv", dtype=str, keep_default_na=False)
    row = t1[(t1["dataset"] == "synth_static") & (t1["method"] == "tpa")].iloc[0]
    # the Markdown table carries the CSV's own text
    assert re.search(rf"\| synth_static\s*\| tpa\s*\| {re.escape(row['top1_pct_mean'])} ± "
                     rf"{re.escape(row['top1_pct_std'])}", text)
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / target).is_file(), target
    assert "plots/convergence.png" in text and "synth_moving/camera_motion.png" not in text  # no png was made
    assert "`synth_moving` uses the **aligned** variant (95.00% of the sampled videos moving" in text
    assert "val.mean_accuracy | 0.8123" in text
    assert "Top-1 (%) by variant (rows) and dataset (columns)" in text
    assert "Figures are means over 2 seeds" in text
    assert (tmp_path / "plots/convergence.png").stat().st_size > 0


def test_variant_and_temporal_paragraphs(tmp_path):
    _, text = build(tmp_path)
    assert ("On `synth_moving` (moving camera), aligned reaches 59.00% and static 46.00%: aligned beats static by "
            "13.00 points, as camera-motion compensation should on a moving camera") in text
    assert "On `synth_static` (static camera), aligned reaches 70.00% and static 71.00%: aligned does not beat" in text
    # none: 0.54 + 0.02 * seed -> 55.00 on both datasets
    assert "Against no AM flow: the better variant, `aligned`, beats `none` (55.00%) by 4.00 points." in text
    assert "Against no AM flow: the better variant, `static`, beats `none` (55.00%) by 16.00 points." in text
    # right both ways (tests/report/test_tables.py write_runs): frame 0, the others top-1 - 10 points
    assert ("The `frame` baseline is right both ways on 0.00% of the clips, as a model that ignores frame order "
            "must be.") in text
    assert "`amflow` is right both ways on 62.00% (against `tpa` 52.00%)." in text
    assert "On `synth_static`, 2 of 3 methods are right both ways on some clips (most: `amflow`, 62.00%)." in text
    assert "| synth_static | frame    | 45.00 ± 0.00          | 10.00 ± 0.00   | 0.00 ± 0.00           | no " in text


def test_convergence_paragraph(tmp_path):
    _, text = build(tmp_path)
    # every run: epochs_to_90pct = 2 + seed -> 2.50 for all: a tie, so the claim is not supported
    assert "Of the 2 other methods, `amflow` needs fewer epochs than 0, as many as 2 and more than 0" in text
    assert "the faster-convergence claim is not supported here" in text


def test_stale_or_missing_table_is_an_error(tmp_path):
    p = small_params()
    with pytest.raises(AmflowError, match="snakemake --cores 8 .*table1.csv"):
        write_report(p, tmp_path)
    write_runs(p, tmp_path)
    write_tables(p, tmp_path, which="table1")
    with pytest.raises(AmflowError, match="stale"):
        write_report(small_params(methods=["frame", "amflow"]), tmp_path)


# --------------------------------------------------------------------------- heat maps
def test_render_heatmaps(tmp_path):
    rng = np.random.default_rng(0)
    T = 5
    frames = rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8)
    clips = [hm.HeatmapClip("a", frames, rng.random((T, 8, 8)), rng.random((T, 8, 8)),
                            {"static_cv": 1.0, "aligned_cv": 0.5}),
             hm.HeatmapClip("b", frames[:4], rng.random((4, 8, 8)), np.ones((4, 8, 8)))]
    png, gif = hm.render_heatmaps(clips, tmp_path / "h.png", tmp_path / "h.gif")
    assert Image.open(png).format == "PNG"
    with Image.open(gif) as g:
        assert g.n_frames == T
        k = hm.display_scale(32)
        assert g.size == (3 * 32 * k + 4, 2 * 32 * k + 2)
    # bilinear with cell centres aligned: [0, 1] over 2 cells -> 0, 0.25, 0.75, 1 over 4
    np.testing.assert_allclose(hm.upsample(np.array([[[0.0, 1.0]]]), 1, 4)[0, 0], [0, 0.25, 0.75, 1])
    # in both directions at once, and every frame on its own (8 frames: frame t is t everywhere)
    np.testing.assert_allclose(hm.upsample(np.array([[[0.0, 1.0], [2.0, 3.0]]]), 4, 4)[0],
                               [[0, 0.25, 0.75, 1], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]])
    np.testing.assert_allclose(hm.upsample(np.arange(8.0)[:, None, None] * np.ones((8, 2, 3)), 5, 7),
                               np.arange(8.0)[:, None, None] * np.ones((8, 5, 7)))
    # the overlay blends: a black frame under the colour map's top colour at weight ALPHA
    top = hm.overlay(np.zeros((1, 2, 2, 3), np.uint8), np.full((1, 2, 2), 2.0), vmax=2.0)
    assert top.dtype == np.uint8 and top.max() <= round(255 * hm.ALPHA) and top.max() > 0
    with pytest.raises(ValueError, match="static map"):
        hm.HeatmapClip("bad", frames, np.zeros((T - 1, 8, 8)), np.zeros((T, 8, 8)))


def test_png_outputs_carry_no_matplotlib_version(tmp_path):
    """Every figure goes through io.write_png: the same figure gives the same bytes, whatever the
    installed matplotlib."""
    from amflow.evaluate.plots import confusion_png

    for name in ("a.png", "b.png"):
        confusion_png(np.eye(3), ["x", "y", "z"], tmp_path / name)
    data = (tmp_path / "a.png").read_bytes()
    assert data == (tmp_path / "b.png").read_bytes()
    assert data.startswith(b"\x89PNG") and b"Software" not in data and b"atplotlib" not in data


def test_coefficient_of_variation_and_clip_choice():
    assert hm.clip_cv(np.ones((3, 4, 4))) == pytest.approx(0.0)
    peaked = np.zeros((2, 2, 2))
    peaked[:, 0, 0] = 4.0
    assert hm.clip_cv(peaked) == pytest.approx(np.sqrt(3))
    moving = np.array([True, False, False, True, True])
    assert hm.pick_video(moving, np.array([3, 1, 4]), want_moving=False) == 1
    assert hm.pick_video(moving, np.array([3, 4]), want_moving=False) == 0   # none: the first


def test_clip_maps_with_a_tiny_random_backbone():
    import torch

    from amflow.models import build_backbone, build_model
    from amflow.params import BackboneSpec

    spec = BackboneSpec(model="vit_tiny_patch16_224", weights="random",
                        kwargs={"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2})
    p = small_params()
    torch.manual_seed(0)
    backbone = build_backbone(spec)
    models = {v: build_model("amflow", backbone, 3, 4, p.model, v).eval() for v in hm.VARIANTS}
    video = torch.randn(4, 3, 16, 16)
    eye = torch.eye(3).repeat(3, 1, 1)
    maps = hm.clip_maps(models, video, eye)
    assert maps["static"].shape == (4, 4, 4)
    np.testing.assert_allclose(maps["static"], maps["aligned"], rtol=1e-5, atol=1e-6)  # identity camera
    shift = eye.clone()
    shift[:, 0, 2] = 4.0                     # one patch to the right: the alignment changes the map
    assert not np.allclose(hm.clip_maps(models, video, shift)["aligned"], maps["static"], atol=1e-4)


def test_heatmap_section_reads_the_summary(tmp_path):
    out = tmp_path / "plots"
    out.mkdir()
    (out / paths.HEATMAPS_PNG).write_bytes(b"png")
    (out / paths.HEATMAPS_JSON).write_text(json.dumps({"seed": 0, "clips": [
        {"dataset": "synth_moving", "decision": "aligned", "video_id": "v7", "block": 5,
         "static_cv": 1.5, "aligned_cv": 0.4}]}))
    text = "\n".join(report.heatmap_section(small_params(), tmp_path))
    assert "](plots/amflow_heatmaps.png)" in text
    assert "static map has a coefficient of variation of 1.50 and the aligned map 0.40, so the aligned map is " \
           "more uniform" in text
    # Params whose table 1 has no amflow run: no heat maps, and the report says why (not "run it").
    text = "\n".join(report.heatmap_section(small_params(methods=["frame", "tpa"]), tmp_path))
    assert "no `amflow` run" in text and "](plots" not in text


def test_write_heatmaps_end_to_end(tmp_path):
    """Real frame caches, motion files, camera decisions and a checkpoint in the trainer's format."""
    import torch

    from amflow.params_io import validate
    from amflow.train import checkpoint as ckpt
    from amflow.identity import training
    from amflow.runs import build_run_model, run_paths
    from standins_train import make_tiny_dataset

    data, results = tmp_path / "data", tmp_path / "results"
    names = {"tiny_s": "static", "tiny_m": "aligned"}
    p = validate({
        "name": "tiny", "table_datasets": list(names), "seeds": [3], "methods": ["amflow"],
        "datasets": {d: {"source": "synthmotion", "short_side": 16, "synth": {"camera": "static"}} for d in names},
        "sampling": {"num_frames": 4, "crop_size": 16},
        "backbone": {"model": "vit_tiny_patch16_224", "weights": "random",
                     "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "model": {"adapter": {"bottleneck": 8}, "am_flow": {"variant": "auto"}}})
    for d, decision in names.items():
        rp, run = run_paths(p, d, "amflow", 3, data, results), training(p, d, "amflow", 3)
        make_tiny_dataset(data, d, size=16, frames=8, per_split={"train": 4, "val": 2, "test": 3}, params=p)
        n_frames = (4 + 2 + 3) * 8              # videos x frames in the cache
        transforms = np.tile(np.eye(3, dtype=np.float32), (n_frames, 1, 1))
        moving = np.zeros(9, bool)
        if decision == "aligned":
            transforms[:, 0, 2] = 1.0            # a one-pixel pan per frame
            moving[[0, 7, 8]] = True            # test videos are positions 6, 7, 8: the choice is 7
        rp.motion.parent.mkdir(parents=True, exist_ok=True)
        np.savez(rp.motion, transforms=transforms, valid=np.ones(n_frames, bool), video_moving=moving)
        write(results / d / paths.CAMERA_JSON, {"decision": decision, "share_moving": 0.0})
        model = build_run_model(p, d, "amflow", 4, decision, None, 3)
        with torch.no_grad():                     # trained-looking weights: non-zero up-projections
            for name, prm in model.named_parameters():
                if prm.requires_grad:
                    prm.add_(0.05 * torch.randn_like(prm))
        ckpt.save_checkpoint(rp.run_dir / paths.CHECKPOINT, {
            "format": ckpt.FORMAT, "epoch": 1, "model": ckpt.trainable_state(model), "optimizer": {},
            "scheduler": {}, "history": [], "frozen_fingerprint": ckpt.frozen_fingerprint(model),
            "meta": {"num_classes": 4, "compat": {**run.names, "params_digest": run.digest, "am_flow_variant": decision}}})
        write(rp.run_dir / paths.TRAIN_JSON, {"status": "complete", "epochs": 1, "params_digest": run.digest})
    summary = hm.write_heatmaps(p, data_dir=data, results_dir=results)
    assert [(c["dataset"], c["decision"], c["video_id"]) for c in summary["clips"]] == \
        [("tiny_s", "static", "test000"), ("tiny_m", "aligned", "test001")]
    assert all(c["block"] == 1 and np.isfinite(c["static_cv"]) for c in summary["clips"])
    static_clip, moving_clip = summary["clips"]
    assert static_clip["static_cv"] == pytest.approx(static_clip["aligned_cv"])   # identity: the same maps
    assert moving_clip["static_cv"] != pytest.approx(moving_clip["aligned_cv"])
    with Image.open(results / "plots" / paths.HEATMAPS_GIF) as g:
        assert g.n_frames == 4
    assert json.loads((results / "plots" / paths.HEATMAPS_JSON).read_text()) == summary
    # a run trained with other params is refused rather than plotted
    p2 = p.model_copy(update={"model": p.model.model_copy(update={"am_flow": p.model.am_flow.model_copy(
        update={"temperature": 9.0})})})
    with pytest.raises(AmflowError, match="other params"):
        hm.write_heatmaps(p2, data_dir=data, results_dir=results)


def test_claims_and_overlap_say_what_the_seeds_show(tmp_path):
    # synth_static: amflow - tpa = +10 points on both seeds (yes); synth_moving: -5 and -7 (no).
    _, text = build(tmp_path)
    assert ("**AM flow helps** on `synth_static`: yes. Paired top-1 difference `amflow` − `tpa` (the same adapter "
            "without AM flow): +10.00 ± 0.00 points over 2 seeds.") in text
    assert "**AM flow helps** on `synth_moving`: no. Paired top-1 difference `amflow` − `tpa` (the same adapter " \
           "without AM flow): -6.00 ± 1.41 points over 2 seeds." in text
    assert "On `synth_moving`, no two methods' seed spreads overlap." in text
    # Seeds that disagree: amflow 50 and 64 against tpa 55 and 59 -> -5 and +5: 0 ± 7.07 points, spreads overlap.
    top1 = dict(TOP1)
    top1[("synth_moving", "amflow")] = (0.50, 0.64)
    _, text = build(tmp_path / "mixed", top1)
    assert "**AM flow helps** on `synth_moving`: not resolved. Paired top-1 difference `amflow` − `tpa` (the same " \
           "adapter without AM flow): +0.00 ± 7.07 points over 2 seeds." in text
    assert "the seed spreads (mean ± std of top-1) overlap for `tpa` and `amflow`" in text


def test_localisation_section_reads_the_stage_csv(tmp_path):
    _, text = build(tmp_path)
    assert "Not measured: run `amflow localise`" in text
    csv = paths.localisation_dir(tmp_path, "synth_moving") / "localisation.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("method,block,mass_ratio,auc,frames,patches\n"
                   "static,0,2.2400,0.7900,100,1600\nstatic,3,3.0900,0.8500,100,1600\n"
                   "aligned_warp,1,1.7900,0.7300,100,1600\npixel_diff,,1.7100,0.8800,100,1600\n")
    _, text = build(tmp_path)
    # best block per method by AUC: static block 3; the best method overall is the pixel difference
    assert re.search(r"\| static\s+\| 3\s+\| 3\.09\s+\| 0\.850\s+\|", text)
    assert "Best at finding the actor: `pixel_diff` (ROC AUC 0.880, mass ratio 1.71;" in text
    # a table without the variant the dataset uses (grid, here) cannot check the camera decision
    assert "on `synth_moving`, not checked (`synth_moving/localisation/localisation.csv`: the localisation " \
           "table has no AUC for 'aligned_grid'" in text


def test_camera_section_checks_each_decision_against_the_localisation(tmp_path):
    _, text = build(tmp_path)
    assert "Checked against the localisation" not in text               # no localisation table yet
    rows = "method,block,mass_ratio,auc,frames,patches\n"
    for d, auc in (("synth_static", {"static": 0.86, "aligned_grid": 0.84}),
                   ("synth_moving", {"static": 0.84, "aligned_grid": 0.80, "aligned_warp_fill": 0.82})):
        csv = paths.localisation_dir(tmp_path, d) / "localisation.csv"
        csv.parent.mkdir(parents=True)
        csv.write_text(rows + "".join(f"{m},{b},2.0,{a + (b - 0.5) / 50:.4f},100,1600\n"
                                      for m, a in auc.items() for b in (0, 1)))
    _, text = build(tmp_path)
    assert ("Checked against the localisation of the actor (`amflow localise`, no training): on `synth_static`, "
            "`static` is used (ROC AUC 0.860, mean over blocks; the best aligned variant, `aligned_grid`, 0.840); "
            "on `synth_moving`, the variant used, `aligned_grid`, localises the actor worse than `static` (ROC AUC "
            "0.800 against 0.840, mean over blocks); no aligned variant beats `static` (the best, "
            "`aligned_warp_fill`, reaches 0.820).") in text


def test_the_oracle_control_says_whether_saliency_can_help(tmp_path):
    p = small_params(ablations={"variants": [], "tpus": [], "source_layers": [], "num_blocks": [], "frames": [],
                                "controls": ["shuffled", "oracle"]})
    write_runs(p, tmp_path)
    write_tables(p, tmp_path, which="table1")
    # tpa on synth_moving: 55 and 59. The oracle run: 50 and 52 -> -5 and -7 points: it does not beat tpa.
    for seed, top1 in ((0, 0.50), (1, 0.52)):
        for control, value in (("oracle", top1), ("shuffled", top1 - 0.1)):
            write(paths.ablation_run_dir(tmp_path, "control", control, "synth_moving", seed) / "metrics.json",
                  metrics("synth_moving", "amflow", seed, value))
    write_tables(p, tmp_path, which="ablations")
    text = report.build_report(p, tmp_path)
    assert ("**Control `oracle`** (the actor's true coverage in place of AM flow) on `synth_moving` against `tpa`: "
            "-6.00 ± 1.41 points over 2 seeds; beats `tpa`: no, so saliency of this kind cannot help on this "
            "benchmark, as far as these seeds tell.") in text
    assert "**Control `shuffled`** (AM flow's scores permuted across patches) on `synth_moving` against `tpa`: " \
           "-16.00 ± 1.41 points over 2 seeds." in text


def test_fair_test_section_states_each_claim_with_its_probe_and_share(tmp_path):
    """Grid runs where the footprint oracle clearly beats tpa and uniform scores do not: the positive
    control holds; AM flow recovers a share of the oracle's gain; the probes are the localise stage's."""
    p = small_params(ablations={"variants": [], "tpus": [], "source_layers": [], "num_blocks": [], "frames": [],
                                "tpu_with_tpa": False,
                                "grid": {"variants": ["aligned"], "integrations": ["pool"],
                                         "controls": ["none", "footprint", "uniform"], "datasets": ["synth_moving"]}})
    write_runs(p, tmp_path)                                # tpa on synth_moving: 55 and 59 %
    top1 = {"aligned-pool-none": (0.58, 0.61), "auto-pool-footprint": (0.65, 0.70), "auto-pool-uniform": (0.55, 0.58)}
    for value, per_seed in top1.items():
        for seed, t in enumerate(per_seed):
            write(paths.ablation_run_dir(tmp_path, "grid", value, "synth_moving", seed) / "metrics.json",
                  metrics("synth_moving", "amflow", seed, t))
    write_tables(p, tmp_path, which="table1")
    write_tables(p, tmp_path, which="ablations")
    probe = paths.localisation_dir(tmp_path, "synth_moving") / paths.LABEL_PROBE_CSV
    probe.parent.mkdir(parents=True)
    pd.DataFrame({"scores": ["oracle", "footprint", "rank_matched", "amflow", "shuffled", "uniform"],
                  "val_accuracy": [0.69, 0.21, 0.3, 0.12, 0.09, 0.08]}).to_csv(probe, index=False)
    write_cameras(tmp_path)
    text = write_report(p, tmp_path).read_text()
    lines = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- On `synth_moving` with `pool`")}
    # footprint - tpa: +10, +11 -> 10.50 ± 0.71; against uniform: +10, +12 -> 11.00 ± 1.41
    assert "yes. +10.50 ± 0.71 points over 2 seeds; a linear probe on these scores alone reaches 21.0%" in \
        lines["knowing where the actor is helps (footprint oracle against tpa)"]
    assert "yes. +11.00 ± 1.41 points" in lines["the gain comes from where the weights point (footprint against uniform)"]
    # amflow - tpa: +3, +2 -> 2.50 ± 0.71: yes; shares 3/10 and 2/11 -> 0.24 ± 0.08
    amflow = lines["AM flow helps (aligned variant against tpa)"]
    assert "yes. +2.50 ± 0.71 points over 2 seeds; it recovers 0.24 ± 0.08 of the footprint oracle's gain (2 seeds" \
        in amflow and "reaches 12.0% val top-1" in amflow
    assert "not resolved. -0.50 ± 0.71 points" in lines["uniform scores (no location) beats tpa"]   # 0, -1


# --------------------------------------------------------------------------- verdicts on hand-made tables
def t1_table(rows: list[tuple]) -> pd.DataFrame:
    """Table-1-like rows (dataset, method, top-1 mean, top-1 std, n_seeds); NaN std: one seed."""
    return pd.DataFrame(rows, columns=["dataset", "method", "top1_pct_mean", "top1_pct_std", "n_seeds"])


def test_compare_calls_a_difference_within_the_seed_spread_not_clear():
    t = t1_table([("d", "a", 62.00, 2.83, 2), ("d", "b", 60.00, 1.00, 2), ("d", "c", 65.00, 1.00, 2),
                  ("d", "e", 60.004, math.nan, 1), ("d", "f", 60.001, math.nan, 1)])
    r = {m: verdicts.row(t, method=m) for m in "abcef"}
    close = verdicts.compare("a", r["a"], "b", r["b"])
    assert (close.diff, close.clear) == (2.0, False)                  # 2.00 <= max(2.83, 1.00)
    assert wording.comparison(close) == \
        "`a` beats `b` (60.00%) by 2.00 points (within one seed standard deviation: not a clear difference)"
    clear = verdicts.compare("b", r["b"], "c", r["c"])
    assert (clear.diff, clear.clear) == (-5.0, True)                  # 5.00 > 1.00
    assert wording.comparison(clear) == "`b` does not beat `c` (65.00%): it is 5.00 points lower"
    tie = verdicts.compare("e", r["e"], "f", r["f"])                  # 0.003 rounds to 0.00
    assert (tie.diff, tie.clear) == (0.0, True) and wording.comparison(tie) == "`e` ties with `f` (60.00%)"
    one_seed = verdicts.compare("e", r["e"], "b", r["b"])             # b's std alone bounds it: 0.00 -> tie
    assert one_seed.clear


@pytest.mark.parametrize("mean, std, n, verdict, figure", [
    (2.5, 0.71, 2, "yes", "+2.50 ± 0.71 points over 2 seeds"),
    (-3.0, 1.0, 3, "no", "-3.00 ± 1.00 points over 3 seeds"),
    (0.5, 1.0, 2, "not resolved", "+0.50 ± 1.00 points over 2 seeds"),
    (-1.0, 1.0, 2, "not resolved", "-1.00 ± 1.00 points over 2 seeds"),      # mean + std = 0: not below
    (4.0, math.nan, 1, "not resolved", "+4.00 points (one seed, no error estimate)"),
    (math.nan, math.nan, 2, "not measured", "no tpa run with the same seeds"),
])
def test_paired_verdict(mean, std, n, verdict, figure):
    row = pd.Series({"top1_vs_tpa_pct_mean": mean, "top1_vs_tpa_pct_std": std, "n_seeds": n})
    p = verdicts.paired(row)
    assert p.verdict == verdict and wording.paired(p) == figure


def test_overlaps_of_seed_spreads():
    t = t1_table([("d", "a", 70.0, 2.0, 3), ("d", "b", 67.0, 2.0, 3), ("d", "c", 60.0, 1.0, 3),
                  ("e", "a", 50.0, math.nan, 1), ("e", "b", 40.0, math.nan, 1)])
    d, e = verdicts.overlaps(["d", "e"], t)
    assert d.pairs == [("a", "b")]                 # [68, 72] meets [65, 69]; [59, 61] meets neither
    assert e.pairs is None                         # one seed: no spread
    assert wording.overlap_paragraph([d, e]) == (
        "On `d`, the seed spreads (mean ± std of top-1) overlap for `a` and `b`: their order is within the "
        "seed-to-seed variation. On `e`, one seed per method: no spread, so no ranking of methods can be trusted.")


def claims_table(am_epochs, am_reaching, tpa_epochs, tpa_reaching, n=2) -> pd.DataFrame:
    common = {"dataset": "d", "n_seeds": n, "target_val_top1_pct": 57.5, "top1_pct_mean": 50.0, "top1_pct_std": 1.0,
              "epochs_to_target_std": math.nan}
    return pd.DataFrame([
        {**common, "method": "amflow", "top1_vs_tpa_pct_mean": -6.0, "top1_vs_tpa_pct_std": 1.41,
         "epochs_to_target_mean": am_epochs, "reaching_target_seeds": am_reaching},
        {**common, "method": "tpa", "top1_vs_tpa_pct_mean": math.nan, "top1_vs_tpa_pct_std": math.nan,
         "epochs_to_target_mean": tpa_epochs, "reaching_target_seeds": tpa_reaching}])


@pytest.mark.parametrize("am_epochs, am_reaching, tpa_epochs, tpa_reaching, faster", [
    (1.5, 2, 3.0, 1, "yes"),             # every amflow seed, fewer epochs
    (1.5, 1, 3.0, 2, "no"),              # one amflow seed never reaches it
    (3.0, 2, 3.0, 2, "no"),              # as many epochs is not faster
    (2.0, 2, math.nan, 0, "yes"),        # tpa never reaches its own mean final value
    (math.nan, 0, 2.0, 1, "no"),
])
def test_faster_convergence_verdict(am_epochs, am_reaching, tpa_epochs, tpa_reaching, faster):
    (c,) = verdicts.claims(["d"], claims_table(am_epochs, am_reaching, tpa_epochs, tpa_reaching))
    assert c.helps.verdict == "no" and c.faster.verdict == faster
    assert c.faster.amflow_reaching == (am_reaching, 2)
    line = wording.claim_lines([c], None, [])[1]
    assert line.startswith(f"- **AM flow converges faster** on `d`: {faster}. `amflow` reaches `tpa`'s final "
                           f"validation top-1 (57.50%) in ")
    assert f"({am_reaching}/2 seeds), `tpa` in" in line and line.endswith(f"({tpa_reaching}/2 seeds).")


def test_claims_without_amflow_and_tpa_are_not_measured():
    (c,) = verdicts.claims(["d"], claims_table(1.0, 2, 2.0, 2).iloc[:1])
    assert c.helps is None
    assert wording.claim_lines([c], None, [])[:2] == [
        "- `d`: `amflow` and `tpa` are not both in table 1, so the claims are not measured.",
        "- **The camera-matched variant helps**: not measured by this run: the variant ablation is in "
        "`ablations.csv` (`snakemake --cores 8 ablations`)."]


def ablation_rows(rows: list[tuple]) -> pd.DataFrame:
    """(axis, value, dataset, top-1 mean, top-1 std, paired mean, paired std) with 2 seeds each."""
    t = pd.DataFrame(rows, columns=["axis", "value", "dataset", "top1_pct_mean", "top1_pct_std",
                                    "top1_vs_tpa_pct_mean", "top1_vs_tpa_pct_std"])
    return t.assign(n_seeds=2)


def test_variant_results_and_their_two_wordings():
    abl = ablation_rows([
        ("variant", "none", "m", 55.0, 1.0, 0.0, 1.0), ("variant", "static", "m", 46.0, 1.0, -9.0, 1.0),
        ("variant", "aligned", "m", 59.0, 1.0, 4.0, 1.0),
        ("variant", "static", "s", 70.0, 0.5, 0.0, 1.0), ("variant", "aligned", "s", 70.5, 1.0, 0.5, 1.0),
        ("control", "oracle", "m", 50.0, 1.0, -6.0, 1.41), ("control", "uniform", "m", 50.0, 1.0, -6.0, 1.41)])
    moving, static = verdicts.variant_results(abl)
    assert (moving.aligned_vs_static.diff, moving.aligned_vs_static.clear) == (13.0, True)
    assert (moving.best_vs_none.a, moving.best_vs_none.diff) == ("aligned", 4.0)
    assert (static.aligned_vs_static.diff, static.aligned_vs_static.clear) == (0.5, False)   # 0.5 <= 1.0
    assert static.best_vs_none is None
    assert wording.variant_claim([moving, static]) == (
        "on `m`, aligned beats static (46.00%) by 13.00 points; on `s`, aligned beats static (70.00%) by 0.50 points "
        "(within one seed standard deviation: not a clear difference).")
    # The paragraph says the same comparison: a gain within the seed spread is not credited to compensation.
    para = wording.variant_paragraph([moving, static], {"m": "aligned", "s": "aligned"})
    assert ("On `m` (moving camera), aligned reaches 59.00% and static 46.00%: aligned beats static by 13.00 points, "
            "as camera-motion compensation should on a moving camera. Against no AM flow: the better variant, "
            "`aligned`, beats `none` (55.00%) by 4.00 points.") in para
    assert para.endswith("On `s` (moving camera), aligned reaches 70.50% and static 70.00%: aligned beats static by "
                         "0.50 points (within one seed standard deviation: not a clear difference).")
    (oracle,) = verdicts.controls(abl)                        # only the oracle and shuffled controls are claims
    assert (oracle.control, oracle.paired.verdict) == ("oracle", "no")
    assert wording.control_line(oracle).endswith("beats `tpa`: no, so saliency of this kind cannot help on this "
                                                 "benchmark, as far as these seeds tell.")
    assert verdicts.variant_results(abl[abl["axis"] == "control"]) is None


def test_axis_ranges():
    abl = ablation_rows([("tpu", "tcn", "m", 51.0, 1.0, 0, 0), ("tpu", "lstm", "m", 58.25, 1.0, 0, 0),
                         ("tpu", "gru", "m", 58.25, 1.0, 0, 0), ("tpu", "tcn", "s", 40.0, 1.0, 0, 0)])
    m, s = verdicts.axis_ranges(abl)
    assert (m.best, m.worst, m.settings) == ("lstm", "tcn", 3)         # a tie keeps the table's order
    assert (s.best, s.worst, s.settings) == ("tcn", "tcn", 1)
    assert wording.axis_paragraph("tpu", [m, s]) == (
        "On `m`, the best tpu setting is `lstm` (58.25%) and the worst `tcn` (51.00%), a spread of 7.25 points. "
        "On `s`, tpu = tcn reaches 40.00%.")


def test_ranking_counts_ties_and_the_methods_above_frame():
    t = t1_table([("d", "frame", 50.0, 1.0, 2), ("d", "tpa", 60.0, 1.0, 2), ("d", "amflow", 60.0, 3.0, 2),
                  ("d", "aim", 55.0, 1.0, 2)]).assign(am_flow_variant="aligned")
    r = verdicts.ranking("d", t)
    assert r.tied == ["tpa", "amflow"] and r.amflow_rank == 1 and r.above_frame == 3
    assert [c.b for c in r.against] == ["tpa", "aim", "frame"]
    assert wording.ranking_text(r) == (
        "On `d`, `tpa` and `amflow` tie for the best top-1 (60.00%). AM flow (`amflow`, aligned variant) reaches "
        "60.00% and ranks 1 of 4: `amflow` ties with `tpa` (60.00%); `amflow` beats `aim` (55.00%) by 5.00 points; "
        "`amflow` beats `frame` (50.00%) by 10.00 points. The order-blind `frame` baseline reaches 50.00%; 3 of 3 "
        "temporal methods are above it.")
    assert verdicts.ranking("nowhere", t) is None


def test_fair_test_claims_on_a_hand_made_table():
    nan = math.nan
    cols = ["dataset", "integration", "setting", "n_seeds", "top1_vs_tpa_pct_mean", "top1_vs_tpa_pct_std",
            "top1_vs_uniform_pct_mean", "top1_vs_uniform_pct_std", "share_of_footprint_gain_mean",
            "share_of_footprint_gain_std", "footprint_gain_seeds"]
    fair = pd.DataFrame([
        ("m", "pool", "aligned", 2, 2.5, 0.71, nan, nan, 0.24, 0.08, 2),
        ("m", "pool", "footprint", 2, 10.5, 0.71, 11.0, 1.41, 1.0, 0.0, 2),
        ("m", "pool", "uniform", 2, -0.5, 0.71, 0.0, nan, 0.0, nan, 2),
        ("m", "gate", "static", 1, -1.0, nan, nan, nan, nan, nan, nan)], columns=cols)
    probes = {"m": pd.DataFrame({"scores": ["amflow", "footprint"], "val_accuracy": [0.12, 0.21]})}
    claims = verdicts.fair_test_claims(fair, probes)
    assert [(c.integration, c.setting, c.against, c.paired.verdict) for c in claims] == [
        ("pool", "footprint", "tpa", "yes"), ("pool", "footprint", "uniform", "yes"),
        ("pool", "uniform", "tpa", "not resolved"), ("pool", "aligned", "tpa", "yes"),
        ("gate", "static", "tpa", "not resolved")]
    foot, foot_uniform, uniform, aligned, static = claims
    assert (foot.probe, foot_uniform.probe, uniform.probe, static.probe) == (0.21, None, None, 0.12)
    assert aligned.share == (0.24, 0.08, 2) and static.share is None and foot.share is None
    assert wording.fair_claim_line(aligned) == (
        "- On `m` with `pool`: **AM flow helps (aligned variant against tpa)**: yes. +2.50 ± 0.71 points over 2 "
        "seeds; it recovers 0.24 ± 0.08 of the footprint oracle's gain (2 seeds where that oracle gains); a linear "
        "probe on these scores alone reaches 12.0% val top-1.")
    assert wording.fair_claim_line(uniform) == ("- On `m` with `pool`: **uniform scores (no location) beats tpa**: "
                                                "not resolved. -0.50 ± 0.71 points over 2 seeds.")


def test_every_table_display_shows_a_figure_alike():
    row = {"dataset": "d", "method": "m", "n_seeds": 3, "top1_pct_mean": 61.5, "top1_pct_std": 2.25,
           "top1_vs_tpa_pct_mean": math.nan, "top1_vs_tpa_pct_std": math.nan, "epochs_to_target_mean": 2.0,
           "epochs_to_target_std": math.nan, "reaching_target_seeds": 1, "trainable_params": 90000.0,
           "gflops_per_clip": math.nan, "target_val_top1_pct": 57.5}
    t = pd.DataFrame([row])
    rep = display.show(t, [c for c in display.TABLE1 if c.header in ("top-1 (%)", "top-1 − tpa, paired (points)",
                                                                        "seeds reaching it", "trainable params",
                                                                        "GFLOPs/clip")])
    assert rep.iloc[0].tolist() == ["61.50 ± 2.25", "n/a", "1/3", "90000", "n/a"]
    readme_row = display.show(t, display.README_TABLE1).iloc[0].tolist()
    assert readme_row == ["d", "m", "61.50 ± 2.25", "n/a", "2.00 (1/3 seeds)"]
    conv = display.show(t.assign(time_to_target_s_mean=20.46, time_to_target_s_std=math.nan), display.CONVERGENCE)
    assert conv.iloc[0].tolist() == ["d", "m", "57.50", "2.00", "20.5", "1/3"]
    # a row whose target was not measured (no tpa run) shows no count
    assert display.of_seeds(t.assign(reaching_target_seeds=math.nan).iloc[0]) == ""


def test_localisation_files_are_named_by_paths(tmp_path, monkeypatch):
    """The report finds the localise stage's table and figure under the names amflow.paths gives them."""
    monkeypatch.setattr(paths, "LOCALISATION_CSV", "actor.csv")
    monkeypatch.setattr(paths, "LOCALISATION_PNG", "actor.png")
    folder = paths.localisation_dir(tmp_path, "synth_moving")
    folder.mkdir(parents=True)
    (folder / "actor.csv").write_text("method,block,mass_ratio,auc,frames,patches\nstatic,0,2.0,0.8,10,160\n")
    (folder / "actor.png").write_bytes(b"png")
    text = "\n".join(report.localisation_section(small_params(), tmp_path))
    assert "Best at finding the actor: `static` (ROC AUC 0.800" in text
    assert "![synth_moving localisation](synth_moving/localisation/actor.png)" in text


def test_frame_order_and_epochs_to_90_verdicts():
    rows = pd.DataFrame({"method": ["frame", "tpa", "amflow", "aim"],
                         "both_directions_top1_pct_mean": [0.5, 0.0, 12.0, 20.0],
                         "epochs_to_90pct_mean": [3.0, 2.0, 2.0, 1.0]})
    f = verdicts.frame_order("d", rows)
    assert f.users == ["aim", "amflow", "frame"]           # most first; tpa is never right both ways
    assert wording.frame_order_text(f) == (
        "On `d`, 3 of 4 methods are right both ways on some clips (most: `aim`, 20.00%). The `frame` baseline is "
        "right both ways on 0.50% of the clips, although a model that ignores frame order cannot be: check the "
        "evaluation. `amflow` is right both ways on 12.00% (against `tpa` 0.00%, `aim` 20.00%).")
    e = verdicts.epochs_to_90("d", rows)
    assert (e.fewest, e.amflow_fewer, e.amflow_more, e.verdict) == (["aim"], 1, 1, "in part")  # tpa: as many
    assert wording.epochs90_text(e).endswith("Of the 3 other methods, `amflow` needs fewer epochs than 1, as many as "
                                             "1 and more than 1, so the faster-convergence claim holds only in part "
                                             "here.")
    assert verdicts.epochs_to_90("d", rows.iloc[[2, 0]]).verdict == "yes"    # 2 epochs against frame's 3
    assert verdicts.epochs_to_90("d", rows.iloc[[2, 3]]).verdict == "no"
    assert verdicts.epochs_to_90("d", rows.iloc[[0, 1]]).verdict is None     # no amflow
