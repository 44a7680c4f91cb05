"""Global (camera) motion between two frames: one estimator for the camera-motion stage and the
aligned AM flow (docs/design.md 2.4, 2.5; convention in docs/architecture.md, "Global motion").

Convention: ``matrix`` is a 3x3 float64 ``H`` with ``x_b ~ H x_a`` for background pixels, in pixel
coordinates with pixel centres at integers (the convention of ``cv2.warpAffine``).

Method, chosen to work from 32 px to 224+ px frames:

1. Grey frames, downscaled so that the long side is at most ``max_side`` (speed; the transform is
   conjugated back to full resolution).
2. A regular grid of points (about ``grid_points`` of them, 2 to 3 px apart on a 32 px frame) tracked
   with pyramidal Lucas-Kanade. Keypoint detectors (ORB, SIFT) find only a handful of corners on a
   32 px frame; LK on a grid uses every textured patch, and its own minimum-eigenvalue test drops
   points in flat regions. The tracker starts from a phase-correlation estimate of the global shift,
   so pans larger than the LK window still converge.
3. Forward-backward check (track b -> a again): points whose round trip misses by more than
   ``fb_threshold`` px are discarded (occlusions, points leaving the view, aperture problem).
4. RANSAC fit of a similarity (``cv2.estimateAffinePartial2D``) or homography
   (``cv2.findHomography``): moving objects are the outliers. Then a least-squares refit on the
   tracks within 2.5x the median residual: an object drifting by less than RANSAC's threshold (an
   actor at 32 px) would otherwise pull the background estimate by ~0.2 px.
5. Validity: enough texture, enough tracks, inlier ratio, bounds on scale, rotation, perspective and
   displacement, and a photometric check (median over 4x4 blocks of the normalised cross-correlation
   of warped ``a`` against ``b``) that catches scene cuts. Anything that fails returns the identity
   with ``valid=False`` and a ``reason``; the estimator never raises on frame content.

Measured (tests/camera/test_global_motion.py, bench/bench_camera.py): corner error < 0.3 px for shifts up
to 30% of the frame, 3 degree rotations and 5% zooms at 32, 64, 128 and 224 px; on SynthMotion
(32 px easy) median 0.1 px against the generator's true camera; 2 to 6 ms per pair on one core.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from amflow.params import MOTION_MODELS as MODELS, CameraMotionSpec, MotionModel as Model

# Reasons an estimate is invalid (``MotionEstimate.reason``); "ok" when valid.
REASONS = ("ok", "textureless", "too_few_tracks", "fit_failed", "low_inliers", "out_of_bounds",
           "photometric")


_SPEC = CameraMotionSpec()


@dataclass(frozen=True)
class MotionSettings:
    """Tuning of the estimator. Defaults were measured on 32 to 224 px frames (bench/bench_camera.py).

    The settings a params file can change (``camera_motion.max_side``, ``min_inlier_ratio``, ``min_ncc``)
    take their defaults from the schema, :class:`amflow.params.CameraMotionSpec`."""

    max_side: int = _SPEC.max_side  # frames above this long side are downscaled before tracking
    grid_points: int = 200         # about this many grid points are tracked
    min_std: float = 2.0           # grey-level std (0..255) below which a frame is textureless
    min_eig: float = 1e-3          # LK minimum-eigenvalue threshold: drops points in flat regions
    min_tracks: int = 10           # fewer tracked points than this: invalid
    fb_threshold: float = 0.5      # forward-backward round-trip error (px, tracking scale); 0 = no check
    ransac_threshold: float = 1.0  # RANSAC reprojection threshold (px, tracking scale)
    min_inlier_ratio: float = _SPEC.min_inlier_ratio  # inliers / textured grid points
    min_ncc: float = _SPEC.min_ncc  # photometric check: NCC of warped a vs b on the overlap
    min_overlap: float = 0.25      # share of frame b covered by warped a
    max_scale_change: float = 1.5  # |log scale| <= log(this) per frame pair
    max_rotation_deg: float = 30.0
    max_displacement: float = 0.35  # mean grid displacement / frame diagonal
    max_perspective: float = 0.2    # |1 - w| at the corners for a homography


DEFAULT_SETTINGS = MotionSettings()


@dataclass
class MotionEstimate:
    """One frame pair's global motion. ``matrix`` is the identity whenever ``valid`` is False."""

    matrix: np.ndarray
    inlier_ratio: float
    valid: bool
    reason: str
    ncc: float = float("nan")     # photometric agreement (NaN when not reached)
    num_tracks: int = 0           # tracks that passed the forward-backward check


