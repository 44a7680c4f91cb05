"""The SynthMotion scene renderer, shared by the video generator and the single-image pretraining set.

A scene lives in *world* coordinates (pixels of a textured canvas larger than the frame). A camera
maps world to frame pixels with a 3x3 matrix ``C`` (``x_frame ~ C x_world``; pixel centres at
integer coordinates, the convention of ``cv2.warpAffine``). A frame is rendered by

1. warping the background texture through ``C`` (OpenCV, bilinear),
2. compositing the distractors, then the actor, as anti-aliased polygons whose vertices are mapped
   through ``C`` and rasterised with 4x4 supersampling (so the coverage mask is an area fraction
   and the actor's measured area and centroid are accurate to a small fraction of a pixel),
3. adding Gaussian pixel noise.

Everything random is drawn by the caller from a ``numpy.random.Generator``; the functions here are
pure given their arguments, so a scene is reproducible from its seed.

Difficulty (docs/design.md 3.1) is captured by :class:`SceneStyle`: ``easy`` (no distractors, background
contrast 0.4, fixed pixel sizes whatever the resolution), ``standard`` (full-contrast texture,
0-2 distractors, sizes and speeds scaled with the resolution) and ``clutter`` (``easy``'s actor on a
full-contrast texture with 2-3 lookalike distractors that sway in place and turn slowly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from amflow.params import DIFFICULTIES

# --------------------------------------------------------------------------- shapes
# Polygons in a unit box (x right, y down), none with a rotational symmetry (so that a rotation is
# visible) and all elongated (so that the principal axis of the mask gives the orientation).
_RAW_SHAPES: dict[str, list[tuple[float, float]]] = {
    "triangle": [(0.0, -0.5), (0.32, 0.5), (-0.32, 0.5)],
    "L": [(-0.3, -0.5), (-0.04, -0.5), (-0.04, 0.24), (0.3, 0.24), (0.3, 0.5), (-0.3, 0.5)],
    "arrow": [(-0.5, -0.13), (0.08, -0.13), (0.08, -0.32), (0.5, 0.0), (0.08, 0.32), (0.08, 0.13),
              (-0.5, 0.13)],
    "T": [(-0.4, -0.5), (0.4, -0.5), (0.4, -0.24), (0.13, -0.24), (0.13, 0.5), (-0.13, 0.5),
          (-0.13, -0.24), (-0.4, -0.24)],
    "F": [(-0.3, -0.5), (0.3, -0.5), (0.3, -0.27), (-0.05, -0.27), (-0.05, -0.08), (0.2, -0.08),
          (0.2, 0.14), (-0.05, 0.14), (-0.05, 0.5), (-0.3, 0.5)],
    "half_disc": [(0.5 * math.cos(a), 0.25 - 0.5 * math.sin(a)) for a in np.linspace(0, math.pi, 13)],
}
SHAPE_NAMES: tuple[str, ...] = tuple(_RAW_SHAPES)


def _centred(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Vertices moved so that the polygon's area centroid is the origin, scaled so that the larger side
    of its bounding box is 1: ``size`` then means that side in pixels, and a rotation about the
    origin leaves the centroid in place."""
    p = np.asarray(points, np.float64)
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    cx = ((x + xn) * cross).sum() / (6 * area)
    cy = ((y + yn) * cross).sum() / (6 * area)
    p = p - (cx, cy)
    return p / max(np.ptp(p[:, 0]), np.ptp(p[:, 1]))


SHAPES: dict[str, np.ndarray] = {name: _centred(pts) for name, pts in _RAW_SHAPES.items()}


