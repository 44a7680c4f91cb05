"""SynthMotion: the embedded action-recognition dataset (docs/design.md 3.1).

Twelve classes, defined by the actor's motion in *world* coordinates. Rendering is split in two:

- :func:`sample_plan` draws every random choice of a clip (shape, colour, size, trajectory, camera
  path, distractors, seeds of the texture and of the pixel noise) into a :class:`ClipPlan`;
- :func:`render_plan` turns a plan into frames (uint8 ``[T, H, W, 3]``) and the ground truth: the
  actor's coverage mask per frame, its world centroid, size, angle and opacity, and the camera's
  world -> frame matrices.

:func:`render_clip` does both; tests use it to check the motion of every class without encoding.
:func:`build` (the ``synthmotion`` source of ``amflow prepare``) renders and encodes whole splits in
parallel (H.264 via PyAV), with the same bytes whatever the worker count: clip ``i`` of a split is
drawn from its own generator, ``SeedSequence([DOMAIN, seed, split, i])``.

Speeds (docs/design.md 3.1: "2 to 3 px per frame") are per step of a ``speed_frames``-frame clip (default 8:
the frames a model samples). With 32 frames at a literal 2-3 px per frame the actor would travel
62-93 px and leave a 32 px frame; spreading the same motion over the clip's frames keeps its
amplitude (14-21 px) independent of the frame count.

Outputs (docs/architecture.md): ``videos/<split>/<split>_<i:05d>.mp4`` and ``camera/<split>.npz``
(true camera transforms), then, by the writer every source shares (:mod:`amflow.data.sources.base`),
``missing.csv`` (empty), ``classes.txt``, ``annotations/<split>.csv`` and, last, ``dataset.json``.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from amflow import io, parallel, progress
from amflow.data import annotations as ann
from amflow.data import scene
from amflow.data.sources.base import PreparedDataset, Source, write_dataset
from amflow.data.video import CODEC, encode_mp4
from amflow.errors import AmflowError
from amflow.params import SPLITS, SynthMotionDataset, Params, SynthSpec

CLASSES: tuple[str, ...] = ("move_left", "move_right", "move_up", "move_down", "rotate_cw", "rotate_ccw",
                            "grow", "shrink", "fade_in", "fade_out", "bounce", "stay")
# label -> label of the time-reversed clip. Every class has one: the pairs swap, and stay and bounce
# (left for half the clip, then back right at the same speed: x(t) = x(T-1-t)) are their own reversals.
TIME_REVERSAL: dict[int, int] = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6, 8: 9, 9: 8, 10: 10, 11: 11}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
# Bump when the rendered bytes change for a given spec: an existing dataset is then regenerated.
GENERATOR_VERSION = 1
# Seed-sequence domains: the label shuffle and the clips never share a stream, nor with other generators.
DOMAIN_CLIP = 0x53594E01
DOMAIN_LABELS = 0x53594E02


# --------------------------------------------------------------------------- plans
@dataclass
class ClipPlan:
    """Every random choice of one clip; :func:`render_plan` is deterministic given a plan."""

    label: int
    resolution: int
    style: scene.SceneStyle
    texture_seed: int
    noise_seed: int
    shape: str
    colour: np.ndarray            # RGB [3] in [0, 1]
    hue: float                    # degrees
    centre: np.ndarray            # [T, 2] actor centroid, world px
    size: np.ndarray              # [T] world px
    angle: np.ndarray             # [T] degrees, clockwise on screen
    opacity: np.ndarray           # [T]
    camera_centre: np.ndarray     # [T, 2] world point at the frame centre
    zoom: np.ndarray              # [T] frame px per world px
    distractors: list[dict] = field(default_factory=list)  # shape, colour, size, centre [T,2], angle [T]

    @property
    def frames(self) -> int:
        return len(self.size)

    def cameras(self) -> np.ndarray:
        """World -> frame matrices float64 [T, 3, 3]."""
        return np.stack([scene.camera_matrix(c, z, self.resolution) for c, z in zip(self.camera_centre, self.zoom)])


def _place(offset: np.ndarray, cams: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Interval of start coordinates x0 (one axis) keeping ``z_t (x0 + offset_t) + b_t`` in [lo, hi]."""
    z, b = cams[:, 0], cams[:, 1]
    f = z * offset + b                       # frame coordinate for x0 = 0
    return float(np.max((lo - f) / z)), float(np.min((hi - f) / z))


