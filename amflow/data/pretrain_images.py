"""The single-image set for pretraining the embedded default's backbone (docs/design.md 2.6).

Random single frames drawn by the SynthMotion scene renderer (:mod:`amflow.data.scene`: the same
textures, shapes, colours, distractors, camera zoom and pixel noise as the videos), labelled ONLY by
attributes one image shows, never by motion:

=============  =======  ==============================================================
attribute      classes  label
=============  =======  ==============================================================
shape          6        the actor's shape (:data:`amflow.data.scene.SHAPE_NAMES`)
colour         6        hue bin of 60 degrees centred on red, yellow, green, cyan, blue, magenta
position       9        3x3 grid cell of the actor's centroid in the frame (row-major)
orientation    8        angle bin of 45 degrees, centred on 0, 45, ... (clockwise on screen)
size           3        thirds (log scale) of the range of apparent sizes (px in the frame)
=============  =======  ==============================================================

In the ``clutter`` style every image holds 3-4 lookalike objects (the actor's shape, colour and size
distributions, none singled out), so an attribute's label is the *set* of its classes that the
objects show: a bit mask (bit k set when some object is in class k), learnt as a multi-label target.
The easy and standard styles label the one actor (a class index).

Output folder (``data/pretrain_images/``): ``images_{train,val}.npy`` (uint8 ``[N, R, R, 3]``),
``labels_{train,val}.csv`` (one integer column per attribute, plus the continuous values they were
binned from) and, last, ``info.json`` (attributes, number of classes, counts, spec).
Image ``i`` of a split is drawn from ``SeedSequence([DOMAIN, seed, split, i])``: the bytes do not
depend on the number of worker processes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from amflow import io, paths
from amflow.data import scene
from amflow.errors import AmflowError
from amflow.params import PretrainImagesSpec

SPLITS = ("train", "val")
SPLIT_IDS = {"train": 0, "val": 1}
GENERATOR_VERSION = 1
DOMAIN_STILL = 0x53594E10
DOMAIN_TEXTURE = 0x53594E11
TEXTURE_GROUP = 8  # consecutive images that share a background canvas (CHUNK is a multiple of it)
CHUNK = 512  # images per worker task
COLOUR_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": scene.SHAPE_NAMES,
    "colour": COLOUR_NAMES,
    "position": tuple(f"r{r}c{c}" for r in range(3) for c in range(3)),
    "orientation": tuple(f"{a}deg" for a in range(0, 360, 45)),
    "size": ("small", "medium", "large"),
}


def size_range(style: scene.SceneStyle) -> tuple[float, float]:
    """Apparent actor sizes (frame px) of the stills: the videos' range widened a little, since
    grow/shrink and zoom make actors smaller and larger than their base size."""
    return 0.75 * style.actor_size[0], 1.25 * style.actor_size[1]


def bin_colour(hue: float) -> int:
    return int(((hue + 30.0) % 360.0) // 60.0)


def bin_orientation(angle_deg: float) -> int:
    return int(((angle_deg + 22.5) % 360.0) // 45.0)


def bin_position(cx: float, cy: float, resolution: int) -> int:
    """3x3 cell of a point in frame pixel coordinates (pixel i spans [i - 0.5, i + 0.5])."""
    cell = resolution / 3.0
    col = min(2, max(0, int((cx + 0.5) // cell)))
    row = min(2, max(0, int((cy + 0.5) // cell)))
    return row * 3 + col


def bin_size(size_px: float, style: scene.SceneStyle) -> int:
    lo, hi = size_range(style)
    k = (math.log(size_px) - math.log(lo)) / (math.log(hi) - math.log(lo)) * 3
    return min(2, max(0, int(k)))


def render_still(spec: PretrainImagesSpec, rng: np.random.Generator,
                 texture: np.ndarray | None = None) -> tuple[np.ndarray, dict, np.ndarray]:
    """One random frame: (uint8 [R, R, 3], labels and the values they come from, actor coverage [R, R]).

    ``texture`` (a world canvas from :func:`amflow.data.scene.make_texture`) is drawn from ``rng``
    when not given.
    """
    style = scene.scene_style(spec.difficulty, spec.resolution)
    res = spec.resolution
    if texture is None:
        texture = scene.make_texture(rng, style.world, style.contrast)
    # Random camera: any zoom of the video cameras, any view inside the world canvas.
    zoom = math.exp(rng.uniform(-0.5, 0.5) * math.log(style.zoom_ratio))
    mid = (style.world - 1) / 2.0
    cam = scene.camera_matrix(mid + rng.uniform(-res / 4, res / 4, 2), zoom, res)
    inv = np.linalg.inv(cam)

    if style.lookalike:
        return _render_lookalikes(style, texture, cam, zoom, rng)
    shape, colour, hue, size_px, angle, (cx, cy) = _object(style, rng)
    centre = scene.apply(inv, np.array([[cx, cy]]))[0]

    sprites = []
    for _ in range(int(rng.integers(style.distractors[0], style.distractors[1] + 1))):
        p = scene.apply(inv, rng.uniform(0, res - 1, (1, 2)))[0]
        sprites.append(scene.Sprite(str(rng.choice(scene.SHAPE_NAMES)), p, float(rng.uniform(*style.distractor_size)),
                                    float(rng.uniform(0, 360)), scene.distractor_colour(rng)))
    sprites.append(scene.Sprite(shape, centre, size_px / zoom, angle, colour))
    image, masks = scene.render_frame(texture, cam, res, sprites, rng, style.noise)
    labels = dict(shape=scene.SHAPE_NAMES.index(shape), colour=bin_colour(hue), position=bin_position(cx, cy, res),
                  orientation=bin_orientation(angle), size=bin_size(size_px, style),
                  shape_name=shape, hue_deg=round(hue, 2), cx=round(float(cx), 3), cy=round(float(cy), 3),
                  angle_deg=round(angle, 2), size_px=round(size_px, 3), distractors=len(sprites) - 1)
    return image, labels, masks[-1]


def _object(style: scene.SceneStyle, rng: np.random.Generator):
    """An actor-like object of a still: (shape, colour, hue, apparent size px, angle, frame centre)."""
    res = style.resolution
    shape = str(rng.choice(scene.SHAPE_NAMES))
    colour, hue = scene.actor_colour(rng)
    lo, hi = size_range(style)
    size_px = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))   # apparent size in the frame
    angle = float(rng.uniform(0.0, 360.0))
    margin = 0.3 * size_px
    return shape, colour, hue, size_px, angle, tuple(rng.uniform(margin, res - 1 - margin, 2))


def _render_lookalikes(style: scene.SceneStyle, texture: np.ndarray, cam: np.ndarray, zoom: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, dict, np.ndarray]:
    """A ``clutter`` still: 1 + (2 or 3) objects drawn alike; each attribute's label is the bit mask of
    the classes the objects show (see the module docstring). The mask returned is their union."""
    inv = np.linalg.inv(cam)
    objects = [_object(style, rng) for _ in range(1 + int(rng.integers(style.distractors[0],
                                                                       style.distractors[1] + 1)))]
    sprites = [scene.Sprite(shape, scene.apply(inv, np.array([centre]))[0], size_px / zoom, angle, colour)
               for shape, colour, _, size_px, angle, centre in objects]
    image, masks = scene.render_frame(texture, cam, style.resolution, sprites, rng, style.noise)
    bins = {"shape": [scene.SHAPE_NAMES.index(o[0]) for o in objects],
            "colour": [bin_colour(o[2]) for o in objects],
            "position": [bin_position(*o[5], style.resolution) for o in objects],
            "orientation": [bin_orientation(o[4]) for o in objects],
            "size": [bin_size(o[3], style) for o in objects]}
    labels = {name: int(sum(1 << k for k in set(classes))) for name, classes in bins.items()}
    labels["objects"] = len(objects)
    return image, labels, np.max(masks, axis=0)


def multi_label(style: scene.SceneStyle) -> bool:
    """Whether a style's labels are class sets (bit masks) rather than one class per attribute."""
    return style.lookalike