def shape_polygon(shape: str, centre: Sequence[float], size: float, angle_deg: float) -> np.ndarray:
    """World vertices [K,2] of ``shape`` with its centroid at ``centre``, ``size`` px, rotated by
    ``angle_deg``. Positive angles turn clockwise on screen (y points down)."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return SHAPES[shape] @ rot.T * size + np.asarray(centre, np.float64)


# --------------------------------------------------------------------------- camera
def camera_matrix(centre: Sequence[float], zoom: float, resolution: int) -> np.ndarray:
    """World -> frame matrix of a camera looking at world point ``centre`` (frame centre) with
    magnification ``zoom`` (frame px per world px). No roll: only pan, zoom and shake."""
    c = (resolution - 1) / 2.0
    return np.array([[zoom, 0.0, c - zoom * centre[0]],
                     [0.0, zoom, c - zoom * centre[1]],
                     [0.0, 0.0, 1.0]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map [K,2] points through a 3x3 affine matrix."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


# --------------------------------------------------------------------------- difficulty
@dataclass(frozen=True)
class SceneStyle:
    """Every size, speed and contrast of one difficulty at one resolution (docs/design.md 3.1).

    Speeds are per *step*: one step is the interval between two frames of a ``speed_frames``-frame
    clip (see :mod:`amflow.data.sources.synthmotion`), so ``speed`` px/step over ``speed_frames - 1`` steps is
    the actor's whole travel.
    """

    resolution: int
    difficulty: str
    actor_size: tuple[float, float]        # world px, side of the shape's bounding box
    speed: tuple[float, float]             # world px per step (move, bounce)
    rotation: tuple[float, float]          # degrees per step (rotate)
    scale_ratio: tuple[float, float]       # total size ratio over the clip (grow, shrink)
    contrast: float                        # background texture contrast (1 = full)
    distractors: tuple[int, int]           # inclusive range of the number of distractors
    distractor_size: tuple[float, float]   # world px
    distractor_speed: tuple[float, float]  # world px per step
    # Lookalike distractors (clutter): drawn from the actor's shapes, colours and sizes, swaying about a
    # fixed point (zero drift) with this amplitude (world px) and turning at most this fast (deg per step).
    lookalike: bool
    sway: tuple[float, float]
    sway_rotation: float
    pan: tuple[float, float]               # moving camera: world px per step
    zoom_ratio: float                      # moving camera: total zoom ratio within [1/r, r]
    shake: float                           # moving camera: std of the per-frame jitter, world px
    noise: float                           # std of the pixel noise, in [0, 1] intensity units
    world: int                             # side of the square world canvas, px

    @property
    def scale(self) -> float:
        return 1.0 if self.difficulty == "easy" else self.resolution / 32.0


def scene_style(difficulty: str, resolution: int) -> SceneStyle:
    """The fixed style of a difficulty; never tuned per method (docs/design.md 3.1)."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty '{difficulty}' ({', '.join(DIFFICULTIES)})")
    # easy and clutter: the same pixel sizes and speeds whatever the resolution; standard: scaled with it.
    k = resolution / 32.0 if difficulty == "standard" else 1.0
    easy, clutter = difficulty == "easy", difficulty == "clutter"
    actor_size = (8.0 * k, 14.0 * k)
    return SceneStyle(
        resolution=resolution,
        difficulty=difficulty,
        actor_size=actor_size,
        speed=(2.0 * k, 3.0 * k),
        rotation=(15.0, 25.0),
        scale_ratio=(1.8, 2.4),
        contrast=0.4 if easy else 1.0,
        distractors={"easy": (0, 0), "standard": (0, 2), "clutter": (2, 3)}[difficulty],
        distractor_size=actor_size if clutter else (5.0 * k, 12.0 * k),
        distractor_speed=(1.0 * k, 3.0 * k),
        # Clutter's sway: 0.4-0.8 px from the rest point per axis, 0.5-1.5 sine cycles per clip, so a
        # distractor's speed (at most 0.8 * 2 pi * 1.5 / 7 = 1.1 px per step of an 8-frame clip on each
        # axis; measured over 600 clips: median peak 0.75, largest 1.3 px per step) stays under the
        # actor's 2-3 and its net travel under 1.6 px per axis (measured: median 0.7, largest 1.9 px;
        # a moving actor travels 14-21); its turn, at most 4 degrees per step, stays under 30 degrees
        # per clip (a rotating actor turns 105-175).
        lookalike=clutter,
        sway=(0.4, 0.8),
        sway_rotation=4.0,
        # The camera's travel is bounded so that, added to the fastest actor's, the actor's centroid
        # stays in the frame with every direction of the two motions: then the camera's direction is
        # independent of the class (no shortcut), and a staying actor still drifts 6-8 px per 32.
        pan=(0.8 * k, 1.2 * k),
        zoom_ratio=1.15,
        shake=0.3 * k,
        noise=(3.0 if easy else 6.0) / 255.0,
        world=2 * resolution,
    )


# --------------------------------------------------------------------------- colours and texture
def hsv_to_rgb(hue_deg: float, sat: float, val: float) -> np.ndarray:
    """RGB in [0, 1] (float32 [3]) of an HSV colour, hue in degrees."""
    hsv = np.array([[[hue_deg % 360.0, sat, val]]], np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


def actor_colour(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A saturated, bright colour (so that the actor stands out of an ``easy`` background) and its hue;
    ``clutter``'s distractors draw theirs from the same distribution."""
    hue = float(rng.uniform(0.0, 360.0))
    return hsv_to_rgb(hue, float(rng.uniform(0.55, 1.0)), float(rng.uniform(0.75, 1.0))), hue


def distractor_colour(rng: np.random.Generator) -> np.ndarray:
    return hsv_to_rgb(float(rng.uniform(0, 360)), float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.3, 1.0)))