def sample_plan(spec: SynthSpec, label: int, rng: np.random.Generator) -> ClipPlan:
    """Draw a clip of class ``label`` (index into :data:`CLASSES`)."""
    style = scene.scene_style(spec.difficulty, spec.resolution)
    res, frames = spec.resolution, spec.frames
    steps = spec.speed_frames - 1
    tau = np.linspace(0.0, steps, frames)     # time in steps
    u = tau / steps                            # time in [0, 1]
    name = CLASSES[label]

    shape = str(rng.choice(scene.SHAPE_NAMES))
    colour, hue = scene.actor_colour(rng)
    size0 = float(rng.uniform(*style.actor_size))
    angle0 = float(rng.uniform(0.0, 360.0))
    speed = float(rng.uniform(*style.speed))
    rate = float(rng.uniform(*style.rotation))
    ratio = float(rng.uniform(*style.scale_ratio))

    disp = np.zeros((frames, 2))
    angle = np.full(frames, angle0)
    size = np.full(frames, size0)
    opacity = np.ones(frames)
    if name == "move_left":
        disp[:, 0] = -speed * tau
    elif name == "move_right":
        disp[:, 0] = speed * tau
    elif name == "move_up":
        disp[:, 1] = -speed * tau
    elif name == "move_down":
        disp[:, 1] = speed * tau
    elif name == "rotate_cw":
        angle = angle0 + rate * tau
    elif name == "rotate_ccw":
        angle = angle0 - rate * tau
    elif name == "grow":
        size = size0 * ratio ** (u - 0.5)      # size0 is the geometric mean size
    elif name == "shrink":
        size = size0 * ratio ** (0.5 - u)
    elif name == "fade_in":
        opacity = u.copy()
    elif name == "fade_out":
        opacity = 1.0 - u
    elif name == "bounce":
        disp[:, 0] = -speed * np.minimum(tau, steps - tau)  # left for half the clip, then back
    elif name != "stay":
        raise ValueError(f"unknown class {name}")

    mid = (style.world - 1) / 2.0
    cam = np.full((frames, 2), mid)
    zoom = np.ones(frames)
    if spec.camera == "moving":
        theta = rng.uniform(0.0, 2 * math.pi)
        pan = float(rng.uniform(*style.pan))
        cam = cam + np.outer(tau - steps / 2, (pan * math.cos(theta), pan * math.sin(theta)))
        zoom = np.exp(rng.uniform(-1, 1) * math.log(style.zoom_ratio) * (u - 0.5))
        cam = cam + rng.normal(0.0, style.shake, (frames, 2))

    cams = np.stack([scene.camera_matrix(c, z, res) for c, z in zip(cam, zoom)])
    centre = _start_point(disp, cams, float(np.max(zoom * size)) * _radius(shape), res, rng) + disp

    distractors = []
    lo, hi = spec.distractors or style.distractors
    count = int(rng.integers(lo, hi + 1))
    if style.lookalike:
        return _plan(label, res, style, rng, shape, colour, hue, centre, size, angle, opacity, cam, zoom,
                     [_lookalike(style, tau, u, cams, zoom, res, rng) for _ in range(count)])
    for _ in range(count):
        p0 = np.linalg.solve(cams[0], np.array([*rng.uniform(0, res - 1, 2), 1.0]))[:2]
        theta = rng.uniform(0, 2 * math.pi)
        v = float(rng.uniform(*style.distractor_speed))
        distractors.append(dict(
            shape=str(rng.choice(scene.SHAPE_NAMES)), colour=scene.distractor_colour(rng),
            size=float(rng.uniform(*style.distractor_size)),
            centre=p0 + np.outer(tau, (v * math.cos(theta), v * math.sin(theta))),
            angle=rng.uniform(0, 360) + rng.uniform(-20, 20) * tau))

    return _plan(label, res, style, rng, shape, colour, hue, centre, size, angle, opacity, cam, zoom, distractors)


