"""The camera-motion rule and the decision it feeds: one implementation for the camera-motion stage, for
``amflow predict`` (transforms on the fly) and for training and the heat maps (the recorded decision).

Rule (one rule for the sample and for every video): the background displacement of a frame pair is
the mean displacement of a 5x5 grid spanning the frame under the estimated transform, divided by the
frame diagonal (:func:`amflow.camera.global_motion.grid_displacement`); a video's displacement is the
median over its *valid* pairs; a video is moving when that exceeds ``moving_threshold``. A video
without any valid pair has no evidence of camera motion: it counts as static and is reported
separately, and it does not enter the share of moving videos. The dataset uses ``aligned`` when the
share of moving videos in the sample exceeds ``dataset_moving_share``.

The evidence for the decision comes later in the DAG (the localisation stage needs this stage's
transforms): :func:`localisation_evidence` says whether the variant a dataset uses localises the actor
at least as well as ``static``, and whether any aligned variant beats ``static`` at all; ``amflow
localise`` records it and the report states it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from amflow import io, paths
from amflow.camera.global_motion import MotionSettings, estimate_pairs, grid_displacement
from amflow.errors import AmflowError
from amflow.params import AM_FLOW_VARIANTS, CAMERA_DECISIONS, MODEL_VARIANTS


# --------------------------------------------------------------------------- the rule
def video_displacement(pair_displacement: np.ndarray, valid: np.ndarray) -> float:
    """Median background displacement over a video's valid pairs (NaN when none is valid)."""
    d = np.asarray(pair_displacement, dtype=np.float64)[np.asarray(valid, dtype=bool)]
    return float(np.median(d)) if d.size else float("nan")


def is_moving(displacement: float, moving_threshold: float) -> bool:
    """A video is moving when its displacement exceeds the threshold; NaN (no valid pair) is static."""
    return bool(np.isfinite(displacement) and displacement > moving_threshold)


def decide(moving: np.ndarray, has_evidence: np.ndarray, dataset_moving_share: float) -> tuple[str, float]:
    """('aligned' | 'static', share of moving videos among those with at least one valid pair)."""
    moving = np.asarray(moving, dtype=bool)
    has_evidence = np.asarray(has_evidence, dtype=bool)
    n = int(has_evidence.sum())
    share = float((moving & has_evidence).sum() / n) if n else 0.0
    return ("aligned" if share > dataset_moving_share else "static"), share


def settings_from(spec) -> MotionSettings:
    """Estimator settings from ``params.camera_motion``."""
    return MotionSettings(min_inlier_ratio=spec.min_inlier_ratio, min_ncc=spec.min_ncc, max_side=spec.max_side)


@dataclass
class VideoMotion:
    """Frame pairs ``(t, t+1)`` of one video: every consecutive pair, or the ones asked for."""

    transforms: np.ndarray       # float32 [pairs, 3, 3]
    inlier_ratio: np.ndarray     # float32 [pairs]
    valid: np.ndarray            # bool [pairs]
    displacement: np.ndarray     # float64 [pairs], 0 where invalid
    reasons: dict                # reason -> count over the pairs


def pair_motion(frames: np.ndarray, pairs: Iterable[int], model: str, settings: MotionSettings) -> VideoMotion:
    """Transforms, validity and displacement of the pairs ``(t, t+1)``, ``t`` in ``pairs``, of ``frames``
    ``[T, H, W, 3]``."""
    ests = estimate_pairs(frames, pairs, model, settings)
    h, w = frames.shape[1:3]
    transforms = (np.stack([e.matrix for e in ests]).astype(np.float32) if ests
                  else np.zeros((0, 3, 3), np.float32))
    valid = np.array([e.valid for e in ests], dtype=bool)
    disp = np.array([grid_displacement(e.matrix, h, w) if e.valid else 0.0 for e in ests], dtype=np.float64)
    reasons: dict = {}
    for e in ests:
        reasons[e.reason] = reasons.get(e.reason, 0) + 1
    return VideoMotion(transforms, np.array([e.inlier_ratio for e in ests], np.float32), valid, disp, reasons)


def video_motion(frames: np.ndarray, model: str, settings: MotionSettings) -> VideoMotion:
    """:func:`pair_motion` of every consecutive pair of one video."""
    return pair_motion(frames, range(max(len(frames) - 1, 0)), model, settings)


def classify_video(frames: np.ndarray, pairs, model: str, settings: MotionSettings,
                   moving_threshold: float) -> tuple[float, bool, int]:
    """The rule on frames in memory: (displacement, moving, invalid pairs) from the pairs ``(t, t+1)``
    for ``t`` in ``pairs``. The stage reads the same figures from the transforms of every pair."""
    motion = pair_motion(frames, pairs, model, settings)
    d = video_displacement(motion.displacement, motion.valid)
    return d, is_moving(d, moving_threshold), int((~motion.valid).sum())


