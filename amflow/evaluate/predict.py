"""``amflow predict``: top-k classes of videos, from a trained run folder or from the run's MLflow model.

A :class:`Predictor` holds one rebuilt model and predicts any number of videos with it. It is built
from a run folder (:meth:`Predictor.from_run_dir`: ``params.yaml``, ``checkpoint.pt``) or from the
files of the MLflow model that training logs (:mod:`amflow.evaluate.mlflow_model`: the same params,
the trainable weights and the class names); both need the frozen backbone file when the backbone is
the pipeline's pretrained one. For a run folder it comes from where training found it (recorded in the
checkpoint), else from the nearest ``backbone/backbone.safetensors`` above the run folder; a checksum
refuses a different backbone.

Each video is decoded with :func:`amflow.data.video.read_video` (decord, PyAV fallback), resized to the
dataset's cached short side, and sampled exactly like the evaluation (the dataset's test clips and
crops, softmax averaged over views). For the aligned AM flow variant the camera transforms are
estimated on the fly with the camera-motion stage's estimator and settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from amflow import identity, paths
from amflow.camera.rules import is_moving, settings_from, video_displacement, video_motion
from amflow.data import transforms_geometry as geo
from amflow.data import video as vio
from amflow.data.clips import Normalise, sample_indices, test_views
from amflow.errors import AmflowError
from amflow.models.inference import clip_probs
from amflow.params_io import load_params
from amflow.runs import check_digest, load_trained_run, trained_model
from amflow.train.distributed import resolve_device

DEFAULT_TOP_K = 5


def _backbone_path(params, meta: dict, run_dir: Path) -> Optional[Path]:
    if params.backbone.weights != "pretrain":
        return None
    recorded = meta.get("backbone_weights")
    candidates = [Path(recorded)] if recorded else []
    # A moved results tree: the nearest backbone/ folder above the run folder.
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
    spec = params.camera_motion
    lo, hi = int(clip.min()), int(clip.max())
    motion = video_motion(frames[lo:hi + 1], spec.model, settings_from(spec))
    T = len(clip)
    if identity_for_static and not is_moving(video_displacement(motion.displacement, motion.valid),
                                             spec.moving_threshold):
        return [np.tile(np.eye(3), (T - 1, 1, 1)) for _ in view_maps]
    between = geo.compose_between(motion.transforms, motion.valid, clip - lo)
    return [geo.conjugate(between, c) for c in view_maps]


class Predictor:
    """A trained run's model, ready to predict videos.

    ``state`` holds ``model`` (the trainable weights), ``meta`` (``compat`` with the classes and the
    resolved AM flow variant) and, when known, ``frozen_fingerprint`` and ``epoch``; ``backbone`` is the
    frozen backbone file (None when the params do not use the pretrained one); ``source`` names where
    the weights came from, for messages."""

    def __init__(self, params, state: dict, backbone: Optional[Path], source: str):
        compat = state["meta"]["compat"]
        self.params = params
        self.dataset, self.method, self.seed = compat["dataset"], compat["method"], int(compat["seed"])
        self.classes, self.variant = list(compat["classes"]), compat["am_flow_variant"]
        self.identity_for_static = bool(compat["identity_for_static"])
        self.model = trained_model(params, state, dataset=self.dataset, method=self.method, seed=self.seed,
                                   variant=self.variant, backbone=backbone, source=Path(source))
        self.device = resolve_device(params.train.device)
        self.model.to(self.device).eval()

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, backbone: Optional[Path] = None) -> "Predictor":
        """From a finished run folder (:func:`amflow.runs.load_trained_run`'s policy, with the params it
        was trained with); ``backbone`` overrides where the frozen backbone file is looked for."""
        run_dir = Path(run_dir)
        for name in (paths.PARAMS_YAML, paths.CHECKPOINT):
            if not (run_dir / name).exists():
                raise AmflowError(f"{run_dir / name}: not found; --run must be a trained run folder "
                                  f"(results/<name>/<dataset>/<method>/seed<k>)")
        params = load_params(run_dir / paths.PARAMS_YAML)
        run = load_trained_run(run_dir, params, make="the `amflow train` command that made this run")
        if backbone is not None and params.backbone.weights == "pretrain" and not Path(backbone).is_file():
            raise AmflowError(f"--backbone {backbone}: no such file; give the backbone.safetensors the run was "
                              f"trained with")
        backbone = Path(backbone) if backbone is not None and params.backbone.weights == "pretrain" else \
            _backbone_path(params, run.state["meta"], run_dir)
        return cls(params, run.state, backbone, str(run.checkpoint))

    @classmethod
    def from_model_files(cls, params_yaml: Path, weights: Path, backbone: Optional[Path]) -> "Predictor":
        """From the files of the run's MLflow model (:mod:`amflow.evaluate.mlflow_model`): the params
        and the final weights, checked against each other like a run folder's."""
        params = load_params(params_yaml)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        compat = state["meta"]["compat"]
        check_digest(state, identity.training(params, compat["dataset"], compat["method"], compat["seed"]),
                     Path(weights), Path(params_yaml))
        return cls(params, state, backbone, str(weights))

    def check_top_k(self, top_k: Optional[int]) -> int:
        """``top_k`` if the run has that many classes (None: 5, or fewer if the run has fewer), else an error."""
        if top_k is None:
            return min(DEFAULT_TOP_K, len(self.classes))
        if not 1 <= int(top_k) <= len(self.classes):
            raise AmflowError(f"--top-k {top_k}: the run has {len(self.classes)} classes; give a value from 1 to "
                              f"{len(self.classes)}")
        return int(top_k)

    @torch.no_grad()
    def probabilities(self, video: str | Path) -> torch.Tensor:
        """Class probabilities of one video, averaged over the test views."""
        params, sampling = self.params, self.params.sampling_for(self.dataset)
        frames, _fps = vio.read_video(video, short_side=params.dataset(self.dataset).short_side)
        clips = sample_indices(len(frames), sampling, train=False)  # [C, T]
        videos, transforms = [], []
        for clip in clips:
            views = test_views(frames[clip], sampling)
            if self.variant == "aligned":
                transforms += _clip_transforms(frames, clip, [c for _, c in views], params, self.identity_for_static)
            for view, _ in views:
                videos.append(view.transpose(0, 3, 1, 2))
        batch = torch.from_numpy(np.stack(videos)[None])                            # uint8 [1, V, T, 3, S, S]
        trans = torch.from_numpy(np.stack(transforms)[None].astype(np.float32)) if transforms else None
        amp = bool(params.train.amp and self.device.type == "cuda")
        return clip_probs(self.model, batch, trans, self.device, amp, Normalise(sampling.mean, sampling.std))[0].cpu()

    def predict(self, video: str | Path, top_k: Optional[int] = None) -> list[tuple[str, float]]:
        """The ``top_k`` most probable classes of ``video``, most probable first."""
        top = torch.topk(self.probabilities(video), self.check_top_k(top_k))
        return [(self.classes[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]


def predict_video(video: str | Path, run_dir: str | Path, top_k: Optional[int] = None) -> list[tuple[str, float]]:
    """Top-k classes of one video with the model of a run folder."""
    return Predictor.from_run_dir(run_dir).predict(video, top_k)


def read_video_list(path: str | Path) -> list[Path]:
    """One video path per line (blank lines and ``#`` comments skipped); relative paths are relative to
    the list file's folder, so a list travels with its videos."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AmflowError(f"{path}: cannot read the video list ({exc}); give a text file with one video "
                          f"path per line") from None
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise AmflowError(f"{path}: the video list names no video; write one path per line")
    return out