def _identity() -> np.ndarray:
    return np.eye(3, dtype=np.float64)


def _invalid(reason: str, inlier_ratio: float = 0.0, ncc: float = float("nan"), num_tracks: int = 0) -> MotionEstimate:
    return MotionEstimate(_identity(), float(inlier_ratio), False, reason, float(ncc), int(num_tracks))


# --------------------------------------------------------------------------- per-frame preparation
@dataclass
class _Prepared:
    grey: np.ndarray              # uint8 [h, w] at tracking scale
    scale: float                  # tracking size / full size (<= 1)
    full_shape: tuple             # (H, W) of the original frame
    std: float


def _lk_params(h: int, w: int) -> tuple[tuple[int, int], int]:
    side = min(h, w)
    # Window grows with the frame but stays small enough for local (non-translational) motion.
    win = int(np.clip(round(side / 6), 7, 13)) | 1
    # Coarsest pyramid level keeps at least ~12 px on the short side.
    levels = int(np.clip(math.floor(math.log2(max(side, 1) / 12.0)), 0, 4))
    return (win, win), levels


def _prepare(frame: np.ndarray, settings: MotionSettings) -> _Prepared:
    if frame.ndim == 3:
        if frame.shape[2] == 3:
            grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        elif frame.shape[2] == 1:
            grey = np.ascontiguousarray(frame[..., 0])
        else:
            raise ValueError(f"frame must be [H, W, 3] or [H, W]; got shape {frame.shape}")
    elif frame.ndim == 2:
        grey = np.ascontiguousarray(frame)
    else:
        raise ValueError(f"frame must be [H, W, 3] or [H, W]; got shape {frame.shape}")
    if grey.dtype != np.uint8:
        grey = np.clip(grey, 0, 255).astype(np.uint8)
    full_shape = grey.shape
    scale = 1.0
    long_side = max(full_shape)
    if long_side > settings.max_side:
        scale = settings.max_side / long_side
        size = (max(8, round(full_shape[1] * scale)), max(8, round(full_shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        scale = size[0] / full_shape[1]  # exact ratio used for conjugation (width-based)
    # (Precomputed LK pyramids cannot cross the Python binding; calcOpticalFlowPyrLK builds them.)
    return _Prepared(grey, scale, full_shape, float(grey.std()))


def _grid(h: int, w: int, n: int, margin: int) -> np.ndarray:
    step = max(1.0, math.sqrt(max((h - 2 * margin) * (w - 2 * margin), 1) / n))
    ys = np.arange(margin, h - margin, step)
    xs = np.arange(margin, w - margin, step)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def _scale_matrix(scale_x: float, scale_y: float) -> np.ndarray:
    # Full-resolution pixel centre x maps to (x + 0.5) * s - 0.5 at tracking scale (cv2.resize).
    return np.array([[scale_x, 0, 0.5 * scale_x - 0.5],
                     [0, scale_y, 0.5 * scale_y - 0.5],
                     [0, 0, 1]], dtype=np.float64)


# --------------------------------------------------------------------------- checks
@functools.lru_cache(maxsize=64)
def _unit_grid(height: int, width: int, n: int) -> np.ndarray:
    gx, gy = np.meshgrid(np.linspace(0, width - 1, n), np.linspace(0, height - 1, n))
    pts = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)], axis=0)
    pts.flags.writeable = False
    return pts


def grid_displacement(matrix: np.ndarray, height: int, width: int, n: int = 5) -> float:
    """Mean displacement of an ``n x n`` grid spanning the frame (corners included) under ``matrix``,
    as a fraction of the frame diagonal: the "background displacement" of a frame pair."""
    pts = _unit_grid(int(height), int(width), int(n))
    moved = np.asarray(matrix, dtype=np.float64) @ pts
    w = moved[2]
    if np.any(np.abs(w) < 1e-9):
        return float("inf")
    moved = moved[:2] / w
    d = np.linalg.norm(moved - pts[:2], axis=0).mean()
    return float(d / math.hypot(width, height))