# --------------------------------------------------------------------------- the recorded decision
def read_decision(results_dataset_dir: str | Path) -> str:
    """The dataset's AM flow variant decided by the camera-motion stage: 'static' or 'aligned'."""
    path = Path(results_dataset_dir) / paths.CAMERA_JSON
    if not path.exists():
        raise AmflowError(f"{path}: camera-motion decision not found; run `amflow camera-motion --dataset "
                          f"{Path(results_dataset_dir).name}` first (or set model.am_flow.variant to "
                          "static or aligned)")
    try:
        decision = io.read_json(path).get("decision")
    except ValueError as exc:
        raise AmflowError(str(exc)) from None
    if decision not in CAMERA_DECISIONS:
        raise AmflowError(f"{path}: 'decision' is {decision!r}, expected 'static' or 'aligned'; "
                          "rerun `amflow camera-motion`")
    return decision


def resolve_variant(am_flow_variant: str, results_dataset_dir: str | Path) -> tuple[str, bool]:
    """``params.model.am_flow.variant`` -> (variant for the model, identity_for_static).

    ``identity_for_static``: the ClipDataset gives identity transforms to videos that
    ``motion.npz``'s ``video_moving`` marks static (``auto_per_video``).
    """
    if am_flow_variant in MODEL_VARIANTS:
        return am_flow_variant, False
    if am_flow_variant == "auto":
        return read_decision(results_dataset_dir), False
    if am_flow_variant == "auto_per_video":
        return "aligned", True
    raise AmflowError(f"model.am_flow.variant is {am_flow_variant!r}; expected one of "
                      f"{', '.join(AM_FLOW_VARIANTS)}")


# --------------------------------------------------------------------------- the evidence for it
_ALIGNED = "aligned_"


def localisation_name(alignment: Optional[str]) -> str:
    """A variant's method name in the localisation table (``amflow localise``): 'static' (None) or
    'aligned_<alignment>'."""
    return "static" if alignment is None else _ALIGNED + alignment


def localisation_evidence(variant: str, alignment: str, table: pd.DataFrame) -> dict:
    """Whether the localisation table (``amflow localise``: columns ``method``, ``auc``, a row per block)
    backs the variant a dataset uses.

    ``variant``: 'static' or 'aligned' (:func:`resolve_variant`), ``alignment``: the params'
    ``model.am_flow.alignment``. Each method is judged by its ROC AUC against the actor, mean over
    blocks. Returns the method used and its AUC, static's, the best aligned method and its AUC,
    ``aligned_beats_static`` and ``used_at_least_static`` (bools) and a sentence saying so.
    """
    mean_auc = {str(k): float(v) for k, v in table.groupby("method", sort=False)["auc"].mean().items()}
    static = mean_auc.get(localisation_name(None), float("nan"))
    aligned = {k: v for k, v in mean_auc.items() if k.startswith(_ALIGNED) and not np.isnan(v)}
    used = localisation_name(alignment if variant == "aligned" else None)
    if np.isnan(mean_auc.get(used, float("nan"))) or np.isnan(static) or not aligned:
        raise AmflowError(f"the localisation table has no AUC for '{used}', 'static' or any aligned variant "
                          "(written before that variant existed, or too few val clips show the actor); rerun "
                          "`amflow localise` for the dataset")
    best = max(aligned, key=aligned.get)
    out = {"variant": variant, "used": used, "used_auc": mean_auc[used], "static_auc": static,
           "best_aligned": best, "best_aligned_auc": aligned[best],
           "aligned_beats_static": bool(aligned[best] > static),
           "used_at_least_static": bool(mean_auc[used] >= static)}
    if variant == "static":
        text = (f"`static` is used (ROC AUC {static:.3f}, mean over blocks; the best aligned variant, `{best}`, "
                f"{aligned[best]:.3f})")
    else:
        verdict = "at least as well as" if out["used_at_least_static"] else "worse than"
        text = (f"the variant used, `{used}`, localises the actor {verdict} `static` (ROC AUC "
                f"{mean_auc[used]:.3f} against {static:.3f}, mean over blocks)")
        if not out["aligned_beats_static"]:
            text += f"; no aligned variant beats `static` (the best, `{best}`, reaches {aligned[best]:.3f})"
        elif used != best:
            text += f"; the best aligned variant is `{best}` ({aligned[best]:.3f})"
    out["sentence"] = text
    return out