def make_texture(rng: np.random.Generator, size: int, contrast: float) -> np.ndarray:
    """A square background texture float32 [size, size, 3] in [0, 1].

    Smooth multi-octave noise (structure at every scale from half the canvas to 2 px, so that phase
    correlation and feature trackers find the camera motion) plus a few random strokes (corners),
    around a dull random base colour. ``contrast`` scales the deviations from the texture's mean:
    1 spans the full intensity range, 0.4 is the ``easy`` background.
    """
    lum = np.zeros((size, size), np.float32)
    for cells, weight in ((2, 1.0), (4, 0.8), (8, 0.6), (16, 0.45), (size // 2, 0.3)):
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        lum += weight * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    chroma = np.stack([cv2.resize(rng.standard_normal((4, 4)).astype(np.float32), (size, size),
                                  interpolation=cv2.INTER_CUBIC) for _ in range(3)], axis=-1)
    tex = lum[..., None] + 0.5 * chroma
    for _ in range(int(rng.integers(3, 7))):  # faint strokes: lines, rectangles and ellipses (corners)
        colour = tuple(float(v) for v in rng.normal(0.0, 0.8, 3))
        p = rng.uniform(0, size, 4)
        thick = int(rng.integers(1, 3)) * max(1, size // 64)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            cv2.line(tex, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, thick)
        elif kind == 1:
            cv2.rectangle(tex, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, thick)
        else:
            axes = (int(rng.uniform(2, size / 6)), int(rng.uniform(2, size / 6)))
            cv2.ellipse(tex, (int(p[0]), int(p[1])), axes, float(rng.uniform(0, 180)), 0, 360, colour, thick)
    tex = (tex - tex.mean()) / (4.0 * max(float(tex.std()), 1e-6)) + 0.5   # full range: +-2 std in [0, 1]
    base = hsv_to_rgb(float(rng.uniform(0, 360)), float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.3, 0.55)))
    out = base + contrast * (tex - tex.mean(axis=(0, 1)))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- rasterising
_SS = 4         # supersampling factor per axis
_SHIFT = 8      # fixed-point fractional bits for cv2.fillPoly


def _inset(points: np.ndarray) -> np.ndarray:
    """The polygon with each edge moved inwards by half a sub-pixel times max(|n_x|, |n_y|).

    cv2.fillPoly rounds both ends of every span (and the first and last rows) outwards, which adds
    about half a sub-pixel along the outline (+8% area for an 8 px actor); this inset cancels it
    (measured: mean area error 0.1%, std 1.7% for 6-20 px shapes at every angle)."""
    edges = np.roll(points, -1, axis=0) - points
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1, keepdims=True)
    twice_area = np.sum(points[:, 0] * np.roll(points[:, 1], -1) - np.roll(points[:, 0], -1) * points[:, 1])
    if twice_area < 0:
        normals = -normals  # the left normal points inwards for a positively oriented polygon
    shift = 0.5 * np.abs(normals).max(axis=1)
    # Vertex i joins edge i-1 and edge i: intersect their shifted lines n . x = n . p + shift.
    a = np.stack([np.roll(normals, 1, axis=0), normals], axis=1)
    rhs = np.stack([np.roll(shift, 1), shift], axis=1)
    return points + np.linalg.solve(a, rhs[..., None])[..., 0]


def coverage(points_frame: np.ndarray, resolution: int) -> np.ndarray:
    """Area fraction float32 [R, R] of each frame pixel covered by the polygon (frame coordinates).

    Drawn on a 4x supersampled canvas and box-filtered down: a pixel's value is the share of its
    16 sub-pixels whose centres lie inside the polygon.
    """
    hi = resolution * _SS
    canvas = np.zeros((hi, hi), np.uint8)
    # Frame pixel i spans [i - 0.5, i + 0.5]; sub-pixel j has its centre at (j + 0.5) / SS - 0.5.
    sub = _inset((points_frame + 0.5) * _SS - 0.5)
    pts = np.round(sub * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_8, shift=_SHIFT)
    return cv2.resize(canvas, (resolution, resolution), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def warp_background(texture: np.ndarray, camera: np.ndarray, resolution: int) -> np.ndarray:
    """The part of the world texture the camera sees, float32 [R, R, 3]."""
    return cv2.warpAffine(texture, camera[:2].astype(np.float64), (resolution, resolution),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def composite(frame: np.ndarray, alpha: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
    """Paint ``colour`` over ``frame`` (in place) with per-pixel ``alpha`` times ``opacity``."""
    a = (alpha * opacity)[..., None]
    frame *= 1.0 - a
    frame += a * colour


def add_noise(frame: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Float [0, 1] frame + Gaussian pixel noise -> uint8."""
    noisy = frame + rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Sprite:
    """One shape in one frame, in world coordinates."""

    shape: str
    centre: tuple[float, float]
    size: float
    angle_deg: float
    colour: np.ndarray
    opacity: float = 1.0


def render_frame(texture: np.ndarray, camera: np.ndarray, resolution: int, sprites: Sequence[Sprite],
                 noise_rng: Optional[np.random.Generator], noise: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render one frame: background through ``camera``, then ``sprites`` in order (the last on top),
    then pixel noise. Returns (uint8 [R, R, 3], the geometric coverage of each sprite [R, R]).

    A sprite's coverage is its own shape's area fraction, before opacity and before any later sprite
    covers it (the actor is drawn last, so its coverage is exactly what is visible of it).
    """
    frame = warp_background(texture, camera, resolution)
    masks = []
    for s in sprites:
        poly = apply(camera, shape_polygon(s.shape, s.centre, s.size, s.angle_deg))
        alpha = coverage(poly, resolution)
        composite(frame, alpha, s.colour, s.opacity)
        masks.append(alpha)
    if noise_rng is None:
        return np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8), masks
    return add_noise(frame, noise_rng, noise), masks
