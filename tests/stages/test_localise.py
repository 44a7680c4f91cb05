"""Localisation of the actor by AM flow and by pixel differences (amflow/stages/localise.py, `amflow localise`).

Hand-made clips with a known answer: a still background and a bright block that moves one patch to
the right between frames; the same under a camera pan of whole pixels.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from amflow import paths
from amflow.stages.localise import (BASELINES, PROBE_SCORES, VARIANTS, auc, label_probe, localisation_metrics, measure,
                             pixel_difference_scores)
from amflow.models import build_backbone
from amflow.params import AmFlowSpec, BackboneSpec

from conftest import ROOT

torch.set_num_threads(1)

S, P, T = 32, 8, 3
N = (S // P) ** 2


def test_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)      # many ties
    positive = rng.random(200) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0)
             for a, b in itertools.product(scores[positive], scores[~positive])]
    assert auc(scores, positive) == pytest.approx(np.mean(pairs))
    assert np.isnan(auc(scores, np.zeros(200, bool)))


def test_metrics_by_hand():
    cover = np.zeros((3, 4))
    cover[:, 0] = 1.0                                        # the actor covers patch 0 of every frame
    peaked = np.tile([4.0, 0, 0, 0], (3, 1))
    metrics = localisation_metrics(peaked, cover)
    assert np.isnan(metrics.pop("auc_distractors"))          # no distractors given
    assert metrics == {"mass_ratio": 4.0, "auc": 1.0, "frames": 3, "patches": 12}
    flat = localisation_metrics(np.ones((3, 4)), cover)
    assert flat["mass_ratio"] == 1.0 and flat["auc"] == 0.5
    # A distractor on patch 1 (and on the actor's patch 0, which stays the actor's): only patch 1 is
    # the negative class of the actor-against-distractors AUC.
    others = np.zeros((3, 4))
    others[:, :2] = 1.0
    assert localisation_metrics(np.tile([4.0, 2.0, 9.0, 9.0], (3, 1)), cover, others)["auc_distractors"] == 1.0
    assert localisation_metrics(np.tile([1.0, 3.0, 0.0, 0.0], (3, 1)), cover, others)["auc_distractors"] == 0.0
    cover[2] = 0                                             # no actor: the frame is left out
    assert localisation_metrics(peaked, cover)["frames"] == 2


def block_clip(pan: int = 0):
    """Background panned by ``pan`` px/frame (a flat grey when still, a texture when panning); an 8 px
    white block at patch (1, t+1).

    Returns video ``[1, T, 3, S, S]``, transforms ``[1, T-1, 3, 3]`` and the block's coverage ``[1, T, S, S]``.
    """
    g = torch.Generator().manual_seed(0)
    world = 0.4 + (0.2 if pan else 0.0) * torch.rand(3, S, S + pan * T, generator=g)
    frames, cover = [], []
    for t in range(T):
        f = world[:, :, pan * t: pan * t + S].clone()
        c = torch.zeros(S, S)
        c[8:16, 8 * (t + 1): 8 * (t + 2)] = 1
        f[:, c > 0] = 1.0
        frames.append(f)
        cover.append(c)
    H = torch.eye(3).repeat(1, T - 1, 1, 1)
    H[..., 0, 2] = -pan
    return torch.stack(frames)[None], H, torch.stack(cover)[None]


def test_pixel_difference_by_hand():
    video, H, cover = block_clip()
    s = pixel_difference_scores(video, (P, P))
    # Frame 0 -> 1: the block leaves patch 5 and enters patch 6, each changing by the same amount.
    assert s.shape == (1, T, N) and torch.equal(s[0, -1], s[0, -2])
    assert s[0, 0, 5] == pytest.approx(8.0) and s[0, 0, 6] == pytest.approx(8.0)
    assert s[0, 0].sum() == pytest.approx(16.0)
    torch.testing.assert_close(pixel_difference_scores(video, (P, P), H), s)   # identity: the same


def hand_answer():
    """Pixel difference on block_clip: per frame half the mass on the block's patch (area 1/16):
    mass ratio 8; the block's patch ties with the one it moves to and beats the other 14: AUC 14.5/15."""
    return 8.0, 14.5 / 15


def test_measure_gives_the_known_answer_for_pixel_differences_and_a_row_per_variant_and_block():
    torch.manual_seed(0)
    bb = build_backbone(BackboneSpec(model="vit_tiny_patch16_224", weights="random",
                                     kwargs=dict(img_size=S, patch_size=P, embed_dim=32, depth=2, num_heads=2)))
    ratio, area_under = hand_answer()
    for pan in (0, 2):
        video, H, cover = block_clip(pan)
        table = measure(bb, [{"video": video, "transforms": H, "coverage": cover}], AmFlowSpec(), [0, 1])
        assert list(table["method"]) == [m for m in VARIANTS for _ in (0, 1)] + list(BASELINES)
        assert table.loc[table["method"].isin(list(VARIANTS)), "block"].tolist() == [0, 1] * len(VARIANTS)
        assert table.loc[table["method"].isin(BASELINES), "block"].isna().all()
        comp = table[table["method"] == "pixel_diff_compensated"].iloc[0]
        plain = table[table["method"] == "pixel_diff"].iloc[0]
        assert comp["frames"] == T and comp["patches"] == T * N
        if pan == 0:
            assert comp["mass_ratio"] == pytest.approx(ratio) and comp["auc"] == pytest.approx(area_under)
            assert plain["mass_ratio"] == pytest.approx(ratio)
        else:
            # Compensated: the background cancels; the block's own patch keeps half the change, and the
            # 4 patches of the column the pan uncovers get the mean score: share (1/2) / (4/3) = 3/8 on
            # 1/16 of the area, ratio 6. The block's patch has the top score, except in the last frame
            # (which reuses the previous pair's scores) where the patch it left outranks it: AUC 44/45.
            assert comp["mass_ratio"] == pytest.approx(6.0, rel=0.01) and comp["auc"] == pytest.approx(44 / 45)
            # Without compensation the moving texture takes its share of the mass.
            assert plain["mass_ratio"] < 0.8 * comp["mass_ratio"]
        assert np.isfinite(table["mass_ratio"]).all() and table["auc"].between(0, 1).all()