def _plan(label, res, style, rng, shape, colour, hue, centre, size, angle, opacity, cam, zoom,
          distractors) -> ClipPlan:
    return ClipPlan(label=label, resolution=res, style=style,
                    texture_seed=int(rng.integers(0, 2**63)), noise_seed=int(rng.integers(0, 2**63)),
                    shape=shape, colour=colour, hue=hue, centre=centre, size=size, angle=angle,
                    opacity=opacity, camera_centre=cam, zoom=zoom, distractors=distractors)


def _radius(shape: str) -> float:
    """The farthest vertex from the centroid of a unit-size ``shape``."""
    return float(np.max(np.linalg.norm(scene.SHAPES[shape], axis=1)))


def _start_point(offset: np.ndarray, cams: np.ndarray, r_frame: float, res: int,
                 rng: np.random.Generator) -> np.ndarray:
    """A world start point for a shape of frame radius ``r_frame`` following ``offset`` [T, 2], chosen
    so that its frame trajectory stays inside the frame: fully inside when the motion allows it, else
    with a smaller margin (down to the centroid on the border pixel)."""
    start = np.zeros(2)
    for margin in (r_frame, 0.5 * r_frame, 1.0, 0.0, -1e9):
        lims = [_place(offset[:, k], cams[:, k, [k, 2]], margin, res - 1 - margin) for k in range(2)]
        if all(a <= b for a, b in lims) or margin < -1:
            for k, (a, b) in enumerate(lims):
                start[k] = rng.uniform(a, b) if a <= b else (a + b) / 2
            break
    return start


def _lookalike(style: scene.SceneStyle, tau: np.ndarray, u: np.ndarray, cams: np.ndarray, zoom: np.ndarray,
               res: int, rng: np.random.Generator) -> dict:
    """A ``clutter`` distractor: the actor's shape, colour and size distributions, placed like the actor
    (its sway inside the frame), swaying about a fixed world point (0.5-1.5 sine cycles per clip on
    each axis: zero drift) and turning slowly at a constant rate."""
    shape = str(rng.choice(scene.SHAPE_NAMES))
    colour, _ = scene.actor_colour(rng)
    size = float(rng.uniform(*style.distractor_size))
    amplitude = rng.uniform(*style.sway, 2)
    cycles = rng.uniform(0.5, 1.5, 2)
    phase = rng.uniform(0.0, 2 * math.pi, 2)
    sway = amplitude * np.sin(2 * math.pi * np.outer(u, cycles) + phase)          # [T, 2]
    turn = float(rng.uniform(-style.sway_rotation, style.sway_rotation))
    angle = rng.uniform(0.0, 360.0) + turn * tau
    start = _start_point(sway, cams, float(np.max(zoom)) * size * _radius(shape), res, rng)
    return dict(shape=shape, colour=colour, size=size, centre=start + sway, angle=angle)


def frame_to_next(world_to_frame: np.ndarray) -> np.ndarray:
    """Camera motion in the convention of docs/architecture.md: row t maps frame t pixels to frame
    t+1 pixels (``C_{t+1} C_t^-1``); identity on the last frame. float64 [T, 3, 3]."""
    out = np.tile(np.eye(3), (len(world_to_frame), 1, 1))
    out[:-1] = world_to_frame[1:] @ np.linalg.inv(world_to_frame[:-1])
    return out


