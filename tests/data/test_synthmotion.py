"""SynthMotion: every class moves as its label says (measured from the rendered frames and masks, in
world coordinates), the camera moves only in synth_moving, generation is deterministic and
parallel-safe, and decord and PyAV read the encoded files identically."""
from __future__ import annotations

import dataclasses
import filecmp
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from amflow.data import annotations as ann
from amflow.data import scene
from amflow.data.sources import synthmotion as sm
from amflow.errors import AmflowError
from amflow.params import SynthSpec
from amflow.params_io import validate

cv2.setNumThreads(1)

CONFIGS = [("static", "easy", 32), ("moving", "easy", 32), ("static", "standard", 64), ("moving", "standard", 64),
           ("static", "clutter", 32), ("moving", "clutter", 32)]


# --------------------------------------------------------------------------- measuring a clip
def _moments(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(area, cx, cy, principal-axis angle in radians mod pi) of a coverage mask."""
    h, w = mask.shape
    ys, xs = np.mgrid[:h, :w]
    a = float(mask.sum())
    cx, cy = float((mask * xs).sum() / a), float((mask * ys).sum() / a)
    mu20 = float((mask * (xs - cx) ** 2).sum() / a)
    mu02 = float((mask * (ys - cy) ** 2).sum() / a)
    mu11 = float((mask * (xs - cx) * (ys - cy)).sum() / a)
    return a, cx, cy, 0.5 * math.atan2(2 * mu11, mu20 - mu02)


def measure(frames, background, mask, cams, colour) -> dict:
    """Motion of the actor measured from the frames and its mask, mapped to world coordinates with
    the known camera. ``background`` is the same clip rendered with the actor invisible (same noise),
    from which the actor's visible opacity per frame is estimated by least squares."""
    T = len(frames)
    inside = np.array([m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum() < 1e-3 for m in mask])
    area, cw, theta, opacity = np.zeros(T), np.zeros((T, 2)), np.zeros(T), np.zeros(T)
    for t in range(T):
        a, cx, cy, th = _moments(mask[t])
        inv = np.linalg.inv(cams[t])
        cw[t] = (inv @ [cx, cy, 1.0])[:2]
        area[t] = a / abs(np.linalg.det(cams[t][:2, :2]))  # world px^2
        theta[t] = th
        core = mask[t] > 0.999
        f, b = frames[t][core].astype(float), background[t][core].astype(float)
        d = 255.0 * colour - b
        opacity[t] = float(((f - b) * d).sum() / max((d * d).sum(), 1e-9))
    t_all = np.arange(T)

    def fit(values, sel):
        if sel.sum() < 3:
            sel = np.ones_like(sel)
        return np.polyfit(t_all[sel], values[sel], 1)[0]

    half = t_all < T / 2
    angle = np.unwrap(2 * theta) / 2  # principal axes are defined mod pi
    return dict(
        travel=np.array([fit(cw[:, 0], inside), fit(cw[:, 1], inside)]) * (T - 1),
        slope_x_halves=(fit(cw[:, 0], inside & half), fit(cw[:, 0], inside & ~half)),
        rotation_deg=math.degrees(fit(angle, inside) * (T - 1)),
        log_area_change=fit(np.log(area), inside) * (T - 1),
        opacity_change=fit(opacity, np.ones(T, bool)) * (T - 1),
        opacity=opacity,
        frame_drift=float(np.ptp(np.array([_moments(m)[1:3] for m in mask]), axis=0).max()),
    )


def classify(meas: dict, unit: float, frames: int) -> set[str]:
    """The motions present. ``unit``: the slowest actor speed in world px per frame."""
    found = set()
    if abs(meas["opacity_change"]) > 0.5:
        found.add("fade_in" if meas["opacity_change"] > 0 else "fade_out")
    if abs(meas["log_area_change"]) > 0.6:
        found.add("grow" if meas["log_area_change"] > 0 else "shrink")
    if abs(meas["rotation_deg"]) > 45:
        found.add("rotate_cw" if meas["rotation_deg"] > 0 else "rotate_ccw")
    s1, s2 = meas["slope_x_halves"]
    dx, dy = meas["travel"]
    if s1 < -0.5 * unit and s2 > 0.5 * unit:
        found.add("bounce")
    elif math.hypot(dx, dy) > 0.4 * unit * (frames - 1):
        if abs(dx) > abs(dy):
            found.add("move_right" if dx > 0 else "move_left")
        else:
            found.add("move_down" if dy > 0 else "move_up")
    if not found:
        found.add("stay")
    return found


def _still_everything_else(meas: dict, name: str, unit: float, frames: int) -> None:
    """A class changes one thing: the other measurements stay near zero."""
    if not name.startswith(("move", "bounce")):
        assert np.hypot(*meas["travel"]) < 0.1 * unit * (frames - 1), (name, meas["travel"])
    if not name.startswith("rotate"):
        assert abs(meas["rotation_deg"]) < 10, (name, meas["rotation_deg"])
    if name not in ("grow", "shrink"):
        assert abs(meas["log_area_change"]) < 0.15, (name, meas["log_area_change"])
    if not name.startswith("fade"):
        assert abs(meas["opacity_change"]) < 0.15, (name, meas["opacity_change"])
        assert np.all(np.abs(meas["opacity"] - 1) < 0.2), (name, meas["opacity"])


def _render_with_background(plan):
    frames, info = sm.render_plan(plan)
    hidden = dataclasses.replace(plan, opacity=np.zeros_like(plan.opacity))
    background, _ = sm.render_plan(hidden)
    return frames, background, info


@pytest.mark.parametrize("camera,difficulty,resolution", CONFIGS)
def test_every_class_moves_as_labelled_and_reversal_swaps_pairs(camera, difficulty, resolution):
    spec = SynthSpec(camera=camera, difficulty=difficulty, resolution=resolution)
    style = scene.scene_style(difficulty, resolution)
    unit = style.speed[0] * (spec.speed_frames - 1) / (spec.frames - 1)
    for label, name in enumerate(sm.CLASSES):
        for k in range(2):
            plan = sm.sample_plan(spec, label, np.random.default_rng([label, k, resolution]))
            frames, background, info = _render_with_background(plan)
            cams = info["world_to_frame"]
            meas = measure(frames, background, info["mask"], cams, info["colour"])
            assert classify(meas, unit, spec.frames) == {name}, (name, meas)
            _still_everything_else(meas, name, unit, spec.frames)
            if camera == "moving" and name == "stay":
                # Only camera compensation tells it from a move: it drifts across the frame.
                assert meas["frame_drift"] > 0.3 * unit * (spec.frames - 1)
            if camera == "static":
                assert np.allclose(cams, cams[0])

            rev = measure(frames[::-1], background[::-1], info["mask"][::-1], cams[::-1], info["colour"])
            assert classify(rev, unit, spec.frames) == {sm.CLASSES[sm.TIME_REVERSAL[label]]}, (name, rev)


def test_time_reversal_table_is_an_involution_over_all_classes():
    assert sorted(sm.TIME_REVERSAL) == list(range(len(sm.CLASSES)))
    for a, b in sm.TIME_REVERSAL.items():
        assert sm.TIME_REVERSAL[b] == a
    pairs = {(sm.CLASSES[a], sm.CLASSES[b]) for a, b in sm.TIME_REVERSAL.items() if a < b}
    assert pairs == {("move_left", "move_right"), ("move_up", "move_down"), ("rotate_cw", "rotate_ccw"),
                     ("grow", "shrink"), ("fade_in", "fade_out")}


@pytest.mark.parametrize("camera,difficulty,resolution", CONFIGS)
def test_frames_show_the_actor_exactly_where_its_mask_is(camera, difficulty, resolution):
    spec = SynthSpec(camera=camera, difficulty=difficulty, resolution=resolution)
    for label in (0, 4, 6, 11):
        plan = sm.sample_plan(spec, label, np.random.default_rng([7, label]))
        frames, background, info = _render_with_background(plan)
        mask = info["mask"]
        # Outside the actor the clip is pixel-identical to the clip without it; inside, it is the actor's colour.
        assert np.array_equal(frames[mask == 0], background[mask == 0])
        core = mask > 0.999
        assert core.sum() > 10 * spec.frames
        err = np.abs(frames[core].astype(float) - 255 * info["colour"]).mean()
        assert err < 4 * style_noise(difficulty), err
        assert (frames[mask > 0.5] != background[mask > 0.5]).any(axis=-1).mean() > 0.9


def style_noise(difficulty: str) -> float:
    return scene.scene_style(difficulty, 32).noise * 255


@pytest.mark.parametrize("camera,difficulty,resolution", CONFIGS)
def test_actor_centroid_stays_in_the_frame(camera, difficulty, resolution):
    spec = SynthSpec(camera=camera, difficulty=difficulty, resolution=resolution)
    for i in range(48):
        plan = sm.sample_plan(spec, i % 12, np.random.default_rng([3, i]))
        cams = plan.cameras()
        pts = np.stack([scene.apply(c, p[None])[0] for c, p in zip(cams, plan.centre)])
        assert pts.min() >= -0.5 and pts.max() <= resolution - 0.5


# --------------------------------------------------------------------------- camera
def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _centre_shift(h: np.ndarray, resolution: int) -> np.ndarray:
    c = np.array([(resolution - 1) / 2] * 2)
    return scene.apply(h, c[None])[0] - c


@pytest.mark.parametrize("camera,difficulty,resolution", CONFIGS)
def test_background_moves_only_with_a_moving_camera(camera, difficulty, resolution):
    """The background motion between frames t and t+4, measured on the rendered frames by direct
    alignment (OpenCV's ECC, affine, actor and distractors masked out), matches what the stored
    camera transforms predict, and is zero for a static camera."""
    spec = SynthSpec(camera=camera, difficulty=difficulty, resolution=resolution)
    k = 4
    measured, predicted = [], []
    for i in range(4):
        frames, info = sm.render_clip(spec, 11, np.random.default_rng([11, i]))
        nxt = info["frame_to_next"]
        fg = np.maximum(info["mask"], info["distractor_mask"]) > 0
        for t in range(0, spec.frames - k, 4):
            keep = ~cv2.dilate((fg[t] | fg[t + k]).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            warp = np.eye(2, 3, dtype=np.float32)  # ECC: maps frame t coordinates to frame t+k's
            _, warp = cv2.findTransformECC(_grey(frames[t]), _grey(frames[t + k]), warp, cv2.MOTION_AFFINE,
                                           (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-6),
                                           keep.astype(np.uint8), 3)
            h = np.eye(3)
            for s in range(t, t + k):
                h = nxt[s] @ h
            measured.append(_centre_shift(np.vstack([warp, [0, 0, 1]]), resolution))
            predicted.append(_centre_shift(h, resolution))
    measured, predicted = np.array(measured), np.array(predicted)
    size = np.linalg.norm(measured, axis=1)
    if camera == "static":
        assert np.abs(predicted).max() < 1e-9
        assert np.median(size) < 0.3, measured  # alignment noise on a 32 px, 0.4-contrast frame: ~0.15 px
    else:
        assert np.median(np.linalg.norm(predicted, axis=1)) > 0.8  # the camera really moves...
        assert np.median(size) > 0.8
        err = np.linalg.norm(measured - predicted, axis=1)
        assert np.median(err) < 0.25 and err.max() < 0.75, (measured, predicted)  # ...as recorded


@pytest.mark.parametrize("camera", ["static", "moving"])
def test_camera_transforms_align_the_background(camera):
    """Warping frame t by the stored frame_to_next transforms reproduces frame t+k's background."""
    spec = SynthSpec(camera=camera, difficulty="standard", resolution=64)
    plan = sm.sample_plan(spec, 11, np.random.default_rng(5))
    quiet = dataclasses.replace(plan, opacity=np.zeros_like(plan.opacity), distractors=[],
                                style=dataclasses.replace(plan.style, noise=0.0))
    frames, info = sm.render_plan(quiet)
    nxt = info["frame_to_next"]
    inner = (slice(6, -6), slice(6, -6))
    aligned, raw = [], []
    for t in range(0, spec.frames - 4, 3):
        h = nxt[t + 3] @ nxt[t + 2] @ nxt[t + 1] @ nxt[t]
        warped = cv2.warpAffine(frames[t], h[:2], (64, 64), flags=cv2.INTER_LINEAR)
        target = frames[t + 4].astype(float)
        aligned.append(np.abs(warped.astype(float) - target)[inner].mean())
        raw.append(np.abs(frames[t].astype(float) - target)[inner].mean())
    assert np.mean(aligned) < 3.0, aligned
    if camera == "moving":
        assert np.mean(raw) > 3 * np.mean(aligned), (raw, aligned)
    else:
        assert np.mean(raw) == 0.0


# --------------------------------------------------------------------------- pieces
def test_shapes_have_no_rotational_symmetry():
    for name in scene.SHAPE_NAMES:
        base = scene.coverage(scene.shape_polygon(name, (31.5, 31.5), 40, 0.0), 64)
        for k in (2, 3, 4, 5, 6):
            turned = scene.coverage(scene.shape_polygon(name, (31.5, 31.5), 40, 360.0 / k), 64)
            assert np.abs(turned - base).sum() > 0.2 * base.sum(), (name, k)


def test_coverage_is_an_area_fraction():
    square = np.array([[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 20.0]])
    cov = scene.coverage(square, 32)
    assert abs(cov.sum() - 100.0) < 1.0
    assert abs(_moments(cov)[1] - 15.0) < 0.1 and abs(_moments(cov)[2] - 15.0) < 0.1


def test_split_labels_are_balanced_shuffled_and_seeded():
    a = sm.split_labels(0, "train", 600)
    assert np.bincount(a).tolist() == [50] * 12
    assert not np.array_equal(a, np.arange(600) % 12)
    assert np.array_equal(a, sm.split_labels(0, "train", 600))
    assert not np.array_equal(a, sm.split_labels(1, "train", 600))
    assert not np.array_equal(a, sm.split_labels(0, "val", 600))
    assert np.ptp(np.bincount(sm.split_labels(0, "test", 100))) <= 1


# --------------------------------------------------------------------------- clutter
def _clutter_plans(camera: str, n: int = 120):
    spec = SynthSpec(camera=camera, difficulty="clutter")
    return spec, [sm.sample_plan(spec, i % len(sm.CLASSES), sm.clip_rng(7, "train", i)) for i in range(n)]


@pytest.mark.parametrize("camera", ["static", "moving"])
def test_clutter_distractors_are_drawn_like_the_actor(camera):
    """2 or 3 per clip, the actor's shapes, a colour like an actor's (bright and saturated: the actor's
    colour distribution), the actor's size range; their sizes are indistinguishable from the actors'."""
    from scipy.stats import ks_2samp

    spec, plans = _clutter_plans(camera)
    style = scene.scene_style("clutter", 32)
    others = [d for p in plans for d in p.distractors]
    assert {len(p.distractors) for p in plans} == {2, 3}
    assert {d["shape"] for d in others} == set(scene.SHAPE_NAMES)
    lo, hi = style.actor_size
    assert all(lo <= d["size"] <= hi for d in others)
    actor_sizes = [float(np.exp(np.log(p.size).mean())) for p in plans if sm.CLASSES[p.label] not in ("grow", "shrink")]
    assert ks_2samp(actor_sizes, [d["size"] for d in others]).pvalue > 0.01
    hsv = [cv2.cvtColor(np.asarray(c, np.float32)[None, None], cv2.COLOR_RGB2HSV)[0, 0]
           for c in [d["colour"] for d in others] + [p.colour for p in plans]]
    sat, val = np.array([h[1] for h in hsv]), np.array([h[2] for h in hsv])
    assert sat.min() >= 0.55 - 1e-3 and val.min() >= 0.75 - 1e-3      # scene.actor_colour's range, both
    hues = np.array([h[0] for h in hsv[:len(others)]])
    assert ks_2samp(hues, np.array([h[0] for h in hsv[len(others):]])).pvalue > 0.01


@pytest.mark.parametrize("camera", ["static", "moving"])
def test_clutter_distractors_change_but_travel_and_turn_far_less_than_any_class(camera):
    """They sway (zero drift) and turn slowly: every distractor moves between frames, but its net travel
    and turn, and its fastest step, stay well below the slowest class motion of the actor."""
    spec, plans = _clutter_plans(camera)
    style = scene.scene_style("clutter", 32)
    steps = spec.speed_frames - 1
    per_frame = steps / (spec.frames - 1)                      # steps per video frame
    min_travel = style.speed[0] * steps                        # a moving actor's travel, px
    min_turn = style.rotation[0] * steps                       # a rotating actor's turn, degrees
    for p in plans:
        for d in p.distractors:
            c, a = d["centre"], d["angle"]
            assert np.ptp(c, axis=0).max() > 0.1 or np.ptp(a) > 0.5          # it changes
            assert np.abs(c[-1] - c[0]).max() < 0.15 * min_travel            # net travel
            assert np.abs(c - c[0]).max() < 0.15 * min_travel                # never far from where it was
            assert abs(a[-1] - a[0]) < 0.3 * min_turn                        # net turn
            speed = np.linalg.norm(np.diff(c, axis=0), axis=1).max() / per_frame
            assert speed < 0.75 * style.speed[0]     # px per step at its fastest moment (measured at most 1.3)


def test_clutter_generation_is_byte_stable_and_its_ground_truth_records_each_distractor(tmp_path):
    def params(workers):
        return validate({"name": "t", "datasets": {"c": {"source": "synthmotion", "synth": dict(
            camera="moving", difficulty="clutter", frames=16, split_sizes={"train": 4, "val": 2, "test": 2}, seed=3,
            workers=workers)}}, "table_datasets": ["c"], "pretrain_images": {}})

    p = params(1)
    out = tmp_path / "c"
    sm.generate_dataset(p, "c", out)
    sm.generate_dataset(params(2), "c", tmp_path / "again")          # other processes, the same bytes
    assert _digests(out) == _digests(tmp_path / "again")
    gt = sm.write_ground_truth(p, "c", out, tmp_path / "gt.npz")
    spec = p.datasets["c"].synth
    with np.load(gt) as z:
        others = z["val_distractor_coverage"]
    assert others.shape == (2, 16, 3, 32, 32)                      # 3 slots: clutter's largest count
    union = sm.read_distractor_coverage(gt, "val")
    for i in range(2):
        plan = sm.sample_plan(spec, int(ann.read_annotations(out, "val")["label"][i]), sm.clip_rng(3, "val", i))
        _, info = sm.render_plan(plan)
        assert np.array_equal(np.rint(info["distractor_mask"] * 255), union[i] * 255)   # the renderer's own
        assert np.count_nonzero(others[i].reshape(16, 3, -1).sum(-1).sum(0)) == len(plan.distractors)


def test_render_clip_is_deterministic_per_generator():
    spec = SynthSpec(camera="moving", difficulty="standard")
    a, _ = sm.render_clip(spec, 3, sm.clip_rng(0, "train", 5))
    b, _ = sm.render_clip(spec, 3, sm.clip_rng(0, "train", 5))
    c, _ = sm.render_clip(spec, 3, sm.clip_rng(0, "train", 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (32, 32, 32, 3) and a.dtype == np.uint8


# --------------------------------------------------------------------------- the dataset on disk
def _params(**synth):
    base = dict(camera="moving", difficulty="easy", resolution=32, frames=16,
                split_sizes={"train": 12, "val": 4, "test": 4}, seed=0, workers=1)
    base.update(synth)
    return validate({"name": "t", "datasets": {"synth": {"source": "synthmotion", "synth": base}},
                     "table_datasets": ["synth"], "pretrain_images": {}})


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    info = sm.generate_dataset(_params(), "synth", root / "serial")
    return root, info


def test_dataset_layout_and_contract(generated):
    root, info = generated
    out = root / "serial"
    assert ann.read_classes(out) == list(sm.CLASSES)
    from amflow import io

    assert io.read_json(out / "dataset.json") == info
    assert info["source"] == "synthmotion" and info["counts"] == {"train": 12, "val": 4, "test": 4}
    assert {int(k): v for k, v in info["time_reversal"].items()} == sm.TIME_REVERSAL
    for split in ("train", "val", "test"):
        table = ann.read_annotations(out, split)
        n = info["counts"][split]
        assert len(table) == n
        assert table["video"].tolist() == [f"videos/{split}/{split}_{i:05d}.mp4" for i in range(n)]
        assert (table["label_name"] == [sm.CLASSES[i] for i in table["label"]]).all()
        assert np.ptp(np.bincount(table["label"], minlength=12)) <= 1
        assert all((out / v).is_file() for v in table["video"])
        cam = np.load(out / "camera" / f"{split}.npz")
        assert cam["video"].tolist() == table["video"].tolist()
        assert cam["world_to_frame"].shape == (n, 16, 3, 3) and cam["frame_to_next"].shape == (n, 16, 3, 3)
        assert np.allclose(cam["frame_to_next"][:, -1], np.eye(3))
    # The stored transforms are those of the rendered clip.
    spec = _params().datasets["synth"].synth
    table = ann.read_annotations(out, "train")
    plan = sm.sample_plan(spec, int(table["label"][2]), sm.clip_rng(0, "train", 2))
    cam = np.load(out / "camera" / "train.npz")
    assert np.allclose(cam["world_to_frame"][2], plan.cameras(), atol=1e-4)
    assert np.allclose(cam["frame_to_next"][2], sm.frame_to_next(plan.cameras()), atol=1e-5)


def test_the_common_writer_lists_no_missing_video(generated):
    root, _ = generated
    assert (root / "serial" / "missing.csv").read_text() == "split,video,reason\n"


def test_parallel_generation_gives_the_same_bytes_and_seeds_matter(generated):
    root, _ = generated
    sm.generate_dataset(_params(workers=2), "synth", root / "parallel")
    files = _files(root / "serial")
    assert files == _files(root / "parallel")
    assert all(filecmp.cmp(root / "serial" / f, root / "parallel" / f, shallow=False) for f in files)
    sm.generate_dataset(_params(seed=1), "synth", root / "seed1")
    videos = [f for f in files if f.suffix == ".mp4"]
    assert not any(filecmp.cmp(root / "serial" / f, root / "seed1" / f, shallow=False) for f in videos)


def test_rerun_is_skipped_and_a_new_spec_regenerates(generated, tmp_path):
    out = tmp_path / "d"
    sm.generate_dataset(_params(split_sizes={"train": 3, "val": 1, "test": 1}), "synth", out)
    video = out / "videos" / "train" / "train_00000.mp4"
    stamp = video.stat().st_mtime_ns
    sm.generate_dataset(_params(split_sizes={"train": 3, "val": 1, "test": 1}, workers=2), "synth", out)
    assert video.stat().st_mtime_ns == stamp  # same spec (workers aside): nothing rewritten
    (out / "videos" / "train" / "stale.mp4").write_bytes(b"")
    info = sm.generate_dataset(_params(split_sizes={"train": 2, "val": 1, "test": 1}, frames=8), "synth", out)
    assert info["spec"]["frames"] == 8 and info["counts"]["train"] == 2
    assert not (out / "videos" / "train" / "stale.mp4").exists()
    assert not (out / "videos" / "train" / "train_00002.mp4").exists()
    import av

    with av.open(str(video)) as c:
        assert c.streams.video[0].frames == 8


def test_decord_and_pyav_agree_and_the_codec_error_is_small(generated):
    decord = pytest.importorskip("decord")
    import av

    root, _ = generated
    out = root / "serial"
    spec = _params().datasets["synth"].synth
    table = ann.read_annotations(out, "train")
    errors = []
    for i in range(0, 12, 3):
        path = out / table["video"][i]
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        by_decord = vr.get_batch(list(range(len(vr)))).asnumpy()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert float(stream.average_rate) == spec.fps
            by_pyav = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert by_decord.shape == by_pyav.shape == (spec.frames, 32, 32, 3)
        assert np.abs(by_decord.astype(int) - by_pyav).max() == 0
        assert abs(vr.get_avg_fps() - spec.fps) < 1e-6
        rendered, _ = sm.render_clip(spec, int(table["label"][i]), sm.clip_rng(spec.seed, "train", i))
        errors.append(np.abs(by_pyav.astype(float) - rendered).mean())
    print(f"codec error (mean |decoded - rendered|, 0-255): {np.mean(errors):.2f}")
    assert np.mean(errors) < 6.0, errors


def test_unknown_or_wrong_dataset_is_a_user_error(tmp_path):
    from amflow.errors import AmflowError

    with pytest.raises(AmflowError, match="datasets.nope"):
        sm.generate_dataset(_params(), "nope", tmp_path)


# --------------------------------------------------------------------------- motion ground truth
def _digests(root: Path) -> dict:
    import hashlib

    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in _files(root)}


def test_ground_truth_comes_from_the_plans_and_leaves_the_videos_alone(generated, tmp_path):
    root, _ = generated
    out = root / "serial"
    before = _digests(out)
    gt = tmp_path / "groundtruth" / "synth.npz"
    sm.write_ground_truth(_params(), "synth", out, gt)
    assert _digests(out) == before                       # not one byte of the dataset changed
    sm.generate_dataset(_params(), "synth", out)         # and it is still complete: nothing regenerated
    assert _digests(out) == before
    spec = _params().datasets["synth"].synth
    for split in ("train", "val", "test"):
        videos, coverage, motion = sm.read_ground_truth(gt, split)
        table = ann.read_annotations(out, split)
        assert videos.tolist() == table["video"].tolist()
        assert coverage.shape == (len(table), 16, 32, 32) and motion.shape == (len(table), 16, 3, 3)
        cam = np.load(out / "camera" / f"{split}.npz")
        np.testing.assert_allclose(motion, cam["frame_to_next"], atol=1e-4)   # that file went through float32 first
        for i in (0, len(table) - 1):
            plan = sm.sample_plan(spec, int(table["label"][i]), sm.clip_rng(0, split, i))
            _, info = sm.render_plan(plan)
            assert np.array_equal(coverage[i], info["mask"])    # the renderer's own mask, bit for bit
    # The decoded video shows the actor where the ground truth puts it (the codec blurs edges a little).
    import av

    with av.open(str(out / videos[0])) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)
    plan = sm.sample_plan(spec, int(table["label"][0]), sm.clip_rng(0, "test", 0))
    inside = coverage[0] > 0.99
    err_in = np.abs(decoded[inside] - plan.colour * 255).mean()
    err_out = np.abs(decoded[coverage[0] == 0] - plan.colour * 255).mean()
    assert err_in < 20 < err_out, (err_in, err_out)
    # Deterministic: a second computation gives the same bytes.
    again = tmp_path / "again.npz"
    sm.write_ground_truth(_params(), "synth", out, again)
    assert filecmp.cmp(gt, again, shallow=False)


def test_ground_truth_needs_the_generated_dataset(generated, tmp_path):
    root, _ = generated
    with pytest.raises(AmflowError, match="amflow prepare"):
        sm.write_ground_truth(_params(seed=5), "synth", root / "serial", tmp_path / "gt.npz")
    with pytest.raises(AmflowError, match="amflow ground-truth"):
        sm.read_ground_truth(tmp_path / "missing.npz", "val")


def test_patch_coverage_is_the_mean_over_the_patch():
    from amflow.stages.localise import patch_means

    plan = sm.sample_plan(SynthSpec(camera="static"), 0, sm.clip_rng(0, "val", 3))
    cov = torch.from_numpy(sm.actor_coverage(plan))
    patches = patch_means(cov[:, None], (8, 8))
    area = sm.actor_coverage(plan).sum(axis=(1, 2))
    np.testing.assert_allclose(patches.numpy().sum(1) * 64, area, rtol=1e-5)     # area is conserved
    assert patches.shape == (plan.frames, 16) and float(patches.max()) <= 1
