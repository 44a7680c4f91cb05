"""``amflow predict``: top-k classes of one video from a trained run folder.

The run folder is self-sufficient except for the frozen backbone: ``params.yaml`` (how the run was
configured), ``checkpoint.pt`` (trainable weights, class names, resolved AM flow variant). The
backbone weights come from where training found them (recorded in the checkpoint), else from the
nearest ``backbone/backbone.safetensors`` above the run folder; a checksum refuses a different backbone.

The video is decoded with :func:`amflow.data.video.read_video` (decord, PyAV fallback), resized to the
dataset's cached short side, and sampled exactly like the evaluation (the dataset's test clips and
crops, softmax averaged over views). For the aligned AM flow variant the camera transforms are
estimated on the fly with the camera-motion stage's estimator and settings.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from amflow.errors import AmflowError


def _backbone_path(params, meta: dict, run_dir: Path) -> Optional[Path]:
    if params.backbone.weights != "pretrain":
        return None
    from amflow import paths

    recorded = meta.get("backbone_weights")
    candidates = [Path(recorded)] if recorded else []
    # A moved results tree: the nearest results/backbone/ above the run folder.
    candidates += [paths.backbone_file(up) for up in run_dir.resolve().parents]
    for c in candidates:
        if c.is_file():
            return c
    raise AmflowError(f"{run_dir}: the pretrained backbone is missing (looked at {candidates[0]} and in backbone/ "
                      f"above the run folder); "
                      f"run `amflow pretrain-backbone` or restore the file the run was trained with")


def _clip_transforms(frames: np.ndarray, clip: np.ndarray, view_maps: list[np.ndarray], params,
                     identity_for_static: bool) -> list[np.ndarray]:
    """Per-view ``[T-1, 3, 3]`` camera transforms between the clip's frames, in the view's pixels."""
    from amflow.camera.stage import is_moving, settings_from, video_displacement, video_motion
    from amflow.data import transforms_geometry as geo

    spec = params.camera_motion
    lo, hi = int(clip.min()), int(clip.max())
    motion = video_motion(frames[lo:hi + 1], spec.model, settings_from(spec))
    T = len(clip)
    if identity_for_static and not is_moving(video_displacement(motion.displacement, motion.valid),
                                             spec.moving_threshold):
        return [np.tile(np.eye(3), (T - 1, 1, 1)) for _ in view_maps]
    between = geo.compose_between(motion.transforms, motion.valid, clip - lo)
    return [geo.conjugate(between, c) for c in view_maps]


@torch.no_grad()
def predict_video(video: str | Path, run_dir: str | Path, top_k: int = 5) -> list[tuple[str, float]]:
    from amflow.data.clips import Normalise, sample_indices, test_views
    from amflow.data.video import read_video
    from amflow.params import load_params
    from amflow.train import checkpoint as ckpt
    from amflow.train.distributed import resolve_device
    from amflow.train.run import CHECKPOINT, PARAMS_YAML, TRAIN_JSON, build_run_model
    from amflow.train.trainer import clip_probs

    run_dir = Path(run_dir)
    for name in (PARAMS_YAML, CHECKPOINT):
        if not (run_dir / name).exists():
            raise AmflowError(f"{run_dir / name}: not found; --run must be a trained run folder "
                              f"(results/<dataset>/<method>/seed<k>)")
    params = load_params(run_dir / PARAMS_YAML)
    state = ckpt.load_checkpoint(run_dir / CHECKPOINT)
    meta = state["meta"]
    compat = meta["compat"]
    if not (run_dir / TRAIN_JSON).exists():
        print(f"warning: {run_dir} has not finished training (checkpoint after epoch {state['epoch']} of "
              f"{params.train.epochs}); predicting with it anyway", file=sys.stderr)
    dataset, method, seed = compat["dataset"], compat["method"], int(compat["seed"])
    classes, variant = list(compat["classes"]), compat["am_flow_variant"]

    model = build_run_model(params, dataset, method, len(classes), variant, _backbone_path(params, meta, run_dir),
                            seed)
    ckpt.load_trainable_state(model, state["model"], run_dir / CHECKPOINT)
    if "frozen_fingerprint" in state:
        ckpt.check_fingerprint(model, state["frozen_fingerprint"], run_dir / CHECKPOINT)
    device = resolve_device(params.train.device)
    model.to(device).eval()

    sampling = params.sampling_for(dataset)
    frames, _fps = read_video(video, short_side=params.dataset(dataset).short_side)
    clips = sample_indices(len(frames), sampling, train=False)  # [C, T]
    videos, transforms = [], []
    for clip in clips:
        views = test_views(frames[clip], sampling)
        if variant == "aligned":
            transforms += _clip_transforms(frames, clip, [c for _, c in views], params,
                                           bool(compat["identity_for_static"]))
        for view, _ in views:
            videos.append(view.transpose(0, 3, 1, 2))
    batch = torch.from_numpy(np.stack(videos)[None])                            # uint8 [1, V, T, 3, S, S]
    trans = torch.from_numpy(np.stack(transforms)[None].astype(np.float32)) if transforms else None
    probs = clip_probs(model, batch, trans, device, bool(params.train.amp and device.type == "cuda"),
                       Normalise(sampling.mean, sampling.std))[0].cpu()
    k = max(1, min(int(top_k), len(classes)))
    top = torch.topk(probs, k)
    return [(classes[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