def render_plan(plan: ClipPlan) -> tuple[np.ndarray, dict]:
    """Frames uint8 [T, R, R, 3] and the ground truth of ``plan`` (see the module docstring)."""
    res, frames = plan.resolution, plan.frames
    texture = scene.make_texture(np.random.default_rng(plan.texture_seed), plan.style.world, plan.style.contrast)
    noise_rng = np.random.default_rng(plan.noise_seed)
    cams = plan.cameras()
    out = np.empty((frames, res, res, 3), np.uint8)
    mask = np.empty((frames, res, res), np.float32)
    dmask = np.zeros((frames, res, res), np.float32)
    for t in range(frames):
        sprites = [scene.Sprite(d["shape"], d["centre"][t], d["size"], d["angle"][t], d["colour"])
                   for d in plan.distractors]
        sprites.append(scene.Sprite(plan.shape, plan.centre[t], plan.size[t], plan.angle[t], plan.colour,
                                    plan.opacity[t]))
        out[t], masks = scene.render_frame(texture, cams[t], res, sprites, noise_rng, plan.style.noise)
        mask[t] = masks[-1]
        for m in masks[:-1]:
            np.maximum(dmask[t], m, out=dmask[t])
    info = dict(label=plan.label, label_name=CLASSES[plan.label], shape=plan.shape, colour=plan.colour,
                hue=plan.hue, mask=mask, distractor_mask=dmask, centroid_world=plan.centre.copy(),
                size=plan.size.copy(), angle=plan.angle.copy(), opacity=plan.opacity.copy(),
                zoom=plan.zoom.copy(), world_to_frame=cams, frame_to_next=frame_to_next(cams))
    return out, info


def _coverage(plan: ClipPlan, shape: str, centre: np.ndarray, size: np.ndarray, angle: np.ndarray) -> np.ndarray:
    cams = plan.cameras()
    size = np.broadcast_to(size, (plan.frames,))
    return np.stack([scene.coverage(scene.apply(cams[t], scene.shape_polygon(shape, centre[t], size[t], angle[t])),
                                    plan.resolution) for t in range(plan.frames)])


def actor_coverage(plan: ClipPlan) -> np.ndarray:
    """The actor's coverage of each frame pixel, float32 [T, R, R] in [0, 1], from the plan alone.

    The same polygons and rasteriser as :func:`render_plan` (which composites them), so it equals the
    rendered mask exactly, without rendering the texture, the distractors or the noise.
    """
    return _coverage(plan, plan.shape, plan.centre, plan.size, plan.angle)


def distractor_coverage(plan: ClipPlan, slots: int) -> np.ndarray:
    """Each distractor's own coverage of each frame pixel, float32 [T, slots, R, R] (the distractors in
    drawing order; unused slots are 0), from the plan alone like :func:`actor_coverage`."""
    res = plan.resolution
    out = np.zeros((plan.frames, slots, res, res), np.float32)
    for k, d in enumerate(plan.distractors[:slots]):
        out[:, k] = _coverage(plan, d["shape"], d["centre"], d["size"], d["angle"])
    return out