def _within_bounds(matrix: np.ndarray, h: int, w: int, s: MotionSettings) -> bool:
    if not np.all(np.isfinite(matrix)):
        return False
    a = matrix[:2, :2]
    det = float(np.linalg.det(a))
    if det <= 0:  # a reflection or a collapse is never a camera motion
        return False
    if abs(0.5 * math.log(det)) > math.log(s.max_scale_change):
        return False
    rotation = math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]))
    if abs(rotation) > s.max_rotation_deg:
        return False
    corners = np.array([[0, w - 1, w - 1, 0], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], dtype=np.float64)
    wz = matrix[2] @ corners
    if np.any(np.abs(1.0 - wz) > s.max_perspective):
        return False
    return grid_displacement(matrix, h, w) <= s.max_displacement


def _ncc_after_warp(a: np.ndarray, b: np.ndarray, matrix: np.ndarray, s: MotionSettings) -> tuple[float, float]:
    """Photometric agreement of ``a`` warped into ``b``'s frame with ``b``: the median over a 4x4 grid
    of blocks of the normalised cross-correlation on the overlap (a median, so that a moving object
    covering part of the frame does not fail a correct estimate; flat blocks are skipped), and the
    share of ``b`` that the warped ``a`` covers."""
    h, w = b.shape
    af = a.astype(np.float32)
    bf = b.astype(np.float32)
    ones = np.ones_like(af)
    if abs(matrix[2, 0]) < 1e-12 and abs(matrix[2, 1]) < 1e-12:
        m = matrix[:2] / matrix[2, 2]
        warped = cv2.warpAffine(af, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        mask = cv2.warpAffine(ones, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    else:
        warped = cv2.warpPerspective(af, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        mask = cv2.warpPerspective(ones, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    m = (mask > 0.999).astype(np.float32)  # fully inside: no blending with the black border
    overlap = float(m.mean())
    # Block sums of the masked moments, all six at once.
    stack = np.stack([m, m * warped, m * bf, m * warped * warped, m * bf * bf, m * warped * bf], axis=-1)
    rows = np.linspace(0, h, 5).astype(int)[:-1]
    cols = np.linspace(0, w, 5).astype(int)[:-1]
    sums = np.add.reduceat(np.add.reduceat(stack.astype(np.float64), rows, axis=0), cols, axis=1).reshape(-1, 6)
    area = np.outer(np.diff(np.r_[rows, h]), np.diff(np.r_[cols, w])).ravel()
    n = sums[:, 0]
    use = n > 0.5 * area  # at least half of the block inside the overlap
    if not use.any():
        return float("nan"), overlap
    n = n[use]
    ex, ey, exx, eyy, exy = (sums[use, k] / n for k in range(1, 6))
    vx, vy = exx - ex * ex, eyy - ey * ey
    textured = (vx > 1.0) & (vy > 1.0)  # grey-level std above 1: a flat block says nothing
    if textured.sum() < 2:
        return float("nan"), overlap
    ncc = (exy - ex * ey)[textured] / np.sqrt(vx[textured] * vy[textured])
    return float(np.median(ncc)), overlap


# --------------------------------------------------------------------------- the estimator
def _initial_shift(pa: _Prepared, pb: _Prepared) -> np.ndarray:
    # Phase correlation: a global translation guess that holds for any shift below half the frame,
    # where LK alone would need the motion to be smaller than its window at the coarsest level.
    a = pa.grey.astype(np.float32)
    b = pb.grey.astype(np.float32)
    win = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, win)
    if not (np.isfinite(dx) and np.isfinite(dy)) or response < 0.05:
        return np.zeros(2, dtype=np.float32)
    return np.array([dx, dy], dtype=np.float32)


def _fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (x' = a x - b y + tx, y' = b x + a y + ty), centred for conditioning."""
    cs, cd = src.mean(0), dst.mean(0)
    p, q = src - cs, dst - cd
    denom = float((p * p).sum())
    if denom < 1e-12:
        return np.eye(3)
    a = float((p * q).sum()) / denom
    b = float((p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum()) / denom
    rs = np.array([[a, -b], [b, a]])
    t = cd - rs @ cs
    return np.array([[a, -b, t[0]], [b, a, t[1]], [0.0, 0.0, 1.0]])


def _residuals(matrix: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    if matrix[2, 0] == 0.0 and matrix[2, 1] == 0.0:
        proj = src @ (matrix[:2, :2] / matrix[2, 2]).T + matrix[:2, 2] / matrix[2, 2]
    else:
        proj = cv2.perspectiveTransform(src.reshape(-1, 1, 2).astype(np.float64), matrix).reshape(-1, 2)
    r = np.sqrt(((proj - dst) ** 2).sum(axis=1))
    r[~np.isfinite(r)] = np.inf
    return r


def _refine(matrix: np.ndarray, src: np.ndarray, dst: np.ndarray, model: Model, s: MotionSettings) -> np.ndarray:
    """Refit on the points that agree with ``matrix`` to within the noise of the tracks.

    The RANSAC threshold must tolerate tracking noise on real frames, but then an object moving
    slowly (a fraction of a pixel per frame, like an actor at 32 px) passes as background and drags
    the fit. Here the threshold adapts to the measured noise (2.5 x the median residual, between
    0.15 px and the RANSAC threshold); two rounds.
    """
    for _ in range(2):
        r = _residuals(matrix, src, dst)
        core = r[r < s.ransac_threshold]
        if len(core) < s.min_tracks:
            return matrix
        # For 2-D Gaussian noise, 2.5 x the median residual norm keeps about 99% of the true inliers.
        keep = r < float(np.clip(2.5 * float(np.median(core)), 0.15, s.ransac_threshold))
        if keep.sum() < s.min_tracks:
            return matrix
        if model == "similarity":
            new = _fit_similarity(src[keep], dst[keep])
        else:
            new, _ = cv2.findHomography(src[keep], dst[keep], 0)
            if new is None or abs(new[2, 2]) < 1e-12:
                return matrix
            new = new / new[2, 2]
        if not np.all(np.isfinite(new)):
            return matrix
        matrix = new
    return matrix


def _estimate_prepared(pa: _Prepared, pb: _Prepared, model: Model, s: MotionSettings) -> MotionEstimate:
    if pa.full_shape != pb.full_shape:
        raise ValueError(f"frames differ in size: {pa.full_shape} vs {pb.full_shape}")
    if pa.std < s.min_std or pb.std < s.min_std:
        return _invalid("textureless")
    h, w = pa.grey.shape
    win, levels = _lk_params(h, w)
    margin = max(2, win[0] // 4)
    p0 = _grid(h, w, s.grid_points, margin)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)
    shift = _initial_shift(pa, pb)
    guess = p0 + shift
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(pa.grey, pb.grey, p0, guess.copy(), winSize=win, maxLevel=levels,
                                          criteria=criteria, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                          minEigThreshold=s.min_eig)
    textured = st1.ravel() == 1
    n_textured = int(textured.sum())
    if n_textured < s.min_tracks:
        return _invalid("textureless", num_tracks=n_textured)
    p0t, p1t = p0[textured], p1[textured]
    inside = (p1t[:, 0] >= 0) & (p1t[:, 0] <= w - 1) & (p1t[:, 1] >= 0) & (p1t[:, 1] <= h - 1)
    good = inside
    if s.fb_threshold > 0:
        back, st2, _ = cv2.calcOpticalFlowPyrLK(pb.grey, pa.grey, p1t, p0t.copy(), winSize=win, maxLevel=levels,
                                                criteria=criteria, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                                minEigThreshold=s.min_eig)
        good = good & (st2.ravel() == 1) & (np.linalg.norm(back - p0t, axis=1) < s.fb_threshold)
    n_good = int(good.sum())
    if n_good < s.min_tracks:
        return _invalid("too_few_tracks", num_tracks=n_good)
    src, dst = p0t[good], p1t[good]
    if model == "similarity":
        m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=s.ransac_threshold,
                                             maxIters=2000, confidence=0.995, refineIters=10)
        matrix = None if m is None else np.vstack([m, [0.0, 0.0, 1.0]])
    elif model == "homography":
        matrix, inl = cv2.findHomography(src, dst, cv2.RANSAC, s.ransac_threshold, maxIters=2000, confidence=0.995)
        if matrix is not None and abs(matrix[2, 2]) > 1e-12:
            matrix = matrix / matrix[2, 2]
    else:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}")
    if matrix is None or inl is None:
        return _invalid("fit_failed", num_tracks=n_good)
    n_in = int(np.asarray(inl).ravel().astype(bool).sum())
    # FB failures count against the ratio: a scene cut tracks few points consistently.
    ratio = n_in / n_textured
    if n_in < s.min_tracks or ratio < s.min_inlier_ratio:
        return _invalid("low_inliers", ratio, num_tracks=n_good)
    matrix = _refine(np.asarray(matrix, dtype=np.float64), src, dst, model, s)
    if not _within_bounds(matrix, h, w, s):
        return _invalid("out_of_bounds", ratio, num_tracks=n_good)
    ncc, overlap = _ncc_after_warp(pa.grey, pb.grey, matrix, s)
    if not (overlap >= s.min_overlap and np.isfinite(ncc) and ncc >= s.min_ncc):
        return _invalid("photometric", ratio, ncc, num_tracks=n_good)
    if pa.scale != 1.0:
        sx = pa.grey.shape[1] / pa.full_shape[1]
        sy = pa.grey.shape[0] / pa.full_shape[0]
        sm = _scale_matrix(sx, sy)
        matrix = np.linalg.inv(sm) @ matrix @ sm
        matrix = matrix / matrix[2, 2]
    return MotionEstimate(matrix, float(ratio), True, "ok", float(ncc), n_good)


def estimate_pair(frame_a: np.ndarray, frame_b: np.ndarray, model: Model = "similarity",
                  settings: Optional[MotionSettings] = None) -> MotionEstimate:
    """Global motion from ``frame_a`` to ``frame_b`` (uint8 ``[H, W, 3]`` RGB or ``[H, W]`` grey)."""
    s = settings or DEFAULT_SETTINGS
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}")
    return _estimate_prepared(_prepare(frame_a, s), _prepare(frame_b, s), model, s)


def estimate_pairs(frames: np.ndarray | Sequence[np.ndarray], pairs: Sequence[int], model: Model = "similarity",
                   settings: Optional[MotionSettings] = None) -> list[MotionEstimate]:
    """Estimates for the consecutive pairs ``(t, t+1)`` for each ``t`` in ``pairs``; each frame is prepared once."""
    s = settings or DEFAULT_SETTINGS
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}; got {model!r}")
    cache: dict[int, _Prepared] = {}

    def prep(i: int) -> _Prepared:
        if i not in cache:
            cache[i] = _prepare(frames[i], s)
        return cache[i]

    out = []
    for t in pairs:
        t = int(t)
        if not 0 <= t < len(frames) - 1:
            raise IndexError(f"pair start {t} outside 0..{len(frames) - 2}")
        out.append(_estimate_prepared(prep(t), prep(t + 1), model, s))
        cache.pop(t, None)  # frames are visited in order: keep memory flat
    return out


def estimate_sequence(frames: np.ndarray, model: Model = "similarity", settings: Optional[MotionSettings] = None,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every consecutive pair of ``frames`` ``[T, H, W, 3]`` uint8.

    Returns ``transforms`` float32 ``[T-1, 3, 3]`` (identity where invalid), ``inlier_ratio`` float32
    ``[T-1]`` and ``valid`` bool ``[T-1]``.
    """
    n = max(len(frames) - 1, 0)
    ests = estimate_pairs(frames, range(n), model, settings)
    transforms = np.stack([e.matrix for e in ests]).astype(np.float32) if n else np.zeros((0, 3, 3), np.float32)
    ratio = np.array([e.inlier_ratio for e in ests], dtype=np.float32)
    valid = np.array([e.valid for e in ests], dtype=bool)
    return transforms, ratio, valid