def still_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([DOMAIN_STILL, seed, SPLIT_IDS[split], index]))


def still_texture(spec: PretrainImagesSpec, split: str, index: int) -> np.ndarray:
    """The background canvas of image ``index``: shared by TEXTURE_GROUP consecutive images (each sees
    its own random view of it), since making a texture costs several times rendering an image."""
    style = scene.scene_style(spec.difficulty, spec.resolution)
    rng = np.random.default_rng(np.random.SeedSequence([DOMAIN_TEXTURE, spec.seed, SPLIT_IDS[split],
                                                        index // TEXTURE_GROUP]))
    return scene.make_texture(rng, style.world, style.contrast)


def render_chunk(task: tuple) -> tuple[int, np.ndarray, list[dict]]:
    """Images ``start:stop`` of a split and their label rows: ``task`` = (spec as JSON, split, start, stop)."""
    spec_dict, split, start, stop = task
    spec = PretrainImagesSpec.model_validate(spec_dict)
    images = np.empty((stop - start, spec.resolution, spec.resolution, 3), np.uint8)
    rows = []
    texture, group = None, -1
    for k, i in enumerate(range(start, stop)):
        if i // TEXTURE_GROUP != group:
            texture, group = still_texture(spec, split, i), i // TEXTURE_GROUP
        images[k], labels, _ = render_still(spec, still_rng(spec.seed, split, i), texture)
        rows.append(labels)
    return start, images, rows


def images_path(out_dir: Path, split: str) -> Path:
    return Path(out_dir) / f"images_{split}.npy"


def labels_path(out_dir: Path, split: str) -> Path:
    return Path(out_dir) / f"labels_{split}.csv"


def read_info(images_dir: str | Path) -> dict:
    path = Path(images_dir) / paths.PRETRAIN_IMAGES_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the pretraining image set is missing or incomplete; "
                                f"run `amflow pretrain-images` first")
    return io.read_json(path)


def load_split(images_dir: str | Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    """(images uint8 [N, R, R, 3] memory-mapped, labels table) of one split."""
    images = np.load(images_path(images_dir, split), mmap_mode="r")
    labels = pd.read_csv(labels_path(images_dir, split))
    if len(images) != len(labels):
        raise AmflowError(f"{images_dir}: images_{split}.npy has {len(images)} images but labels_{split}.csv "
                          f"{len(labels)} rows; delete the folder and rerun `amflow pretrain-images`")
    return images, labels


class AttributeImages:
    """One split of the set in memory, as the pretraining reads it: ``images`` uint8 ``[N, 3, R, R]`` and,
    per attribute, ``targets[name]``: class indices int64 ``[N]``, or for a multi-label attribute (a bit
    mask per image: the ``clutter`` style) the set membership float32 ``[N, classes]``. Indexed by a
    tensor of positions it returns that batch, ``{"image": ..., "targets": {name: ...}}``, in one gather."""

    def __init__(self, images_dir: str | Path, split: str):
        import torch

        self.attributes = read_info(images_dir)["attributes"]
        images, self.table = load_split(images_dir, split)
        self.images = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()  # off the memory map
        self.targets = {}
        for a in self.attributes:
            labels = torch.from_numpy(self.table[a["name"]].to_numpy(np.int64, copy=True))
            if a.get("multi_label"):
                labels = ((labels[:, None] >> torch.arange(a["classes"])) & 1).float()
            self.targets[a["name"]] = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> dict:
        return {"image": self.images[index], "targets": {name: y[index] for name, y in self.targets.items()}}
