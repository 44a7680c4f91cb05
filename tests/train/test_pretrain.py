"""Single-image pretraining set (labels are what was rendered, never motion) and backbone pretraining
(learns above chance, saves a state dict that loads into a fresh timm model, fails loudly when it
does not learn)."""
from __future__ import annotations

import filecmp
import math
import os

import cv2
import numpy as np
import pytest
import torch

from amflow import io, paths
from amflow.data import pretrain_images as pimg
from amflow.data import scene
from amflow.errors import AmflowError
from amflow.params import PretrainImagesSpec
from amflow.params_io import validate
from amflow.stages.pretrain_images import generate_pretrain_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
cv2.setNumThreads(1)

TINY_VIT = {"model": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2}}


def _params(images=1500, val_images=300, workers=1, **pretrain):
    recipe = {"epochs": 8, "batch_size": 64, "lr": 3e-3, "min_gain_over_chance": 0.05, "seed": 0}
    recipe.update(pretrain)
    return validate({"name": "t", "datasets": {}, "table_datasets": [],
                     "pretrain_images": {"images": images, "val_images": val_images, "seed": 3, "workers": workers},
                     "backbone": TINY_VIT, "pretrain": recipe})


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "images"
    generate_pretrain_images(_params(), out)
    return out


# --------------------------------------------------------------------------- the image set
def _moments(mask):
    h, w = mask.shape
    ys, xs = np.mgrid[:h, :w]
    a = mask.sum()
    cx, cy = (mask * xs).sum() / a, (mask * ys).sum() / a
    mu20, mu02 = (mask * (xs - cx) ** 2).sum() / a, (mask * (ys - cy) ** 2).sum() / a
    mu11 = (mask * (xs - cx) * (ys - cy)).sum() / a
    return a, cx, cy, 0.5 * math.atan2(2 * mu11, mu20 - mu02)


def _axis_deg(shape: str) -> float:
    """Principal-axis angle (degrees, mod 180) of a shape drawn at angle 0."""
    mask = scene.coverage(scene.shape_polygon(shape, (63.5, 63.5), 80.0, 0.0), 128)
    return math.degrees(_moments(mask)[3])


# The label coding of the shapes, as the stored sets use it.
SHAPE_CODES = ["triangle", "L", "arrow", "T", "F", "half_disc"]
# Size bins: thirds of [0.75 * 8, 1.25 * 14] px (easy) and [0.75 * 16, 1.25 * 28] px (standard at 64 px)
# in log scale; the inner edges lo * (hi / lo) ** (1/3) and ** (2/3).
SIZE_EDGES = {("easy", 32): (8.5726, 12.2483), ("standard", 64): (17.1452, 24.4966)}


