"""The camera-motion stage: the classification rule, the decision, motion.npz, the json and plot,
MLflow logging, read_decision / resolve_variant, and SynthMotion static vs moving cameras."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from amflow import paths
from amflow.camera import rules
from amflow.stages import camera_motion as stage
from amflow.data.frame_cache import FrameCache, write_cache
from amflow.errors import AmflowError
from amflow.params_io import load_params

from conftest import ROOT


def texture(size: int, seed: int, feature: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), feature)
    return np.clip((t - t.mean()) / t.std() * 50 + 128, 0, 255).astype(np.uint8)


def panning_video(n: int, size: int, velocity: tuple[float, float], seed: int) -> np.ndarray:
    """A camera panning at ``velocity`` px/frame over a random texture (content moves by -velocity)."""
    world = texture(4 * size, seed)
    frames = []
    for t in range(n):
        m = np.array([[1, 0, 1.5 * size + velocity[0] * t], [0, 1, 1.5 * size + velocity[1] * t]], np.float64)
        frames.append(cv2.warpAffine(world, m, (size, size), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR))
    return np.stack(frames)


def params(**camera):
    p = load_params(ROOT / "params" / "default.yaml")
    cm = p.camera_motion.model_copy(update=camera)
    return p.model_copy(update={"camera_motion": cm})


# Tiny cache: 4 static and 3 moving train videos, one moving val video, one black test video.
VELOCITIES = [(0, 0), (0.8, 0.3), (0, 0), (-0.6, 0.9), (0, 0), (1.0, 0.0), (0, 0), (0.5, -0.5), (0, 0)]
SPLITS = ["train"] * 7 + ["val", "test"]
LENGTHS = [9, 10, 11, 12, 9, 10, 11, 12, 8]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("camera") / "frames"
    videos = []
    for i, (v, split, n) in enumerate(zip(VELOCITIES, SPLITS, LENGTHS)):
        frames = panning_video(n, 32, v, seed=i)
        if i == 8:
            frames[:] = 0  # a black video: no valid pair
        videos.append({"video_id": f"vid{i}", "split": split, "label": i % 3, "frames": frames})
    write_cache(d, videos)
    return d


# --------------------------------------------------------------------------- the rule
def test_rule_functions():
    d = np.array([0.02, 0.001, 0.03, 0.5])
    v = np.array([True, True, True, False])
    assert rules.video_displacement(d, v) == pytest.approx(0.02)  # median of the valid ones only
    assert np.isnan(rules.video_displacement(d, np.zeros(4, bool)))
    assert rules.is_moving(0.02, 0.01) and not rules.is_moving(0.005, 0.01)
    assert not rules.is_moving(float("nan"), 0.01)
    moving = np.array([True, True, False, False, False])
    evidence = np.array([True, True, True, True, False])
    assert rules.decide(moving, evidence, 0.5) == ("static", 0.5)  # share must exceed the bar
    assert rules.decide(moving, evidence, 0.4) == ("aligned", 0.5)
    assert rules.decide(np.zeros(2, bool), np.zeros(2, bool), 0.5) == ("static", 0.0)


def test_draw_sample_is_seeded_and_respects_the_split(tiny_cache):
    m = FrameCache(tiny_cache).manifest
    spec = params(sample_videos=5, pairs_per_video=4, seed=3).camera_motion
    a, b = stage.draw_sample(m, spec), stage.draw_sample(m, spec)
    assert [(p, q.tolist()) for p, q in a] == [(p, q.tolist()) for p, q in b]
    assert len(a) == 5 and all(m.at[p, "split"] == "train" for p, _ in a)
    for pos, pairs in a:
        assert len(pairs) == 4 and len(set(pairs.tolist())) == 4
        assert pairs.min() >= 0 and pairs.max() <= m.at[pos, "num_frames"] - 2
    other = stage.draw_sample(m, params(sample_videos=5, pairs_per_video=4, seed=4).camera_motion)
    assert [p for p, _ in other] != [p for p, _ in a] or [q.tolist() for _, q in other] != [q.tolist() for _, q in a]
    everything = stage.draw_sample(m, params(sample_videos=100, sample_split="all").camera_motion)
    assert [p for p, _ in everything] == list(range(len(m)))
    assert all(len(q) == min(8, n - 1) for (_, q), n in zip(everything, LENGTHS))


# --------------------------------------------------------------------------- the stage
def test_stage_end_to_end(tiny_cache, tmp_path):
    out = tmp_path / "results" / "tiny"
    motion_path = tmp_path / "motion" / "tiny.npz"
    p = params(sample_videos=100, pairs_per_video=5, moving_threshold=0.005)
    summary = stage.run_camera_motion(p, "tiny", tiny_cache, out, motion_path=motion_path, track=False,
                                      workers=1, progress=False)
    cache = FrameCache(tiny_cache)
    m = cache.manifest
    total = int((m["global_start"] + m["num_frames"]).max())

    # motion.npz matches the manifest
    with np.load(motion_path) as z:
        transforms, valid, moving = z["transforms"], z["valid"], z["video_moving"]
        assert transforms.shape == (total, 3, 3) and transforms.dtype == np.float32
        assert valid.shape == (total,) and valid.dtype == bool
        assert moving.shape == (len(m),) and moving.dtype == bool
        assert z["video_id"].tolist() == m["video_id"].tolist()
    eye = np.eye(3, dtype=np.float32)
    for pos, row in m.iterrows():
        g0, n = int(row.global_start), int(row.num_frames)
        last = g0 + n - 1
        np.testing.assert_array_equal(transforms[last], eye)  # identity on each video's last frame
        assert not valid[last]
        np.testing.assert_array_equal(transforms[g0:last][~valid[g0:last]], np.broadcast_to(eye, (int((~valid[g0:last]).sum()), 3, 3)))
        vx, vy = VELOCITIES[pos]
        if pos == 8:
            assert not valid[g0:last].any() and not moving[pos]
            continue
        assert valid[g0:last].all()
        # content moves by -velocity: the estimated shift is within 0.1 px of it
        np.testing.assert_allclose(transforms[g0:last, 0, 2], -vx, atol=0.1)
        np.testing.assert_allclose(transforms[g0:last, 1, 2], -vy, atol=0.1)
        assert moving[pos] == (vx != 0 or vy != 0)

    # the sample is the train split; the json is complete and consistent
    saved = json.loads((out / paths.CAMERA_JSON).read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [v["video_id"] for v in saved["videos"]] == [f"vid{i}" for i in range(7)]
    assert [v["moving"] for v in saved["videos"]] == [VELOCITIES[i] != (0, 0) for i in range(7)]
    assert saved["counts"] == {"videos": 7, "moving": 3, "static": 4, "without_valid_pairs": 0, "pairs": 35,
                               "invalid_pairs": 0}
    assert saved["share_moving"] == pytest.approx(3 / 7)
    assert saved["decision"] == "static"  # 3/7 is not above 0.5
    assert saved["thresholds"]["moving_threshold"] == 0.005
    assert saved["all_videos"]["videos"] == 9 and saved["all_videos"]["moving"] == 4
    assert saved["all_videos"]["without_valid_pairs"] == 1
    assert saved["all_videos"]["invalid_pairs"] == LENGTHS[8] - 1
    assert set(saved["all_videos"]["invalid_reasons"]) == {"textureless"}
    for v in saved["videos"]:
        assert set(v) >= {"video_id", "displacement", "moving", "invalid_pairs"}
    # the plot is a PNG, and the json (which marks completion) came last
    png = (out / paths.CAMERA_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getmtime(out / paths.CAMERA_JSON) >= os.path.getmtime(out / paths.CAMERA_PNG)
    assert os.path.getmtime(out / paths.CAMERA_PNG) >= os.path.getmtime(motion_path)
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporaries left
    assert rules.read_decision(out) == "static"


def test_thresholds_change_the_decision(tiny_cache, tmp_path, monkeypatch):
    # The transforms do not depend on the thresholds: estimate once, then only the rule reruns.
    computed = stage.compute_all(tiny_cache, "similarity", rules.settings_from(params().camera_motion), workers=1,
                                 progress=False)
    monkeypatch.setattr(stage, "compute_all", lambda *a, **k: computed)

    def run(**camera):
        p = params(sample_videos=100, pairs_per_video=4, **camera)
        return stage.run_camera_motion(p, "tiny", tiny_cache, tmp_path / "r", motion_path=tmp_path / "m.npz",
                                       track=False, workers=1, progress=False)

    # Pans are 0.7 to 1.1 px per frame on a 45 px diagonal (0.015 to 0.024); static ~0.
    high = run(moving_threshold=0.1)
    assert high["decision"] == "static" and high["counts"]["moving"] == 0
    low = run(moving_threshold=0.005, dataset_moving_share=0.4)
    assert low["decision"] == "aligned" and low["counts"]["moving"] == 3
    same = run(moving_threshold=0.005)  # 3 of 7 moving: not above the 0.5 share
    assert same["decision"] == "static" and same["share_moving"] == pytest.approx(3 / 7)
    with np.load(tmp_path / "m.npz") as z:  # motion.npz follows the same rule and threshold
        assert z["video_moving"].tolist() == [v != (0, 0) for v in VELOCITIES[:8]] + [False]
    # 0.02 of the diagonal (0.9 px) separates the pans of 1.08 and 1.0 px from those of 0.85 and 0.71 px.
    between = run(moving_threshold=0.02, dataset_moving_share=0.1)
    assert between["counts"]["moving"] == 2 and between["decision"] == "aligned"
    with np.load(tmp_path / "m.npz") as z:
        assert np.flatnonzero(z["video_moving"]).tolist() == [3, 5]


def test_parallel_workers_give_the_same_file(tiny_cache, tmp_path):
    p = params(sample_videos=4)
    one = stage.run_camera_motion(p, "tiny", tiny_cache, tmp_path / "a", motion_path=tmp_path / "a.npz",
                                  track=False, workers=1, progress=False)
    two = stage.run_camera_motion(p, "tiny", tiny_cache, tmp_path / "b", motion_path=tmp_path / "b.npz",
                                  track=False, workers=2, progress=False)
    assert one["videos"] == two["videos"]
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        for key in ("transforms", "valid", "video_moving"):
            np.testing.assert_array_equal(a[key], b[key])


def test_default_motion_path_and_missing_cache(tiny_cache, tmp_path):
    import shutil

    frames = tmp_path / "frames"
    shutil.copytree(tiny_cache, frames)
    stage.run_camera_motion(params(sample_videos=2), "tiny", frames, tmp_path / "out", track=False, workers=1,
                            progress=False)
    assert (tmp_path / "out" / paths.MOTION_NPZ).exists() and not (frames / paths.MOTION_NPZ).exists()
    with pytest.raises(AmflowError, match="extract"):
        stage.run_camera_motion(params(), "tiny", tmp_path / "nowhere", tmp_path / "out2", track=False)
    assert not (tmp_path / "out2" / paths.CAMERA_JSON).exists()


def test_very_short_videos_and_stale_decision(tmp_path, monkeypatch):
    """Videos of one and two frames (no pair / one pair) and a sample without any valid pair: no crash,
    identities, and a json that says so. A decision left from an earlier run is removed first."""
    d = tmp_path / "frames"
    write_cache(d, [{"video_id": "one", "split": "train", "label": 0, "frames": panning_video(1, 32, (1, 0), 0)},
                    {"video_id": "two", "split": "train", "label": 0,
                     "frames": np.zeros((2, 32, 32, 3), np.uint8)},
                    {"video_id": "pan", "split": "test", "label": 1, "frames": panning_video(3, 32, (1, 0), 1)}])
    out = tmp_path / "out"
    out.mkdir()
    (out / paths.CAMERA_JSON).write_text(json.dumps({"decision": "aligned"}))

    class Stop(Exception):
        pass

    def fail(*a, **k):
        raise Stop

    with monkeypatch.context() as m:  # the run stops after motion.npz, before the plot and the json
        m.setattr("amflow.camera.plot.plot_displacements", fail)
        with pytest.raises(Stop):
            stage.run_camera_motion(params(), "short", d, out, track=False, workers=1, progress=False)
    assert not (out / paths.CAMERA_JSON).exists()  # the stale decision is gone

    summary = stage.run_camera_motion(params(), "short", d, out, track=False, workers=1, progress=False)
    assert summary["counts"]["videos"] == 2 and summary["counts"]["without_valid_pairs"] == 2
    assert summary["decision"] == "static" and summary["share_moving"] == 0.0
    assert [v["displacement"] for v in summary["videos"]] == [None, None]
    with np.load(out / paths.MOTION_NPZ) as z:
        assert z["transforms"].shape == (6, 3, 3)
        assert z["valid"].tolist() == [False, False, False, True, True, False]
        assert z["video_moving"].tolist() == [False, False, True]
        np.testing.assert_array_equal(z["transforms"][:3], np.tile(np.eye(3, dtype=np.float32), (3, 1, 1)))
    assert (out / paths.CAMERA_PNG).exists()


def test_mlflow_logging(tiny_cache, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may land in the project folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AMFLOW_TRACKING", "1")
    summary = stage.run_camera_motion(params(sample_videos=3, moving_threshold=0.01), "synth_static", tiny_cache,
                                      tmp_path / "out", motion_path=tmp_path / "m.npz", track=True, workers=1,
                                      progress=False)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("amflow-default-synth_static")       # <prefix>-<params name>-<dataset>
    assert exp is not None
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.run_name == "camera_motion" and run.info.status == "FINISHED"
    assert run.data.tags["amflow.stage"] == "camera_motion"
    assert run.data.params["camera_motion.moving_threshold"] == "0.01"  # its identity: amflow.identity.camera_motion
    assert run.data.metrics["share_moving"] == pytest.approx(summary["share_moving"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"camera_motion.json", "camera_motion.png"} <= arts
    saved = json.loads((tmp_path / "out" / paths.CAMERA_JSON).read_text())
    assert saved["mlflow_run_id"] == run.info.run_id
    monkeypatch.setenv("AMFLOW_TRACKING", "0")  # the switch of amflow.tracking turns it off
    off = stage.run_camera_motion(params(sample_videos=3), "synth_static", tiny_cache, tmp_path / "out",
                                  motion_path=tmp_path / "m.npz", track=True, workers=1, progress=False)
    assert "mlflow_run_id" not in off
    assert len(client.search_runs([exp.experiment_id])) == 1


# --------------------------------------------------------------------------- consumers
def test_read_decision_and_resolve_variant(tmp_path):
    with pytest.raises(AmflowError, match="camera-motion"):
        rules.read_decision(tmp_path)
    with pytest.raises(AmflowError, match="camera-motion"):
        rules.resolve_variant("auto", tmp_path)
    (tmp_path / paths.CAMERA_JSON).write_text(json.dumps({"decision": "aligned"}))
    assert rules.read_decision(tmp_path) == "aligned"
    assert rules.resolve_variant("auto", tmp_path) == ("aligned", False)
    assert rules.resolve_variant("auto_per_video", tmp_path) == ("aligned", True)
    for v in ("static", "aligned", "none"):
        assert rules.resolve_variant(v, tmp_path / "missing") == (v, False)  # no file needed
    with pytest.raises(AmflowError):
        rules.resolve_variant("sometimes", tmp_path)
    (tmp_path / paths.CAMERA_JSON).write_text(json.dumps({"decision": "wobbly"}))
    with pytest.raises(AmflowError, match="rerun"):
        rules.read_decision(tmp_path)
    (tmp_path / paths.CAMERA_JSON).write_text("{not json")
    with pytest.raises(AmflowError):
        rules.read_decision(tmp_path)


def localisation_table(auc: dict) -> "pd.DataFrame":
    """A localisation table (``amflow localise``'s columns) with blocks 0 and 1 at auc -/+ 0.01."""
    import pandas as pd

    rows = [{"method": m, "block": b, "mass_ratio": 2.0, "auc": a + (0.01 if b else -0.01)}
            for m, a in auc.items() for b in (0, 1)]
    return pd.DataFrame(rows + [{"method": "pixel_diff", "block": None, "mass_ratio": 2.0, "auc": 0.99}])


def test_localisation_evidence_for_the_variant_a_dataset_uses():
    table = localisation_table({"static": 0.80, "aligned_grid": 0.82, "aligned_warp": 0.70, "aligned_warp_fill": 0.79})
    ev = rules.localisation_evidence("aligned", "grid", table)
    assert (ev["used"], ev["best_aligned"], ev["aligned_beats_static"], ev["used_at_least_static"]) == \
        ("aligned_grid", "aligned_grid", True, True)
    assert ev["used_auc"] == pytest.approx(0.82) and ev["static_auc"] == pytest.approx(0.80)
    assert ev["sentence"] == ("the variant used, `aligned_grid`, localises the actor at least as well as `static` "
                              "(ROC AUC 0.820 against 0.800, mean over blocks)")
    ev = rules.localisation_evidence("aligned", "warp_fill", table)
    assert (ev["aligned_beats_static"], ev["used_at_least_static"]) == (True, False)
    assert ev["sentence"].endswith("worse than `static` (ROC AUC 0.790 against 0.800, mean over blocks); the best "
                                   "aligned variant is `aligned_grid` (0.820)")
    # No aligned variant beats static: the record says so, whatever the decision.
    worse = localisation_table({"static": 0.85, "aligned_grid": 0.82, "aligned_warp_fill": 0.84})
    ev = rules.localisation_evidence("aligned", "grid", worse)
    assert not ev["aligned_beats_static"] and "no aligned variant beats `static` (the best, `aligned_warp_fill`, " \
        "reaches 0.840)" in ev["sentence"]
    ev = rules.localisation_evidence("static", "grid", worse)
    assert ev["used"] == "static" and ev["used_at_least_static"]
    assert ev["sentence"] == ("`static` is used (ROC AUC 0.850, mean over blocks; the best aligned variant, "
                              "`aligned_warp_fill`, 0.840)")
    with pytest.raises(AmflowError, match="aligned_warp.*rerun `amflow localise`"):
        rules.localisation_evidence("aligned", "warp", worse)


# --------------------------------------------------------------------------- SynthMotion
CLIPS = 40


def _synth(name: str):
    synthmotion = pytest.importorskip("amflow.data.sources.synthmotion")
    p = load_params(ROOT / "params" / "default.yaml")
    spec = p.datasets[name].synth
    for i in range(CLIPS):
        frames, info = synthmotion.render_clip(spec, i % len(synthmotion.CLASSES), synthmotion.clip_rng(spec.seed, "train", i))
        yield frames, info


@pytest.fixture(scope="module")
def synth_results():
    """Per configuration: displacements of 40 clips (8 sampled pairs each, as the stage does) and the
    corner errors of the estimated transforms against the generator's true camera transforms."""
    p = load_params(ROOT / "params" / "default.yaml")
    spec = p.camera_motion
    settings = rules.settings_from(spec)
    rng = np.random.default_rng(0)
    out = {}
    for name in ("synth_static", "synth_moving"):
        disp, errors, invalid = [], [], 0
        for frames, info in _synth(name):
            h, w = frames.shape[1:3]
            pairs = np.sort(rng.choice(len(frames) - 1, spec.pairs_per_video, replace=False))
            motion = rules.pair_motion(frames, pairs, spec.model, settings)
            invalid += int((~motion.valid).sum())
            disp.append(rules.video_displacement(motion.displacement, motion.valid))
            c = np.array([[0, w - 1, w - 1, 0], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], np.float64)
            for matrix, valid, t in zip(motion.transforms, motion.valid, pairs):
                if valid:
                    a, b = matrix.astype(np.float64) @ c, info["frame_to_next"][t] @ c
                    errors.append(np.linalg.norm(a[:2] / a[2] - b[:2] / b[2], axis=0).max())
        out[name] = dict(disp=np.array(disp), errors=np.array(errors), invalid=invalid)
        e = out[name]["errors"]
        print(f"\n{name}: displacement quantiles (0, 5, 50, 95, 100%) "
              f"{np.round(np.quantile(out[name]['disp'], [0, .05, .5, .95, 1]), 4).tolist()}; corner error vs "
              f"truth median {np.median(e):.3f} px, p95 {np.quantile(e, .95):.3f} px, max {e.max():.3f} px; "
              f"invalid pairs {invalid}/{CLIPS * spec.pairs_per_video}")
    return out


# Measured (40 clips each, 32 px easy): static 0.0006-0.0042, moving 0.0066-0.0174 of the diagonal.
# The camera of synth_moving pans only 0.2-0.3 px per frame (plus 0.3 px shake), so 0.01 (the first
# default) would call about a third of the moving clips static; 0.005 sits between the two groups.
SYNTH_THRESHOLD = 0.005


def test_synthmotion_static_and_moving_cameras(synth_results):
    static, moving = synth_results["synth_static"]["disp"], synth_results["synth_moving"]["disp"]
    assert np.mean([not rules.is_moving(d, SYNTH_THRESHOLD) for d in static]) >= 0.95
    assert np.mean([rules.is_moving(d, SYNTH_THRESHOLD) for d in moving]) >= 0.95
    spec = load_params(ROOT / "params" / "default.yaml").camera_motion
    for name, expected in (("synth_static", "static"), ("synth_moving", "aligned")):
        d = synth_results[name]["disp"]
        for threshold in {SYNTH_THRESHOLD, spec.moving_threshold}:  # also with the params' own threshold
            moving_flags = np.array([rules.is_moving(x, threshold) for x in d])
            assert rules.decide(moving_flags, np.isfinite(d), spec.dataset_moving_share)[0] == expected


def test_synthmotion_transforms_match_the_true_camera(synth_results):
    for name in ("synth_static", "synth_moving"):
        r = synth_results[name]
        assert r["invalid"] <= 0.02 * CLIPS * 8
        assert np.median(r["errors"]) < 0.2 and np.quantile(r["errors"], 0.95) < 0.5
