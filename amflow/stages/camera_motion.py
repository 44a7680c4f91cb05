"""The camera-motion stage (docs/design.md 2.5): classify videos as static or moving camera, decide the
dataset's AM flow variant, and cache the per-frame transforms that the aligned variant needs. The rule
itself lives in :mod:`amflow.camera.rules`.

Outputs (docs/architecture.md): ``<out_dir>/motion.npz`` (or ``motion_path``), then
``<out_dir>/camera_motion.png``, then ``<out_dir>/camera_motion.json`` last (it marks a complete
stage). Every file is written atomically.

Order of work: the transforms of every consecutive pair of every cached video are computed once
(the aligned variant needs them all); the sample's sampled pairs are read from them, so the sample
and ``motion.npz`` cannot disagree. The sample is drawn, seeded, from the train split by default
(``camera_motion.sample_split``), so no val/test frames influence the decision.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from amflow import identity, io, parallel, paths, tracking
from amflow.camera import plot
from amflow.camera.global_motion import MotionSettings
from amflow.camera.rules import VideoMotion, decide, is_moving, settings_from, video_displacement, video_motion
from amflow.data.frame_cache import FAILURES, FrameCache
from amflow.errors import AmflowError
from amflow.progress import bar as progress_bar


# --------------------------------------------------------------------------- all videos
_WORKER: dict = {}


def _init_worker(frames_dir: str, model: str, settings: MotionSettings) -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    _WORKER.update(cache=FrameCache(frames_dir), model=model, settings=settings)


def _work(pos: int) -> tuple[int, VideoMotion]:
    cache = _WORKER["cache"]
    return pos, video_motion(cache.read(pos), _WORKER["model"], _WORKER["settings"])


def compute_all(frames_dir: Path, model: str, settings: MotionSettings, workers: int = 0,
                progress: bool = True) -> dict[int, VideoMotion]:
    """:class:`VideoMotion` of every cached video (manifest position -> result), in parallel."""
    n_videos = len(FrameCache(frames_dir))
    workers = parallel.worker_count(workers, n_videos)
    bar = dict(total=n_videos, desc="camera motion", unit="video", disable=not progress)
    out: dict[int, VideoMotion] = {}
    if workers == 1:
        _init_worker(str(frames_dir), model, settings)
        try:
            for pos in progress_bar(range(n_videos), **bar):
                out[pos] = _work(pos)[1]
        finally:
            _WORKER.clear()
        return out

    # Videos are independent: one task each, a few per chunk to keep the pool's overhead small.
    chunk = max(1, min(16, n_videos // (workers * 8)))
    with parallel.spawn_pool(workers, initializer=_init_worker, initargs=(str(frames_dir), model, settings)) as pool:
        for pos, res in progress_bar(pool.imap_unordered(_work, range(n_videos), chunksize=chunk), **bar):
            out[pos] = res
    return out


# --------------------------------------------------------------------------- the sample
def draw_sample(manifest, spec) -> list[tuple[int, np.ndarray]]:
    """Seeded sample: (manifest position, sorted pair starts) for up to ``sample_videos`` videos of
    ``sample_split``, each with up to ``pairs_per_video`` distinct consecutive pairs."""
    rng = np.random.default_rng(spec.seed)
    if spec.sample_split == "all":
        candidates = np.arange(len(manifest))
    else:
        candidates = np.flatnonzero(manifest["split"].to_numpy() == spec.sample_split)
    if len(candidates) == 0:
        raise AmflowError(f"camera motion: no videos in split '{spec.sample_split}' of the frame cache; "
                          "set camera_motion.sample_split: all or check the extraction")
    take = min(spec.sample_videos, len(candidates))
    chosen = np.sort(rng.choice(candidates, size=take, replace=False))
    counts = manifest["num_frames"].to_numpy()
    sample = []
    for pos in chosen:
        n_pairs = max(int(counts[pos]) - 1, 0)
        k = min(spec.pairs_per_video, n_pairs)
        pairs = np.sort(rng.choice(n_pairs, size=k, replace=False)) if k else np.zeros(0, np.int64)
        sample.append((int(pos), pairs))
    return sample


# --------------------------------------------------------------------------- the stage
def run_camera_motion(params, dataset_name: str, frames_dir: str | Path, out_dir: str | Path, *,
                      motion_path: Optional[str | Path] = None, track: bool = True, workers: Optional[int] = None,
                      progress: bool = True) -> dict:
    """Run the stage; returns the summary written to ``camera_motion.json``.

    ``motion_path`` defaults to ``<out_dir>/motion.npz`` (:func:`amflow.paths.motion_file` when ``out_dir``
    is the dataset's camera folder); ``workers`` overrides ``camera_motion.workers``; ``track=False``
    skips MLflow.
    """
    frames_dir, out_dir = Path(frames_dir), Path(out_dir)
    motion_path = Path(motion_path) if motion_path is not None else out_dir / paths.MOTION_NPZ
    spec = params.camera_motion
    cache = FrameCache(frames_dir)
    manifest = cache.manifest
    if len(manifest) == 0:
        raise AmflowError(f"{frames_dir}: the frame cache holds no videos; check {frames_dir / FAILURES}")
    settings = settings_from(spec)
    # A decision left by an earlier run must not sit beside the new motion file if this run stops.
    (out_dir / paths.CAMERA_JSON).unlink(missing_ok=True)
    per_video = compute_all(frames_dir, spec.model, settings, spec.workers if workers is None else workers, progress)

    # ---- motion.npz: every frame pair, indexed by global frame position
    starts = manifest["global_start"].to_numpy(np.int64)
    counts = manifest["num_frames"].to_numpy(np.int64)
    total = int((starts + counts).max())
    transforms = np.tile(np.eye(3, dtype=np.float32), (total, 1, 1))
    valid = np.zeros(total, bool)
    inlier = np.zeros(total, np.float32)
    video_disp = np.full(len(manifest), np.nan, np.float32)
    video_moving = np.zeros(len(manifest), bool)
    reasons_all: dict = {}
    for pos, vm in per_video.items():
        g0, n = int(starts[pos]), len(vm.valid)
        transforms[g0:g0 + n] = np.where(vm.valid[:, None, None], vm.transforms, np.eye(3, dtype=np.float32))
        valid[g0:g0 + n] = vm.valid
        inlier[g0:g0 + n] = vm.inlier_ratio
        d = video_displacement(vm.displacement, vm.valid)
        video_disp[pos] = d
        video_moving[pos] = is_moving(d, spec.moving_threshold)
        for r, c in vm.reasons.items():
            reasons_all[r] = reasons_all.get(r, 0) + c
    video_ids = manifest["video_id"].astype(str).to_numpy()
    with io.atomic_path(motion_path) as tmp:
        with open(tmp, "wb") as fh:  # a file handle: np.savez would append .npz to a bare name
            np.savez(fh, transforms=transforms, valid=valid, video_moving=video_moving,
                     video_displacement=video_disp, inlier_ratio=inlier,
                     video_id=video_ids.astype(str), model=np.array(spec.model))

    # ---- the sample and the decision
    sample = draw_sample(manifest, spec)
    rows = []
    for pos, pairs in sample:
        vm = per_video[pos]
        v = vm.valid[pairs]
        d = video_displacement(vm.displacement[pairs], v)
        rows.append(dict(video_id=str(manifest.at[pos, "video_id"]), split=str(manifest.at[pos, "split"]),
                         position=pos, displacement=None if math.isnan(d) else round(d, 6),
                         moving=is_moving(d, spec.moving_threshold), pairs=int(len(pairs)),
                         invalid_pairs=int((~v).sum()),
                         mean_inlier_ratio=round(float(vm.inlier_ratio[pairs].mean()), 4) if len(pairs) else None))
    moving = np.array([r["moving"] for r in rows], bool)
    evidence = np.array([r["displacement"] is not None for r in rows], bool)
    decision, share = decide(moving, evidence, spec.dataset_moving_share)
    all_evidence = np.isfinite(video_disp)
    _, share_all = decide(video_moving, all_evidence, spec.dataset_moving_share)
    sample_pairs = int(sum(r["pairs"] for r in rows))
    sample_invalid = int(sum(r["invalid_pairs"] for r in rows))
    total_pairs = int(sum(len(vm.valid) for vm in per_video.values()))
    summary = {
        "dataset": dataset_name,
        "decision": decision,
        "share_moving": round(share, 6),
        "thresholds": {"moving_threshold": spec.moving_threshold,
                       "dataset_moving_share": spec.dataset_moving_share,
                       "min_inlier_ratio": spec.min_inlier_ratio, "min_ncc": spec.min_ncc},
        "estimator": {"model": spec.model, "max_side": spec.max_side,
                      "displacement": "median over valid sampled pairs of the mean 5x5-grid displacement "
                                      "under the transform, / frame diagonal"},
        "sample": {"split": spec.sample_split, "seed": spec.seed, "requested_videos": spec.sample_videos,
                   "pairs_per_video": spec.pairs_per_video},
        "counts": {"videos": len(rows), "moving": int(moving.sum()), "static": int((~moving).sum()),
                   "without_valid_pairs": int((~evidence).sum()), "pairs": sample_pairs,
                   "invalid_pairs": sample_invalid},
        "invalid_pair_share": round(sample_invalid / sample_pairs, 6) if sample_pairs else 0.0,
        "all_videos": {"videos": int(len(manifest)), "moving": int(video_moving.sum()),
                       "share_moving": round(share_all, 6),
                       "without_valid_pairs": int((~all_evidence).sum()),
                       "pairs": total_pairs, "invalid_pairs": int(total_pairs - valid.sum()),
                       "invalid_reasons": {k: v for k, v in sorted(reasons_all.items()) if k != "ok"}},
        "motion_file": str(motion_path),
        "videos": rows,
    }

    png = out_dir / paths.CAMERA_PNG
    plot.plot_displacements([r["displacement"] for r in rows if r["displacement"] is not None],
                            spec.moving_threshold, png, title=f"{dataset_name}: {decision} (share moving {share:.2f})")
    if track:
        run_id = log_to_mlflow(params, dataset_name, summary, png)
        if run_id is not None:
            summary["mlflow_run_id"] = run_id
    io.write_json(out_dir / paths.CAMERA_JSON, summary)  # last: marks the stage complete
    return summary


# --------------------------------------------------------------------------- tracking
def log_to_mlflow(params, dataset_name: str, summary: dict, png_path: Path) -> Optional[str]:
    """One MLflow run 'camera_motion' (tag amflow.stage) in experiment '<prefix>-<name>-<dataset>':
    thresholds as params, shares and counts as metrics, the summary and the histogram as artefacts.
    Returns the run id, or None when tracking is switched off (``AMFLOW_TRACKING=0``).

    Store, experiment and artefact location follow :mod:`amflow.tracking` (``MLFLOW_TRACKING_URI``,
    else ``tracking.uri``, else ``sqlite:///mlflow.db``), through an explicit client.
    """
    tracker = tracking.open_run(params, identity.camera_motion(params, dataset_name), experiment=dataset_name,
                                key=f"camera_motion/{dataset_name}", name="camera_motion",
                                tags={f"{tracking.TAG}decision": summary["decision"]})
    try:
        c, a = summary["counts"], summary["all_videos"]
        tracker.log_metrics({"share_moving": summary["share_moving"], "sample_videos": c["videos"],
                             "sample_moving": c["moving"], "invalid_pair_share": summary["invalid_pair_share"],
                             "all_share_moving": a["share_moving"], "all_videos": a["videos"],
                             "all_invalid_pairs": a["invalid_pairs"],
                             "decision_aligned": float(summary["decision"] == "aligned")})
        tracker.log_json(summary, paths.CAMERA_JSON)
        tracker.log_artifacts([Path(png_path)])
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return tracker.run_id