def render_clip(spec: SynthSpec, label: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Sample and render one clip of class ``label``: (frames uint8 [T, H, W, 3], ground truth)."""
    return render_plan(sample_plan(spec, label, rng))


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of ``split``: independent of the order clips are made in."""
    return np.random.default_rng(np.random.SeedSequence([DOMAIN_CLIP, seed, SPLIT_IDS[split], index]))


def split_labels(seed: int, split: str, n: int) -> np.ndarray:
    """Balanced labels (counts differ by at most one) in a seeded random order."""
    rng = np.random.default_rng(np.random.SeedSequence([DOMAIN_LABELS, seed, SPLIT_IDS[split], 0]))
    return rng.permutation(np.arange(n) % len(CLASSES))


# --------------------------------------------------------------------------- encoding
def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed``, but atomic and with fixed zip timestamps, so the same arrays
    give the same bytes (numpy stamps each member with the current time)."""
    with io.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


def _make_video(task: tuple) -> tuple[int, dict, np.ndarray]:
    """Worker: render, encode (atomically) and describe one clip."""
    spec_dict, split, index, label, rel, out_dir = task
    spec = SynthSpec.model_validate(spec_dict)
    plan = sample_plan(spec, label, clip_rng(spec.seed, split, index))
    frames, info = render_plan(plan)
    with io.atomic_path(Path(out_dir) / rel) as tmp:
        encode_mp4(frames, tmp, spec.fps)
    res = spec.resolution
    mask = info["mask"]
    border = mask[:, 0, :].sum() + mask[:, -1, :].sum() + mask[:, :, 0].sum() + mask[:, :, -1].sum()
    pan = plan.camera_centre[-1] - plan.camera_centre[0]
    row = dict(video=rel, label=label, label_name=CLASSES[label], shape=plan.shape, hue=round(plan.hue, 1),
               actor_size=round(float(np.exp(np.log(plan.size).mean())), 2),
               distractors=len(plan.distractors), camera=spec.camera,
               camera_pan_px=round(float(np.hypot(*pan)), 2),
               camera_zoom_ratio=round(float(plan.zoom[-1] / plan.zoom[0]), 4),
               actor_clipped=bool(border > 1e-3), resolution=res)
    return index, row, info["world_to_frame"].astype(np.float32)


# --------------------------------------------------------------------------- ground truth
def split_plans(spec: SynthSpec, split: str) -> list[ClipPlan]:
    """The plans of every clip of ``split``, in annotation order (what the generator rendered)."""
    n = spec.split_sizes.get(split, 0)
    return [sample_plan(spec, int(label), clip_rng(spec.seed, split, i))
            for i, label in enumerate(split_labels(spec.seed, split, n))]


def write_ground_truth(params: Params, dataset_name: str, dataset_dir: str | Path, out_file: str | Path) -> Path:
    """Motion ground truth of a generated SynthMotion dataset, recomputed from its render plans.

    Deterministic from the spec's seed, so an existing dataset gets it without re-rendering or
    re-encoding a video. ``out_file`` (npz, same bytes for the same spec) holds per split:
    ``<split>_video`` [N] (annotation paths), ``<split>_actor_coverage`` uint8 [N, T, R, R] (the share of
    each pixel the actor covers, times 255: exact, the renderer's coverage is a multiple of 1/255),
    ``<split>_distractor_coverage`` uint8 [N, T, K, R, R] (each distractor's own share, K the style's
    largest number of distractors, unused slots 0; the actor is drawn over them) and
    ``<split>_frame_to_next`` float32 [N, T, 3, 3] (the true camera motion, frame t -> t+1 pixels;
    identity for the static camera and on the last frame). A patch's coverage is the mean over its pixels.
    """
    if dataset_name not in params.datasets or params.datasets[dataset_name].synth is None:
        raise AmflowError(f"datasets.{dataset_name}: ground truth exists for SynthMotion datasets only "
                          f"(source: synthmotion with a 'synth' section)")
    spec = params.datasets[dataset_name].synth
    dataset_dir = Path(dataset_dir)
    if not _is_complete(dataset_dir, spec):
        raise AmflowError(f"{dataset_dir}: no complete SynthMotion dataset generated with these params' "
                          f"datasets.{dataset_name}.synth; run `amflow prepare --dataset {dataset_name}` first")
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        table = ann.read_annotations(dataset_dir, split)
        plans = split_plans(spec, split)
        labels = [p.label for p in plans]
        if table["label"].astype(int).tolist() != labels:
            raise AmflowError(f"{ann.annotations_path(dataset_dir, split)}: labels differ from the plans of seed "
                              f"{spec.seed}; the dataset was not made by this generator: run `amflow prepare` again")
        slots = (spec.distractors or scene.scene_style(spec.difficulty, spec.resolution).distractors)[1]
        cover = [np.rint(actor_coverage(p) * 255).astype(np.uint8) for p in plans]
        others = [np.rint(distractor_coverage(p, slots) * 255).astype(np.uint8) for p in plans]
        moves = [frame_to_next(p.cameras()).astype(np.float32) for p in plans]
        res, frames = spec.resolution, spec.frames
        arrays[f"{split}_video"] = np.array(table["video"].tolist(), dtype=str)
        arrays[f"{split}_actor_coverage"] = np.stack(cover) if cover else np.zeros((0, frames, res, res), np.uint8)
        arrays[f"{split}_distractor_coverage"] = (np.stack(others) if others else
                                                  np.zeros((0, frames, slots, res, res), np.uint8))
        arrays[f"{split}_frame_to_next"] = np.stack(moves) if moves else np.zeros((0, frames, 3, 3), np.float32)
    out_file = Path(out_file)
    write_npz(out_file, **arrays)
    print(f"{out_file}: actor coverage and camera motion of "
          f"{sum(len(arrays[f'{s}_video']) for s in SPLITS)} videos", file=sys.stderr)
    return out_file


def read_ground_truth(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(videos [N] str, actor coverage float32 [N, T, R, R] in [0, 1], frame_to_next [N, T, 3, 3]) of ``split``."""
    with _open_ground_truth(path) as z:
        return (z[f"{split}_video"], z[f"{split}_actor_coverage"].astype(np.float32) / 255,
                z[f"{split}_frame_to_next"])


def read_distractor_coverage(path: str | Path, split: str) -> np.ndarray:
    """The union of the distractors' coverage, float32 [N, T, R, R] in [0, 1], of ``split`` (annotation order)."""
    with _open_ground_truth(path) as z:
        key = f"{split}_distractor_coverage"
        if key not in z:
            raise AmflowError(f"{path}: written before distractor coverage was recorded; rerun "
                              f"`amflow ground-truth` for this dataset")
        others = z[key]
        return others.max(axis=2).astype(np.float32) / 255 if others.shape[2] else \
            np.zeros(others.shape[:2] + others.shape[3:], np.float32)


def _open_ground_truth(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise AmflowError(f"{path}: ground truth not found; run `amflow ground-truth --dataset <name>` "
                          f"(SynthMotion datasets only)")
    return np.load(path)


# --------------------------------------------------------------------------- dataset
def _recorded_spec(spec: SynthSpec) -> dict:
    """The spec as recorded in dataset.json: without ``workers``, which does not change the bytes."""
    return spec.model_dump(mode="json", exclude={"workers"})


def _is_complete(out_dir: Path, spec: SynthSpec) -> bool:
    info = io.read_json_record(out_dir / "dataset.json")
    if info is None:
        return False
    if info.get("spec") != _recorded_spec(spec) or info.get("generator_version") != GENERATOR_VERSION:
        return False
    for split in SPLITS:
        if not ann.annotations_path(out_dir, split).is_file() or not (out_dir / "camera" / f"{split}.npz").is_file():
            return False
        table = ann.read_annotations(out_dir, split)
        if len(table) != spec.split_sizes.get(split, 0) or not all((out_dir / v).is_file() for v in table["video"]):
            return False
    return True


def existing(dspec: SynthMotionDataset, out_dir: Path) -> Optional[dict]:
    """dataset.json's content when ``out_dir`` holds every file of this spec and generator version."""
    if not _is_complete(out_dir, dspec.synth):
        return None
    print(f"{out_dir}: SynthMotion already generated with this spec; nothing to do", file=sys.stderr)
    return io.read_json(out_dir / "dataset.json")


def _clean(out_dir: Path) -> None:
    for name in ("videos", "annotations", "camera"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    ann.classes_path(out_dir).unlink(missing_ok=True)


def build(dspec: SynthMotionDataset, dataset_name: str, out_dir: Path) -> PreparedDataset:
    """Render and encode every clip (``videos/``) and write the true camera (``camera/``), after removing
    the folder's earlier SynthMotion outputs; the annotations and ``dataset.json`` are the writer's."""
    spec = dspec.synth
    _clean(out_dir)

    spec_dict = spec.model_dump(mode="json")
    tasks = []
    for split in SPLITS:
        n = spec.split_sizes.get(split, 0)
        for i, label in enumerate(split_labels(spec.seed, split, n)):
            tasks.append((spec_dict, split, i, int(label), f"videos/{split}/{split}_{i:05d}.mp4", str(out_dir)))
    workers = parallel.worker_count(spec.workers, len(tasks))
    results: list = []
    t0 = time.perf_counter()
    bar = progress.bar(total=len(tasks), desc=f"{dataset_name}: rendering", unit="video")
    if workers == 1:
        for task in tasks:
            results.append(_make_video(task))
            bar.update()
    else:
        with parallel.spawn_pool(workers, initializer=parallel.one_opencv_thread) as pool:
            for r in pool.imap(_make_video, tasks, chunksize=max(1, len(tasks) // (workers * 16))):
                results.append(r)
                bar.update()
    bar.close()
    elapsed = time.perf_counter() - t0

    splits, counts, class_counts, clipped = {}, {}, {}, {}
    pos = 0
    for split in SPLITS:
        n = spec.split_sizes.get(split, 0)
        part = results[pos:pos + n]
        pos += n
        table = pd.DataFrame([r[1] for r in part])
        if n == 0:
            table = pd.DataFrame(columns=list(ann.REQUIRED_COLUMNS))
        splits[split] = table
        cams = np.stack([r[2] for r in part]) if n else np.zeros((0, spec.frames, 3, 3), np.float32)
        nxt = np.stack([frame_to_next(c.astype(np.float64)) for c in cams]).astype(np.float32) if n else cams
        write_npz(out_dir / "camera" / f"{split}.npz", video=np.array(table["video"].tolist(), dtype=str),
                  world_to_frame=cams, frame_to_next=nxt)
        counts[split] = n
        class_counts[split] = np.bincount(table["label"].astype(int), minlength=len(CLASSES)).tolist() if n else []
        clipped[split] = round(float(table["actor_clipped"].mean()), 4) if n else 0.0

    info = {
        "source": "synthmotion",
        "name": dataset_name,
        "generator_version": GENERATOR_VERSION,
        "spec": _recorded_spec(spec),
        "classes": list(CLASSES),
        "counts": counts,
        "class_counts": class_counts,
        "time_reversal": {str(k): v for k, v in TIME_REVERSAL.items()},
        "frames": spec.frames,
        "resolution": spec.resolution,
        "fps": spec.fps,
        "codec": CODEC,
        "camera_file": "camera/<split>.npz: video [N] str, world_to_frame float32 [N,T,3,3], "
                       "frame_to_next float32 [N,T,3,3] (frame t -> t+1 pixels; identity on the last frame)",
        "actor_clipped_share": clipped,
    }
    total = sum(counts.values())
    print(f"{out_dir}: {total} videos in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.1f} videos/s, "
          f"{workers} worker(s))", file=sys.stderr)
    return PreparedDataset(classes=list(CLASSES), splits=splits, info=info)


SOURCE = Source(SynthMotionDataset, build, existing=existing, generator=True)


def generate_dataset(params: Params, dataset_name: str, out_dir: str | Path) -> dict:
    """Generate SynthMotion dataset ``dataset_name`` into ``out_dir`` (``data/<dataset>-<spec>``).

    Nothing is done when ``dataset.json`` records the same spec and generator version and every file
    is present. Otherwise the folder's SynthMotion outputs are removed and rewritten, ``dataset.json``
    last. Returns the content of ``dataset.json``.
    """
    if dataset_name not in params.datasets:
        raise AmflowError(f"datasets.{dataset_name}: not in the params file (known: {', '.join(params.datasets)})")
    dspec = params.datasets[dataset_name]
    if dspec.source != "synthmotion" or dspec.synth is None:
        raise AmflowError(f"datasets.{dataset_name}: source is '{dspec.source}', not synthmotion with a 'synth' section")
    return write_dataset(SOURCE, dspec, dataset_name, Path(out_dir))