@pytest.mark.parametrize("difficulty,resolution", [("easy", 32), ("standard", 64)])
def test_labels_are_what_the_image_shows(difficulty, resolution):
    spec = PretrainImagesSpec(difficulty=difficulty, resolution=resolution, seed=5)
    axes = {s: _axis_deg(s) for s in scene.SHAPE_NAMES}
    cell = resolution / 3
    checked = {"position": 0, "colour": 0, "size": 0, "orientation": 0}
    for i in range(120):
        image, lab, mask = pimg.render_still(spec, pimg.still_rng(spec.seed, "train", i))
        area, cx, cy, theta = _moments(mask)
        clipped = mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum() > 1e-3
        assert lab["shape"] == SHAPE_CODES.index(lab["shape_name"])
        # position: the 3x3 cell of the centroid measured on the mask
        edges = np.array([cx + 0.5, cy + 0.5]) / cell
        if not clipped and np.abs(edges - np.round(edges)).min() * cell > 0.3:
            assert lab["position"] == int((cy + 0.5) // cell) * 3 + int((cx + 0.5) // cell)
            checked["position"] += 1
        # colour: hue of the actor's pixels in the image
        core = mask > 0.999
        if core.sum() >= 4:
            rgb = image[core].mean(axis=0).astype(np.float32) / 255
            hue = float(cv2.cvtColor(rgb[None, None], cv2.COLOR_RGB2HSV)[0, 0, 0])
            d = (hue + 30) % 60
            if min(d, 60 - d) > 8:  # not near a bin edge (30, 90, ... degrees)
                assert lab["colour"] == int(((hue + 30) % 360) // 60), (hue, lab)
                checked["colour"] += 1
        # size: the mask's area is the shape's area at the labelled apparent size
        if not clipped:
            unit = scene.coverage(scene.shape_polygon(lab["shape_name"], (63.5, 63.5), 80.0, 0.0), 128).sum() / 6400
            assert area == pytest.approx(unit * lab["size_px"] ** 2, rel=0.08)
            measured = math.sqrt(area / unit)
            size_edges = SIZE_EDGES[difficulty, resolution]
            if min(abs(measured / e - 1) for e in size_edges) > 0.06:  # area within 8%: size within 4%
                assert lab["size"] == sum(measured > e for e in size_edges), (measured, lab)
            checked["size"] += 1
        # orientation: the mask's principal axis is the shape's, turned by the labelled angle
        if not clipped and lab["size_px"] > 9:
            diff = (math.degrees(theta) - axes[lab["shape_name"]] - lab["angle_deg"]) % 180
            assert min(diff, 180 - diff) < 8, (lab, diff)
            if abs(((lab["angle_deg"] + 22.5) % 45) - 22.5) < 22.49:  # the csv rounds angles to 0.01 degree
                assert lab["orientation"] == round(lab["angle_deg"] / 45) % 8   # 8 bins centred on 0, 45, ...
            checked["orientation"] += 1
    assert min(checked.values()) > 25, checked


def test_stored_set_matches_the_renderer_and_is_parallel_safe(images_dir, tmp_path):
    info = io.read_json(images_dir / "info.json")
    assert [a["name"] for a in info["attributes"]] == ["shape", "colour", "position", "orientation", "size"]
    assert [a["classes"] for a in info["attributes"]] == [6, 6, 9, 8, 3]
    assert info["counts"] == {"train": 1500, "val": 300}
    assert not any("motion" in a["name"] or a["name"] in ("label", "class") for a in info["attributes"])
    images, labels = pimg.load_split(images_dir, "train")
    assert images.shape == (1500, 32, 32, 3) and images.dtype == np.uint8
    for a in info["attributes"]:  # every class of every attribute occurs
        assert labels[a["name"]].nunique() == a["classes"], a["name"]
    spec = _params().pretrain_images
    for i in (0, 7, 8, 777):
        image, lab, _ = pimg.render_still(spec, pimg.still_rng(spec.seed, "train", i),
                                          pimg.still_texture(spec, "train", i))
        assert np.array_equal(images[i], image)
        assert all(labels.loc[i, k] == lab[k] for k in pimg.ATTRIBUTES)
    # Two workers write the same bytes.
    generate_pretrain_images(_params(workers=2), tmp_path / "par")
    for name in ("images_train.npy", "images_val.npy", "labels_train.csv", "labels_val.csv", "info.json"):
        assert filecmp.cmp(images_dir / name, tmp_path / "par" / name, shallow=False), name


def test_rerun_is_skipped_and_seed_changes_images(images_dir, tmp_path):
    stamp = (images_dir / "images_train.npy").stat().st_mtime_ns
    generate_pretrain_images(_params(), images_dir)
    assert (images_dir / "images_train.npy").stat().st_mtime_ns == stamp
    p = _params(images=100, val_images=100)
    a = tmp_path / "a"
    generate_pretrain_images(p, a)
    p.pretrain_images.seed = 4
    generate_pretrain_images(p, tmp_path / "b")
    assert not np.array_equal(np.load(a / "images_val.npy"), np.load(tmp_path / "b" / "images_val.npy"))


# --------------------------------------------------------------------------- pretraining
def _fresh_model():
    import timm

    return timm.create_model(TINY_VIT["model"], pretrained=False, num_classes=0, **TINY_VIT["kwargs"])


def test_tiny_pretraining_learns_and_saves_a_loadable_backbone(images_dir, tmp_path):
    from safetensors.torch import load_file

    from amflow.stages.pretrain_backbone import pretrain_backbone

    out = tmp_path / "backbone"
    metrics = pretrain_backbone(_params(), images_dir, out)
    attrs = metrics["attributes"]
    assert metrics["mean_gain_over_chance"] >= 0.05, attrs
    assert attrs["colour"]["accuracy"] > attrs["colour"]["chance"] + 0.2, attrs
    assert io.read_json(out / "metrics.json") == json_roundtrip(metrics)
    for a in attrs.values():
        assert 0 < a["chance"] < 1 and a["chance"] >= a["uniform_chance"] - 1e-9

    state = load_file(str(out / "backbone.safetensors"))
    assert not any(k.startswith(("heads", "head.")) for k in state)  # the backbone alone
    model = _fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert any(not torch.equal(before[k], state[k]) for k in state)  # trained, not a fresh init

    from amflow.models.backbone import build_backbone  # the loader the video models use

    loaded = build_backbone(_params().backbone, out / "backbone.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in state)


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj))


def test_pretraining_is_deterministic(images_dir, tmp_path):
    from amflow.train.pretraining import train_attribute_model

    p = _params(epochs=1)
    a, ma, _ = train_attribute_model(p, images_dir, tmp_path / "a")
    b, mb, _ = train_attribute_model(p, images_dir, tmp_path / "b")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert ma["attributes"] == mb["attributes"] and ma["epoch_loss"] == mb["epoch_loss"]
    p.pretrain.seed = 1
    c, _, _ = train_attribute_model(p, images_dir, tmp_path / "c")
    assert any(not torch.equal(a.state_dict()[k], v) for k, v in c.state_dict().items())


def test_a_backbone_that_did_not_learn_is_an_error_and_is_not_saved(images_dir, tmp_path):
    from amflow.stages.pretrain_backbone import pretrain_backbone

    out = tmp_path / "backbone"
    out.mkdir()
    (out / "backbone.safetensors").write_bytes(b"stale")  # from an earlier run: must not survive
    (out / "metrics.json").write_text("{}")
    # No accuracy can beat chance by 1.0: the honest failure path.
    with pytest.raises(AmflowError, match="did not learn.*min_gain_over_chance"):
        pretrain_backbone(_params(epochs=1, min_gain_over_chance=1.0), images_dir, out)
    assert not (out / "backbone.safetensors").exists() and not (out / "metrics.json").exists()


def test_image_size_mismatch_names_the_keys(images_dir, tmp_path):
    from amflow.stages.pretrain_backbone import pretrain_backbone

    p = _params(epochs=1)
    p.backbone.kwargs = {**TINY_VIT["kwargs"], "img_size": 64}
    with pytest.raises(AmflowError, match="img_size"):
        pretrain_backbone(p, images_dir, tmp_path / "x")


def test_missing_image_set_says_which_stage_to_run(tmp_path):
    from amflow.stages.pretrain_backbone import pretrain_backbone

    with pytest.raises(FileNotFoundError, match="pretrain-images"):
        pretrain_backbone(_params(), tmp_path / "nothing", tmp_path / "out")


def test_a_zero_threshold_disables_the_check(images_dir, tmp_path):
    from amflow.stages.pretrain_backbone import pretrain_backbone

    # A backbone that learns nothing (rate 1e-9) does worse than chance; a threshold of 0 still lets it through.
    pretrain_backbone(_params(epochs=1, lr=1e-9, min_gain_over_chance=0.0), images_dir, tmp_path / "b")
    assert io.read_json(tmp_path / "b" / "metrics.json")["mean_gain_over_chance"] < 0
    assert (tmp_path / "b" / "backbone.safetensors").is_file()


def _same_backbone(a_dir, b_dir) -> bool:
    from safetensors.torch import load_file

    a, b = load_file(str(a_dir / "backbone.safetensors")), load_file(str(b_dir / "backbone.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log_without_time(run_dir):
    import pandas as pd

    return pd.read_csv(run_dir / paths.TRAIN_LOG).drop(columns=["epoch_time", "clips_per_s"])


def _interrupted_run_resumes_bitwise_equal(p, images_dir, tmp_path, monkeypatch):
    """A pretraining killed after epoch 1 (a SLURM time limit) leaves the trainer's training state, and
    the rerun resumes it and ends with exactly the weights, losses and val figures of an uninterrupted run."""
    import pandas as pd

    from amflow.stages.pretrain_backbone import pretrain_backbone

    whole = tmp_path / "whole"
    expected = pretrain_backbone(p, images_dir, whole)
    part = tmp_path / "part"
    monkeypatch.setenv("AMFLOW_STOP_AFTER_EPOCH", "1")
    assert pretrain_backbone(p, images_dir, part) == {"status": "stopped"}
    assert (part / paths.TRAIN_STATE).is_file() and not (part / "backbone.safetensors").exists()
    assert torch.load(part / paths.TRAIN_STATE, weights_only=True)["epoch"] == 1
    monkeypatch.delenv("AMFLOW_STOP_AFTER_EPOCH")
    metrics = pretrain_backbone(p, images_dir, part)
    assert _same_backbone(whole, part)
    timing = ("train_time_s", "train_cpu_s", "images_per_s")
    assert {k: v for k, v in metrics.items() if k not in timing} == {k: v for k, v in expected.items()
                                                                    if k not in timing}
    assert metrics["device"] == "cpu" and len(metrics["epoch_loss"]) == 2
    pd.testing.assert_frame_equal(_log_without_time(whole), _log_without_time(part))
    assert (part / paths.CHECKPOINT).is_file()  # complete: published as the video runs' checkpoint is


def test_interrupted_pretraining_resumes_bitwise_equal(images_dir, tmp_path, monkeypatch):
    _interrupted_run_resumes_bitwise_equal(_params(epochs=2, min_gain_over_chance=0.0), images_dir, tmp_path,
                                           monkeypatch)


def test_interrupted_pretraining_on_class_sets_resumes_bitwise_equal(tmp_path, monkeypatch):
    """The clutter style's labels are class sets (multi-label heads, binary cross-entropies): the same
    resume, and accuracies over class memberships."""
    p = _params(images=256, val_images=128, epochs=2, min_gain_over_chance=0.0, batch_size=48)
    p.pretrain_images.difficulty = "clutter"
    images = tmp_path / "clutter"
    generate_pretrain_images(p, images)
    assert all(a["multi_label"] for a in io.read_json(images / "info.json")["attributes"])
    _interrupted_run_resumes_bitwise_equal(p, images, tmp_path, monkeypatch)
    metrics = io.read_json(tmp_path / "whole" / "metrics.json")
    assert all(a["uniform_chance"] == 0.5 and 0.5 <= a["chance"] < 1 for a in metrics["attributes"].values())


def test_a_rerun_of_a_finished_pretraining_does_not_train_again(images_dir, tmp_path, capsys):
    """The finished training state stays, as a video run's does: the rerun of the same settings (outputs
    lost, say) writes the same backbone and accuracies from it without training."""
    from amflow.stages.pretrain_backbone import pretrain_backbone

    p = _params(epochs=1, min_gain_over_chance=0.0)
    first = pretrain_backbone(p, images_dir, tmp_path / "b")
    (tmp_path / "first").mkdir()
    (tmp_path / "b" / "backbone.safetensors").rename(tmp_path / "first" / "backbone.safetensors")
    capsys.readouterr()
    again = pretrain_backbone(p, images_dir, tmp_path / "b")
    err = capsys.readouterr().err
    assert "from epoch 1" in err and "epoch 1/1:" not in err  # resumed after its last epoch: none trained
    assert again["attributes"] == first["attributes"] and again["epoch_loss"] == first["epoch_loss"]
    assert _same_backbone(tmp_path / "first", tmp_path / "b")


def test_a_pretraining_state_of_other_settings_is_moved_aside(images_dir, tmp_path, monkeypatch, capsys):
    """The trainer's policy: a state written under other settings (here the learning rate) is not resumed
    but moved to train_state.stale.pt, with a line naming the setting; the run starts from scratch and
    equals a fresh run of the new settings."""
    from amflow.stages.pretrain_backbone import pretrain_backbone

    part = tmp_path / "part"
    monkeypatch.setenv("AMFLOW_STOP_AFTER_EPOCH", "1")
    pretrain_backbone(_params(epochs=2, min_gain_over_chance=0.0), images_dir, part)
    monkeypatch.delenv("AMFLOW_STOP_AFTER_EPOCH")
    old_state = (part / paths.TRAIN_STATE).read_bytes()
    other = _params(epochs=2, min_gain_over_chance=0.0, lr=1e-3)
    capsys.readouterr()
    pretrain_backbone(other, images_dir, part)
    err = capsys.readouterr().err
    assert f"{part / paths.TRAIN_STATE}: written with a different params.pretrain.lr (0.003, now 0.001)" in err
    assert "moved it to train_state.stale.pt" in err
    assert (part / "train_state.stale.pt").read_bytes() == old_state
    pretrain_backbone(other, images_dir, tmp_path / "fresh")
    assert _same_backbone(tmp_path / "fresh", part)
