"""AM flow heat maps: static against aligned variant, on a static-camera and a moving-camera test clip.

Which clips: the first table dataset whose camera-motion decision is ``static`` and the first whose
decision is ``aligned`` (either may be absent); in each, the first test video (manifest order) whose own
camera classification (``video_moving`` in the motion file) matches the dataset's decision. Fixed
rules, so the figure is not a hand-picked example.

Which model: the trained ``amflow`` run of the first seed. Its adapters do not depend on the variant
(the variant only changes how the gate is computed), so its trainable weights are loaded into two
models, one per variant, and :meth:`VideoModel.am_flow_maps` gives each one's scores on the same clip
and the same cached camera transforms. The block shown is the model's AM flow source (the fixed source
layer, or with ``source: same`` the last adapted block). One of the two variants is the one the run
was trained with; the other shows what the other formula gives on the same features.

Outputs: ``results/plots/amflow_heatmaps.png`` (per clip, rows: frames, static map, aligned map;
columns: time), ``amflow_heatmaps.gif`` (one GIF frame per clip frame) and ``amflow_heatmaps.json``
(the clips chosen and the maps' coefficient of variation, which the report quotes: a near-uniform map
has CV near 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from amflow import io, paths  # noqa: E402
from amflow.camera.rules import read_decision  # noqa: E402
from amflow.data.clips import ClipDataset  # noqa: E402
from amflow.errors import AmflowError  # noqa: E402
from amflow.models.am_flow import coefficient_of_variation  # noqa: E402
from amflow.models.inference import single_view  # noqa: E402
from amflow.params import CAMERA_DECISIONS, Params  # noqa: E402
from amflow.runs import load_trained_run, run_paths, trained_model  # noqa: E402

VARIANTS = CAMERA_DECISIONS  # the AM flow variants with scores: one map each
MIN_DISPLAY = 96       # frames are upscaled to at least this many pixels for viewing
ALPHA = 0.55           # weight of the heat map over the frame
GIF_FRAME_MS = 400


@dataclass
class HeatmapClip:
    """One clip to draw: frames uint8 ``[T, H, W, 3]`` and AM flow scores ``[T, h, w]`` per variant."""

    title: str
    frames: np.ndarray
    static: np.ndarray
    aligned: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        T = self.frames.shape[0]
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got {self.frames.shape}")
        for name in VARIANTS:
            m = getattr(self, name)
            if m.ndim != 3 or m.shape[0] != T:
                raise ValueError(f"{name} map must be [T={T}, h, w], got {m.shape}")


# --------------------------------------------------------------------------- rendering
def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[T, h, w]`` -> ``[T, height, width]``, bilinear with patch centres at cell centres (OpenCV's
    ``INTER_LINEAR``); the frames go through as channels of one image."""
    stack = np.ascontiguousarray(np.asarray(maps, np.float64).transpose(1, 2, 0))
    out = cv2.resize(stack, (width, height), interpolation=cv2.INTER_LINEAR)
    return out.reshape(height, width, -1).transpose(2, 0, 1).astype(np.float32)


