"""Clip sampling and augmentation over the frame cache: :class:`ClipDataset`.

Sampling (docs/design.md 3.3):

- ``segment`` (SSv2 style): the video is cut into ``num_frames`` equal segments; training takes a
  random frame of each, testing the frame at ``(c + 0.5) / test_clips`` of each segment for clip c
  (the centre when there is one clip).
- ``dense`` (K400 style): ``num_frames`` frames ``stride`` apart; training starts at a random
  frame, testing at ``test_clips`` starts spread evenly (centred sub-ranges). A video shorter than
  the clip span loops (frame i -> i mod n), as MMAction2's ``SampleFrames`` does.

Views: training uses one random resized crop (same box and flip for every frame of the clip);
testing resizes the short side to ``crop_size`` and takes the centre crop or three crops along the
long side, for each clip: ``V = test_clips * test_crops`` views, clip-major.

Transforms: with ``motion`` (the camera stage's ``motion.npz``), the camera transforms between the *sampled*
frames are composed from the per-frame ones and carried into the output pixels of each view
(:mod:`amflow.data.transforms_geometry`).

Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``: an item depends only on
those three numbers, never on the DataLoader's worker count or order. Call :meth:`set_epoch` before
creating each epoch's DataLoader iterator (workers copy the dataset when the iterator starts, so do
not use ``persistent_workers=True`` with it).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from amflow import io
from amflow.data import transforms_geometry as geo
from amflow.data.frame_cache import FrameCache
from amflow.data.sources.synthmotion import read_distractor_coverage, read_ground_truth
from amflow.errors import AmflowError
from amflow.params import SamplingSpec

RATIO_RANGE = (3 / 4, 4 / 3)  # random-resized-crop aspect range (torchvision's default)


# --------------------------------------------------------------------------- frame indices
def segment_indices(n: int, num_frames: int, train: bool, rng: Optional[np.random.Generator] = None,
                    clips: int = 1) -> np.ndarray:
    """Segment sampling of a video with ``n`` frames -> int64 ``[clips, num_frames]`` (train: 1 clip)."""
    edges = np.linspace(0.0, n, num_frames + 1)
    lo = np.floor(edges[:-1]).astype(np.int64)
    hi = np.maximum(lo, np.floor(edges[1:]).astype(np.int64) - 1)  # inclusive; one frame if the segment is short
    if train:
        return (lo + (rng.integers(0, hi - lo + 1))).reshape(1, -1)
    pos = (np.arange(clips) + 0.5) / clips
    idx = np.floor(edges[:-1][None] + pos[:, None] * (edges[1:] - edges[:-1])[None]).astype(np.int64)
    return np.clip(idx, lo[None], hi[None])


def dense_indices(n: int, num_frames: int, stride: int, train: bool, rng: Optional[np.random.Generator] = None,
                  clips: int = 1) -> np.ndarray:
    """Dense sampling with ``stride`` -> int64 ``[clips, num_frames]``; short videos loop."""
    span = (num_frames - 1) * stride + 1
    slack = max(n - span, 0)
    if train:
        starts = np.array([rng.integers(0, slack + 1)])
    else:
        starts = (slack * (2 * np.arange(clips) + 1)) // (2 * clips)  # centres of equal sub-ranges
    return (starts[:, None] + np.arange(num_frames)[None] * stride) % n


def sample_indices(n: int, sampling: SamplingSpec, train: bool,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Frame indices ``[clips, num_frames]`` for a video of ``n`` frames (1 clip when training)."""
    if n < 1:
        raise ValueError("cannot sample a clip from a video with no frames")
    clips = 1 if train else sampling.test_clips
    if sampling.mode == "segment":
        return segment_indices(n, sampling.num_frames, train, rng, clips)
    return dense_indices(n, sampling.num_frames, sampling.stride, train, rng, clips)


# --------------------------------------------------------------------------- spatial views
def random_resized_crop_box(h: int, w: int, scale: tuple[float, float], rng: np.random.Generator,
                            ratio: tuple[float, float] = RATIO_RANGE) -> tuple[int, int, int, int]:
    """(x0, y0, cw, ch) of a random crop with area fraction in ``scale`` and aspect in ``ratio``."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    # Fallback (as torchvision): the largest centred crop with the aspect clamped to the range.
    r = w / h
    cw, ch = (w, int(round(w / ratio[0]))) if r < ratio[0] else (
        (int(round(h * ratio[1])), h) if r > ratio[1] else (w, h))
    cw, ch = min(cw, w), min(ch, h)
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def resize(frames: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resize uint8 [T,h,w,C] (area averaging when shrinking, bilinear otherwise; centre-aligned)."""
    h, w = frames.shape[1:3]
    if (h, w) == (out_h, out_w):
        return np.ascontiguousarray(frames)
    interp = cv2.INTER_AREA if out_w <= w and out_h <= h else cv2.INTER_LINEAR
    out = np.empty((len(frames), out_h, out_w, frames.shape[3]), np.uint8)
    for i, f in enumerate(frames):
        # (cv2 drops a single channel's axis)
        out[i] = cv2.resize(f, (out_w, out_h), interpolation=interp).reshape(out.shape[1:])
    return out