def test_label_probe_reads_the_label_from_an_oracle_that_carries_it_and_not_from_uniform_scores():
    """Clips whose actor sits on the patch numbered by the label: the oracle and its footprint carry
    the label; uniform scores carry nothing (the majority class)."""
    torch.manual_seed(0)
    bb = build_backbone(BackboneSpec(model="vit_tiny_patch16_224", weights="random",
                                     kwargs=dict(img_size=S, patch_size=P, embed_dim=32, depth=2, num_heads=2)))
    g = torch.Generator().manual_seed(1)

    def batch(labels):
        cover = torch.zeros(len(labels), T, S, S)
        for i, label in enumerate(labels):
            r, c = divmod(int(label), S // P)
            cover[i, :, r * P:(r + 1) * P, c * P:(c + 1) * P] = 1.0
        return {"video": torch.randn(len(labels), T, 3, S, S, generator=g), "transforms": None,
                "coverage": cover, "label": torch.as_tensor(labels)}

    train = [batch([0, 1, 2, 3, 1, 1] * 2), batch([3, 2, 1, 0, 1, 1] * 2)]   # class 1 the most frequent
    val = [batch([0, 1, 2, 3, 1, 1])]
    probe = label_probe(bb, {"train": train, "val": val}, AmFlowSpec(), "static", 1).set_index("scores")
    assert list(probe.index) == list(PROBE_SCORES)
    assert probe.loc["oracle", "val_accuracy"] == 1.0 and probe.loc["footprint", "val_accuracy"] == 1.0
    assert probe.loc["uniform", "val_accuracy"] == pytest.approx(3 / 6)    # always train's majority class, 1
    assert probe.loc["uniform", "chance"] == pytest.approx(3 / 6)
    assert (probe["features"] == T * N).all() and (probe["train_clips"] == 24).all()


@pytest.mark.slow
def test_localise_stage_from_the_command_line(tmp_path, monkeypatch):
    """The documented chain on the shipped default params, cheapened by --set overrides a user could type."""
    from amflow.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    common = ["--params", str(ROOT / "params" / "default.yaml"), "--dataset", "synth_moving",
              "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"),
              "--set", "datasets.synth_moving.synth.split_sizes={train: 4, val: 6, test: 2}",
              "--set", "backbone.weights=random", "--set", "train.batch_size=4"]
    for stage in ("prepare", "extract", "camera-motion", "ground-truth"):
        assert main([stage, *common]) == 0
    assert main(["localise", *common]) == 0
    out = paths.localisation_dir(paths.results_root(tmp_path / "results", "default"), "synth_moving")
    table = pd.read_csv(out / "localisation.csv")
    assert set(table["method"]) == set(VARIANTS) | set(BASELINES)
    assert len(table) == len(VARIANTS) * 4 + 2 and (table["frames"] > 0).all()
    assert (out / "localisation.png").stat().st_size > 1000
    probe = pd.read_csv(out / "label_probe.csv")
    assert list(probe["scores"]) == list(PROBE_SCORES) and (probe["val_clips"] == 6).all()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("amflow-default-synth_moving")
    run = client.search_runs([exp.experiment_id], filter_string="tags.`amflow.stage` = 'localise'")[0]
    logged = run.data.metrics
    row = table[(table["method"] == "aligned_warp") & (table["block"] == 3)].iloc[0]
    assert logged["aligned_warp.block3.auc"] == pytest.approx(row["auc"], abs=1e-4)
    assert "pixel_diff_compensated.mass_ratio" in logged
    # the check of the camera-motion decision: the variant the dataset's models use, against static
    decision = json.loads((paths.camera_dir(paths.results_root(tmp_path / "results", "default"), "synth_moving")
                           / paths.CAMERA_JSON).read_text())["decision"]
    used = "static" if decision == "static" else "aligned_grid"     # the default alignment
    tags = run.data.tags
    assert tags["amflow.variant_used"] == used
    mean = table[table["block"].notna()].groupby("method")["auc"].mean()
    assert logged["variant_used.mean_auc"] == pytest.approx(mean[used], abs=1e-4)
    beats = max(mean[m] for m in VARIANTS if m != "static") > mean["static"]
    assert tags["amflow.aligned_beats_static"] == str(beats).lower()