def overlay(frames: np.ndarray, maps: np.ndarray, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """Frames uint8 ``[T, H, W, 3]`` blended with ``maps`` ``[T, H, W]`` coloured on 0..vmax -> uint8."""
    colours = plt.get_cmap(cmap)(np.clip(maps / max(vmax, 1e-12), 0, 1))[..., :3]
    out = (1 - ALPHA) * frames.astype(np.float32) / 255 + ALPHA * colours
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def display_scale(height: int) -> int:
    return max(1, math.ceil(MIN_DISPLAY / height))


def clip_panels(clip: HeatmapClip) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(frames, static overlay, aligned overlay) at display size, and the shared colour maximum."""
    k = display_scale(clip.frames.shape[1])
    frames = clip.frames.repeat(k, axis=1).repeat(k, axis=2)   # nearest: keep the pixels honest
    H, W = frames.shape[1:3]
    # One colour scale for both variants of a clip, so their contrast can be compared by eye.
    vmax = float(max(clip.static.max(), clip.aligned.max()))
    return (frames, overlay(frames, upsample(clip.static, H, W), vmax),
            overlay(frames, upsample(clip.aligned, H, W), vmax), vmax)


def strip(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """``[T, H, W, 3]`` -> one row image ``[H, T*W + (T-1)*gap, 3]`` on white."""
    T, H, W, _ = images.shape
    out = np.full((H, T * W + (T - 1) * gap, 3), 255, np.uint8)
    for t in range(T):
        out[:, t * (W + gap):t * (W + gap) + W] = images[t]
    return out


def render_png(clips: list[HeatmapClip], path: Path, gap: int = 2) -> Path:
    """Grid: per clip three rows (frames, static, aligned), one column per time step.

    Each clip is one composed image on one axes (rows labelled on the left, time below): fast, and
    no layout gaps between the rows.
    """
    T = max(c.frames.shape[0] for c in clips)
    fig, axes = plt.subplots(len(clips), 1, figsize=(0.9 * T + 1.4, 3.0 * len(clips) + 0.2), squeeze=False)
    for ax, clip in zip(axes[:, 0], clips):
        panels = clip_panels(clip)
        rows = [strip(images, gap) for images in panels[:3]]
        H, W = panels[0].shape[1:3]
        width = max(r.shape[1] for r in rows)
        image = np.full((3 * H + 2 * gap, width, 3), 255, np.uint8)
        for r, row in enumerate(rows):
            image[r * (H + gap):r * (H + gap) + H, :row.shape[1]] = row
        ax.imshow(image, interpolation="nearest")
        labels = ("frames", f"static\nCV {clip.info.get('static_cv', float('nan')):.2f}",
                  f"aligned\nCV {clip.info.get('aligned_cv', float('nan')):.2f}")
        ax.set_yticks([r * (H + gap) + H / 2 for r in range(3)], labels, fontsize=7)
        n = panels[0].shape[0]
        ax.set_xticks([t * (W + gap) + W / 2 for t in range(n)], [f"t={t}" for t in range(n)], fontsize=6)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(f"{clip.title}\n(colour 0..{panels[3]:.2f}, shared by both maps)", fontsize=8)
    fig.tight_layout()
    io.write_png(fig, path, dpi=100)
    plt.close(fig)
    return path


def gif_frames(clips: list[HeatmapClip], gap: int = 2) -> list[np.ndarray]:
    """One RGB image per time step: per clip a strip [frame | static | aligned], clips stacked."""
    panels = [clip_panels(c)[:3] for c in clips]
    T = max(c.frames.shape[0] for c in clips)
    width = max(3 * p[0].shape[2] + 2 * gap for p in panels)
    height = sum(p[0].shape[1] for p in panels) + gap * (len(panels) - 1)
    out = []
    for t in range(T):
        img = np.full((height, width, 3), 255, np.uint8)
        y = 0
        for triple in panels:
            h, w = triple[0].shape[1:3]
            ti = min(t, triple[0].shape[0] - 1)   # a shorter clip holds its last frame
            for j, images in enumerate(triple):
                img[y:y + h, j * (w + gap):j * (w + gap) + w] = images[ti]
            y += h + gap
        out.append(img)
    return out


def render_gif(clips: list[HeatmapClip], path: Path) -> Path:
    images = [Image.fromarray(f) for f in gif_frames(clips)]
    with io.atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    return path


def render_heatmaps(clips: list[HeatmapClip], png_path: Path, gif_path: Path) -> tuple[Path, Path]:
    if not clips:
        raise ValueError("no clips to render")
    return render_png(clips, Path(png_path)), render_gif(clips, Path(gif_path))


# --------------------------------------------------------------------------- computing the maps
def clip_cv(maps: np.ndarray) -> float:
    """Mean over frames of a frame's coefficient of variation; the last frame (a copy of the previous
    pair's score) is left out. 0 for a uniform map."""
    m = torch.from_numpy(np.asarray(maps, np.float64)).flatten(1)
    m = m[:-1] if m.shape[0] > 1 else m
    return float(coefficient_of_variation(m).mean())


def clip_maps(models: dict, video, transforms, block: Optional[int] = None) -> dict[str, np.ndarray]:
    """Scores ``[T, h, w]`` per variant for one clip ``video [T, 3, S, S]``, ``transforms [T-1, 3, 3]``."""
    out = {}
    for variant in VARIANTS:
        maps = models[variant].am_flow_maps(video[None], transforms[None], block=block)
        out[variant] = maps[0].float().cpu().numpy()
    return out


def pick_video(video_moving: np.ndarray, positions: np.ndarray, want_moving: bool) -> int:
    """Index (within the split) of the first video whose camera state is ``want_moving``, else 0."""
    hits = np.flatnonzero(np.asarray(video_moving, bool)[positions] == want_moving)
    return int(hits[0]) if hits.size else 0


def load_trained_models(params: Params, dataset: str, seed: int, data_dir: Path, results_dir: Path):
    """The trained amflow run, as one model per variant (same trainable weights). Returns (models, meta,
    run paths); the run must pass :func:`amflow.runs.load_trained_run`'s policy."""
    rp = run_paths(params, dataset, "amflow", seed, data_dir, results_dir)
    run = load_trained_run(rp.run_dir, params, dataset=dataset, method="amflow", seed=seed,
                           make=f"snakemake --cores 8 {rp.run_dir / paths.METRICS_JSON}")
    models = {variant: trained_model(params, run.state, dataset=dataset, method="amflow", seed=seed, variant=variant,
                                     backbone=rp.backbone_weights, source=run.checkpoint).eval()
              for variant in VARIANTS}
    return models, run.state["meta"], rp


def load_clip(params: Params, dataset: str, rp, want_moving: bool):
    """The chosen test clip of ``dataset``: (item, video_id, display frames)."""
    sampling = single_view(params.sampling_for(dataset))
    ds = ClipDataset(rp.frames_dir, "test", sampling, train=False, motion=rp.motion)
    with np.load(rp.motion) as z:
        moving = z["video_moving"].astype(bool)
    index = pick_video(moving, ds.positions, want_moving)
    item = ds[index]
    manifest: pd.DataFrame = ds.cache.manifest
    video_id = str(manifest.iloc[int(ds.positions[index])]["video_id"])
    frames = item["video"].permute(0, 2, 3, 1).numpy()  # the uint8 pixels, for display
    return {**item, "video": ds.normalise(item["video"])}, video_id, frames


def choose_datasets(params: Params, results_dir: Path) -> list[tuple[str, str]]:
    """[(dataset, decision)]: the first table dataset decided static, then the first decided aligned."""
    chosen: dict[str, str] = {}
    for d in params.table_datasets:
        decision = read_decision(Path(results_dir) / d)
        chosen.setdefault(decision, d)
    return [(chosen[v], v) for v in VARIANTS if v in chosen]


def write_heatmaps(params: Params, data_dir: Path, results_dir: Path) -> dict:
    """Compute and render the heat maps (module docstring); returns the summary written to the JSON."""
    results_dir = Path(results_dir)
    seed = params.seeds[0]
    clips, summary = [], {"seed": seed, "clips": []}
    for dataset, decision in choose_datasets(params, results_dir):
        models, meta, rp = load_trained_models(params, dataset, seed, Path(data_dir), results_dir)
        item, video_id, frames = load_clip(params, dataset, rp, want_moving=decision == "aligned")
        with torch.no_grad():
            maps = clip_maps(models, item["video"], item["transforms"])
        source = params.model.am_flow.source
        block = int(source) if source != "same" else max(int(k) for k in models["static"].block_adapters)
        info = {"dataset": dataset, "decision": decision, "trained_variant": meta.get("compat", {}).get(
                    "am_flow_variant"), "video_id": video_id, "label": int(item["label"]), "block": block,
                "static_cv": round(clip_cv(maps["static"]), 4),
                "aligned_cv": round(clip_cv(maps["aligned"]), 4)}
        title = f"{dataset} ({decision} camera decision), test video {video_id}, block {block}"
        clips.append(HeatmapClip(title, frames, maps["static"], maps["aligned"], info))
        summary["clips"].append(info)
    if not clips:
        raise AmflowError("no table dataset has a camera-motion decision; run `amflow camera-motion` first")
    out = paths.plots_dir(results_dir)
    render_heatmaps(clips, out / paths.HEATMAPS_PNG, out / paths.HEATMAPS_GIF)
    io.write_json(out / paths.HEATMAPS_JSON, summary)
    return summary