def train_view(frames: np.ndarray, sampling: SamplingSpec, rng: np.random.Generator):
    """One random resized crop (+ flip) for all frames -> (uint8 [T,S,S,3], 3x3 pixel map C)."""
    s = sampling.crop_size
    x0, y0, cw, ch = random_resized_crop_box(frames.shape[1], frames.shape[2], tuple(sampling.train_scale), rng)
    out = resize(frames[:, y0:y0 + ch, x0:x0 + cw], s, s)
    c = geo.crop_resize_matrix(x0, y0, cw, ch, s, s)
    if sampling.train_flip and rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, :, ::-1])
        c = geo.hflip_matrix(s) @ c
    return out, c


def test_views(frames: np.ndarray, sampling: SamplingSpec):
    """Short side to ``crop_size``, then the centre crop or 3 crops along the long side -> [(frames, C)]."""
    s = sampling.crop_size
    h, w = frames.shape[1:3]
    nh, nw = (s, max(s, int(round(w * s / h)))) if h <= w else (max(s, int(round(h * s / w))), s)
    resized = resize(frames, nw, nh)
    c_resize = geo.crop_resize_matrix(0, 0, w, h, nw, nh)
    long_slack = max(nw, nh) - s
    offsets = [long_slack // 2] if sampling.test_crops == 1 else [0, long_slack // 2, long_slack]
    views = []
    for off in offsets:
        ox, oy = (off, (nh - s) // 2) if nw >= nh else ((nw - s) // 2, off)
        views.append((np.ascontiguousarray(resized[:, oy:oy + s, ox:ox + s]),
                      geo.translation_matrix(-ox, -oy) @ c_resize))
    return views


# --------------------------------------------------------------------------- dataset
class Normalise:
    """uint8 clips ``[..., 3, S, S]`` -> float32 ``(x / 255 - mean) / std``, on the device the clips are on.

    Clips travel as uint8 (a quarter of float32 through the loader workers' shared memory and the host
    to GPU copy) and are normalised where the model runs. Float input is returned unchanged.
    """

    def __init__(self, mean, std):
        std = np.asarray(std, np.float64)
        self.scale = torch.from_numpy((1 / (255 * std)).astype(np.float32)).view(3, 1, 1)  # x*scale + shift
        self.shift = torch.from_numpy((-np.asarray(mean) / std).astype(np.float32)).view(3, 1, 1)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if video.dtype != torch.uint8:
            return video
        dev = video.device
        return video.float().mul_(self.scale.to(dev, non_blocking=True)).add_(self.shift.to(dev, non_blocking=True))


class ClipDataset(Dataset):
    """Clips of one split of a frame cache (see the module docstring for sampling and views).

    Item: ``video`` uint8 ``[T,3,S,S]`` (``[V,T,3,S,S]`` when testing with V > 1 views), to be put
    through :attr:`normalise` on the device, ``label`` int, ``transforms`` float32 ``[T-1,3,3]``
    (``[V,T-1,3,3]``), ``index`` int, and with ``ground_truth`` (SynthMotion's npz,
    :func:`amflow.data.sources.synthmotion.write_ground_truth`) ``coverage`` float32 ``[T,S,S]`` (``[V,T,S,S]``):
    the actor's share of each pixel of the view, cropped, resized and flipped with the frames (it
    travels as a fourth channel through the same calls); with ``distractors`` also
    ``distractor_coverage``, the same for the union of the distractors (a fifth channel).
    """

    def __init__(self, frames_dir: str | Path, split: str, sampling: SamplingSpec, train: bool,
                 motion: Optional[str | Path] = None, seed: int = 0, identity_for_static: bool = False,
                 ground_truth: Optional[str | Path] = None, distractors: bool = False):
        self.cache = FrameCache(frames_dir)
        self.split, self.sampling, self.train = split, sampling, bool(train)
        self.seed, self.epoch = int(seed), 0
        self.identity_for_static = bool(identity_for_static)
        videos = self.cache.videos(split)
        if len(videos) == 0:
            raise AmflowError(f"{frames_dir}: the frame cache has no videos for split '{split}' "
                              f"(splits present: {', '.join(sorted(self.cache.manifest['split'].unique()))})")
        self.positions = videos.index.to_numpy(np.int64)  # manifest positions
        self.labels = videos["label"].to_numpy(np.int64)
        self._num = videos["num_frames"].to_numpy(np.int64)
        self._start = videos["global_start"].to_numpy(np.int64)
        self.motion_path = None if motion is None else Path(motion)
        self._transforms = self._valid = self._moving = None
        if self.motion_path is not None:
            self._load_motion()
        self._coverage: Optional[list[np.ndarray]] = None
        if ground_truth is not None:
            self._load_coverage(Path(ground_truth), videos, distractors)
        self.normalise = Normalise(sampling.mean, sampling.std)

    @property
    def num_views(self) -> int:
        return 1 if self.train else self.sampling.test_clips * self.sampling.test_crops

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.positions)

    def _load_motion(self) -> None:
        path = self.motion_path
        if not path.exists():
            raise AmflowError(f"{path}: motion file not found; run `amflow camera-motion` for this dataset first")
        # Memory maps: pages are read as clips need them and shared by every loader worker (Kinetics-400's
        # transforms are about 2.6 GB: a copy per process would not fit).
        z = io.mmap_npz(path)
        transforms, valid, moving = z["transforms"], z["valid"], z["video_moving"]
        total, videos = self.cache.num_frames_total, len(self.cache)
        if transforms.shape != (total, 3, 3) or valid.shape != (total,) or moving.shape != (videos,):
            raise AmflowError(f"{path}: shapes transforms {transforms.shape}, valid {valid.shape}, video_moving "
                              f"{moving.shape} do not match the frame cache ({total} frames, {videos} videos); "
                              "the cache was re-extracted after it: rerun `amflow camera-motion`")
        self._transforms, self._valid, self._moving = transforms, valid, moving

    # Pickling (DataLoader with spawn) must not copy the mapped motion arrays: reopen them lazily.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_transforms"] = state["_valid"] = state["_moving"] = None
        return state

    def _load_coverage(self, path: Path, videos, distractors: bool) -> None:
        names, coverage, _ = read_ground_truth(path, self.split)
        if distractors:
            coverage = np.stack([coverage, read_distractor_coverage(path, self.split)], axis=-1)
        else:
            coverage = coverage[..., None]
        row = {str(v): i for i, v in enumerate(names)}
        missing = [v for v in videos["video"].astype(str) if v not in row]
        if missing:
            raise AmflowError(f"{path}: no ground truth for {len(missing)} '{self.split}' video(s) of the frame "
                              f"cache (first: {missing[0]}); rerun `amflow ground-truth` for this dataset")
        out = []
        for v, n, h, w in zip(videos["video"].astype(str), self._num, videos["height"], videos["width"]):
            cov = coverage[row[v]]
            if len(cov) != n:
                raise AmflowError(f"{path}: '{v}' has {len(cov)} frames of ground truth, the frame cache {n}; "
                                  f"rerun `amflow ground-truth` for this dataset")
            cov = np.rint(cov * 255).astype(np.uint8)
            out.append(resize(cov, int(w), int(h)))   # the cache may hold frames at another size
        self._coverage = out

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pos = int(self.positions[index])
        clips = sample_indices(int(self._num[index]), self.sampling, self.train, rng)  # [C, T]
        needed, inverse = np.unique(clips, return_inverse=True)  # one read of the distinct frames
        frames = self.cache.read(pos, needed)
        if self._coverage is not None:
            frames = np.concatenate([frames, self._coverage[index][needed]], axis=-1)
        videos, maps = [], []
        for c, clip in enumerate(inverse.reshape(clips.shape)):
            views = [train_view(frames[clip], self.sampling, rng)] if self.train else \
                test_views(frames[clip], self.sampling)
            between = self._between(index, clips[c])  # source pixels, shared by the clip's views
            for view, c_map in views:
                videos.append(view)
                maps.append(geo.conjugate(between, c_map) if between is not None else
                            np.tile(np.eye(3), (clips.shape[1] - 1, 1, 1)))
        views = np.stack(videos)
        item = {"label": int(self.labels[index]), "index": index}
        if self._coverage is not None:
            for channel, key in zip(range(3, views.shape[-1]), ("coverage", "distractor_coverage")):
                coverage = views[..., channel].astype(np.float32) / 255
                item[key] = torch.from_numpy(coverage[0] if len(videos) == 1 else coverage)
            views = views[..., :3]
        video = np.ascontiguousarray(views.transpose(0, 1, 4, 2, 3))  # uint8 [V,T,3,S,S]
        trans = np.stack(maps).astype(np.float32)
        if len(videos) == 1:
            video, trans = video[0], trans[0]
        item.update(video=torch.from_numpy(video), transforms=torch.from_numpy(np.ascontiguousarray(trans)))
        return item

    def _between(self, index: int, frames: np.ndarray) -> Optional[np.ndarray]:
        """Source-pixel transforms between successive sampled frames, or None for identity."""
        if self.motion_path is None:
            return None
        if self._transforms is None:  # unpickled in a spawned worker
            self._load_motion()
        if self.identity_for_static and not self._moving[self.positions[index]]:
            return None
        g, n = int(self._start[index]), int(self._num[index])
        return geo.compose_between(np.asarray(self._transforms[g:g + n]), self._valid[g:g + n].astype(bool), frames)
