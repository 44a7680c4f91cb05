"""Does AM flow find the moving actor? Measured against SynthMotion's ground truth, without training.

For the val clips (the test sampling with one view) and the pipeline's frozen backbone, every block's
AM flow is computed with each variant (:mod:`amflow.models.frozen_flow`): ``static``,
``aligned_grid`` (attention maps resampled on the patch grid), ``aligned_warp`` (frame t+1 warped
into frame t in pixel space, patches the warp leaves partly uncovered left out) and
``aligned_warp_fill`` (the same, every patch scored). Two baselines use no backbone: the per-patch mean absolute pixel
difference of frames t and t+1 (``pixel_diff``) and the same after warping frame t+1 into frame t
(``pixel_diff_compensated``, uncovered border patches set to the frame's mean score). The camera
transforms are the cached estimates of the camera-motion stage, the ones the models use.

Against "actor present in the patch" (the actor covers some of it in frame t, from
``data/groundtruth/<D>.npz``), two figures per method and block:

- ``mass_ratio``: the share of a frame's scores on the actor's patches divided by their share of the
  patches, averaged over frames where the actor covers some but not all patches; 1 means the
  scores carry no information about where the actor is.
- ``auc``: ROC AUC of the scores against presence, over every patch of every such frame (0.5 = chance).

Scores are normalised per frame to mean 1 (as AM flow's), so pooling frames for the AUC compares
like with like. Static actors (``stay``), fades and rotations in place are included: the figures
measure where the actor is, moving or not, as the oracle control sees it.

Where clips have distractors (``clutter``), ``auc_distractors`` is the ROC AUC of the scores of the
actor's patches against those of patches that only distractors cover (frames with both): what
finding the actor *among lookalikes* takes, beyond finding objects.

``still_cv``: the mean coefficient of variation of the scores on still clips of the val split (a clip's
first frame held, with sensor and codec noise only: :mod:`amflow.data.still_clips`); near 0 when no
motion gives near-uniform scores. With ``model.am_flow.noise_floor`` the scores here use the same
absolute floor as training (calibrated on those still clips).

**Label probe** (``label_probe.csv``): how much of the label each control's scores carry without the
video. For every train and val clip the scores that a control would hand the model (the per-frame
``oracle``, the clip ``footprint``, AM flow's own scores of the deepest block with the dataset's
variant, ``rank_matched`` and ``shuffled`` from them, ``uniform``), flattened over frames and
patches, train a logistic regression on the train clips; its val accuracy is the probe. An oracle
whose probe beats the video models leaks the label (the per-frame coverage is the actor's
trajectory), so its gain says little about saliency.

The stage also checks the camera-motion stage's decision against the table
(:func:`amflow.camera.rules.localisation_evidence`): whether the variant the dataset's models use
localises the actor at least as well as ``static``, and whether any aligned variant beats ``static``.
It logs the answer with the run (tags ``amflow.variant_used``, ``amflow.aligned_beats_static``) and
in the stage's log.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Optional

import matplotlib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch.utils.data import DataLoader, Subset

from amflow import identity, io, paths, tracking
from amflow.camera.rules import localisation_evidence, localisation_name, resolve_variant
from amflow.data.clips import ClipDataset, Normalise
from amflow.data.still_clips import still_clips
from amflow.errors import AmflowError
from amflow.models import build_backbone
from amflow.models.am_flow import (coefficient_of_variation, covered_patches, coverage_share, footprint_scores,
                                   normalise_scores, rank_matched_scores, share_scores, shuffle_scores,
                                   warp_to_previous)
from amflow.models.backbone import patch_size
from amflow.models.frozen_flow import frozen_scores, noise_floors, noise_levels
from amflow.models.inference import collate_clips, single_view
from amflow.params import ALIGNMENTS, Params
from amflow.runs import STILL_CLIPS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Method name in the CSV -> frozen_flow mode: static and every alignment.
VARIANTS = {localisation_name(None): "static", **{localisation_name(a): a for a in ALIGNMENTS}}
BASELINES = ("pixel_diff", "pixel_diff_compensated")
COLUMNS = ("method", "block", "mass_ratio", "auc", "auc_distractors", "still_cv", "frames", "patches")
PROBE_COLUMNS = ("scores", "val_accuracy", "train_accuracy", "features", "train_clips", "val_clips", "chance")
PROBE_SCORES = ("oracle", "footprint", "rank_matched", "amflow", "shuffled", "uniform")


def patch_means(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """``[M, C, H, W]`` -> ``[M, N]``: the mean over each patch's pixels and channels."""
    return F.avg_pool2d(x.float(), kernel_size=patch, stride=patch).mean(dim=1).flatten(1)


def pixel_difference_scores(video: torch.Tensor, patch: tuple[int, int],
                            transforms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-patch mean ``|frame t+1 - frame t|`` ``[B, T, N]``, normalised to mean 1 per frame.

    With ``transforms`` frame t+1 is first warped into frame t; patches the warp does not fully cover
    get the mean of the frame's other scores (neutral). The last frame reuses the previous pair's.
    """
    B, T = video.shape[:2]
    if transforms is None:
        following, valid = video[:, 1:].float(), None
    else:
        following, covered = warp_to_previous(video, transforms)
        valid = covered_patches(covered, patch)
    diff = patch_means((following - video[:, :-1].float()).abs().flatten(0, 1), patch).view(B, T - 1, -1)
    if valid is not None:
        keep = valid.float()
        neutral = (diff * keep).sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp_min(1)
        diff = torch.where(valid, diff, neutral)
    diff = torch.cat([diff, diff[:, -1:]], dim=1)
    return normalise_scores(diff, "mean")


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half) of ``scores`` for the boolean ``positive``; NaN if one
    class is empty."""
    scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def localisation_metrics(scores: np.ndarray, coverage: np.ndarray, distractors: Optional[np.ndarray] = None) -> dict:
    """``scores``, ``coverage`` ``[F, N]`` (frames x patches; coverage = share of the patch the actor
    covers) -> ``mass_ratio``, ``auc`` over the frames where the actor covers some but not all patches;
    with ``distractors`` (their share of each patch, ``[F, N]``) also ``auc_distractors``: the actor's
    patches against the patches only distractors cover, over the frames that have both."""
    present = np.asarray(coverage) > 0
    scores = np.asarray(scores, np.float64)
    count = present.sum(axis=1)
    use = (count > 0) & (count < present.shape[1])
    if not use.any():
        return {"mass_ratio": float("nan"), "auc": float("nan"), "auc_distractors": float("nan"), "frames": 0,
                "patches": 0}
    s, p = scores[use], present[use]
    mass = (s * p).sum(axis=1) / np.maximum(s.sum(axis=1), 1e-12)
    area = p.mean(axis=1)
    against = float("nan")
    if distractors is not None:
        other = (np.asarray(distractors) > 0) & ~present
        both = present.any(axis=1) & other.any(axis=1)
        keep = (present | other)[both]
        against = auc(scores[both][keep], present[both][keep]) if both.any() else float("nan")
    return {"mass_ratio": float(np.mean(mass / area)), "auc": auc(s, p), "auc_distractors": against,
            "frames": int(use.sum()), "patches": int(s.size)}


def still_cv(backbone: torch.nn.Module, still: torch.Tensor, flow_spec, blocks: list[int],
             floors: Optional[dict[int, float]] = None) -> dict[Optional[int], float]:
    """Mean coefficient of variation of the scores on still clips ``[M, T, 3, H, W]`` (normalised):
    per block for AM flow (every variant equals static there: the camera does not move), under
    ``None`` for the pixel difference. Near 0: no motion gives near-uniform scores."""
    out: dict[Optional[int], float] = {
        b: float(coefficient_of_variation(s).mean())
        for b, s in frozen_scores(backbone, still, None, flow_spec, "static", blocks, floors).items()}
    out[None] = float(coefficient_of_variation(pixel_difference_scores(still, patch_size(backbone))).mean())
    return out


def measure(backbone: torch.nn.Module, batches: Iterable[dict], flow_spec, blocks: list[int],
            floors: Optional[dict[int, float]] = None, still: Optional[torch.Tensor] = None) -> pd.DataFrame:
    """The localisation table for clip batches (``video``, ``transforms``, ``coverage`` as the clip loader
    gives them): one row per (variant, block) and per baseline, columns :data:`COLUMNS`; ``floors``:
    AM flow's absolute noise floors per block; ``still``: still clips for the ``still_cv`` column."""
    patch = patch_size(backbone)
    scores: dict[tuple[str, Optional[int]], list[np.ndarray]] = {}
    cover: list[np.ndarray] = []
    others: list[np.ndarray] = []

    def add(key, s: torch.Tensor) -> None:
        scores.setdefault(key, []).append(s.flatten(0, 1).cpu().numpy())

    with torch.no_grad():
        for batch in batches:
            video, transforms = batch["video"], batch["transforms"]
            cover.append(patch_means(batch["coverage"].flatten(0, 1)[:, None], patch).numpy())
            if "distractor_coverage" in batch:
                others.append(patch_means(batch["distractor_coverage"].flatten(0, 1)[:, None], patch).numpy())
            for name, mode in VARIANTS.items():
                for block, s in frozen_scores(backbone, video, transforms, flow_spec, mode, blocks, floors).items():
                    add((name, block), s)
            add(("pixel_diff", None), pixel_difference_scores(video, patch))
            add(("pixel_diff_compensated", None), pixel_difference_scores(video, patch, transforms))
    coverage = np.concatenate(cover)
    distractors = np.concatenate(others) if others else None
    cv = still_cv(backbone, still, flow_spec, blocks, floors) if still is not None else {}
    rows = [{"method": name, "block": block, **localisation_metrics(np.concatenate(parts), coverage, distractors),
             "still_cv": cv.get(block, float("nan"))} for (name, block), parts in scores.items()]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table["block"] = table["block"].astype("Int64")
    return table


def probe_inputs(backbone: torch.nn.Module, batch: dict, flow_spec, mode: str, block: int,
                 generator: torch.Generator, floors: Optional[dict[int, float]] = None) -> dict[str, torch.Tensor]:
    """The scores each control would give a model for ``batch``, ``[B, T*N]`` each (see the module
    docstring); AM flow's from ``block`` of the frozen backbone with ``mode`` (static, grid or warp)."""
    video, patch = batch["video"], patch_size(backbone)
    B, T = video.shape[:2]
    share = coverage_share(batch["coverage"].flatten(0, 1), patch)                       # [B*T, N]
    flow = frozen_scores(backbone, video, batch["transforms"], flow_spec, mode, [block], floors)[block].flatten(0, 1)
    out = {"oracle": share_scores(share, flow_spec.normalise),
           "footprint": footprint_scores(share.view(B, T, -1), flow_spec.normalise).flatten(0, 1),
           "rank_matched": rank_matched_scores(flow, share), "amflow": flow,
           "shuffled": shuffle_scores(flow, generator), "uniform": torch.ones_like(flow)}
    return {k: v.reshape(B, -1) for k, v in out.items()}


def label_probe(backbone: torch.nn.Module, splits: dict[str, Iterable[dict]], flow_spec, mode: str,
                block: int, seed: int = 0, floors: Optional[dict[int, float]] = None) -> pd.DataFrame:
    """A logistic regression per control on its scores alone, fit on ``splits["train"]``'s clips and
    scored on ``splits["val"]``'s (batches as the clip loader gives them): columns :data:`PROBE_COLUMNS`."""
    from sklearn.linear_model import LogisticRegression  # lazily: scikit-learn and SciPy take a second to import
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    generator = torch.Generator().manual_seed(seed)
    feats: dict[str, dict[str, list[np.ndarray]]] = {s: {k: [] for k in PROBE_SCORES} for s in splits}
    labels: dict[str, list[np.ndarray]] = {s: [] for s in splits}
    with torch.no_grad():
        for split, batches in splits.items():
            for batch in batches:
                for key, value in probe_inputs(backbone, batch, flow_spec, mode, block, generator, floors).items():
                    feats[split][key].append(value.cpu().numpy())
                labels[split].append(batch["label"].numpy())
    y = {s: np.concatenate(v) for s, v in labels.items()}
    chance = float(np.bincount(y["val"]).max() / len(y["val"]))
    rows = []
    for key in PROBE_SCORES:
        x = {s: np.concatenate(feats[s][key]) for s in splits}
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(x["train"], y["train"])
        rows.append({"scores": key, "val_accuracy": float(clf.score(x["val"], y["val"])),
                     "train_accuracy": float(clf.score(x["train"], y["train"])), "features": x["train"].shape[1],
                     "train_clips": len(y["train"]), "val_clips": len(y["val"]), "chance": chance})
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))


def plot_localisation(table: pd.DataFrame, path: Path, title: str = "") -> None:
    """Mass ratio and AUC per block for each variant; the pixel baselines as horizontal lines."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    try:
        for ax, col, chance in ((axes[0], "mass_ratio", 1.0), (axes[1], "auc", 0.5)):
            for name in VARIANTS:
                rows = table[table["method"] == name]
                ax.plot(rows["block"].astype(int), rows[col], marker="o", label=name)
            for name, style in zip(BASELINES, ("--", ":")):
                value = table.loc[table["method"] == name, col]
                if len(value):
                    ax.axhline(float(value.iloc[0]), color="grey", linestyle=style, label=name)
            ax.axhline(chance, color="black", linewidth=0.6)
            ax.set_xlabel("block")
            ax.set_ylabel({"mass_ratio": "mass share / area share on actor patches",
                           "auc": "ROC AUC, actor in patch"}[col], fontsize=8)
        axes[1].legend(fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        io.write_png(fig, path)
    finally:
        plt.close(fig)


def run_localisation(params: Params, dataset: str, data_dir: Path, results_dir: Path, out_dir: Path,
                     max_videos: Optional[int] = None) -> pd.DataFrame:
    """The ``amflow localise`` stage: measure, plot, log to MLflow, then write the CSV (last)."""
    try:
        params.dataset(dataset)
    except KeyError as exc:
        raise AmflowError(str(exc.args[0])) from None
    data_dir, results_dir, out_dir = Path(data_dir), Path(results_dir), Path(out_dir)
    # The variant the dataset's models use (auto: the camera-motion stage's decision), before the work.
    variant, _ = resolve_variant(params.model.am_flow.variant, paths.camera_dir(results_dir, dataset))
    if params.train.threads > 0:
        torch.set_num_threads(params.train.threads)
    weights = paths.backbone_file(results_dir) if params.backbone.weights == "pretrain" else None
    backbone = build_backbone(params.backbone, weights)
    sampling = single_view(params.sampling_for(dataset))
    key = paths.dataset_key(params, dataset)
    frames_dir = paths.frames_dir(data_dir, key)

    def batches(split: str):
        clips = ClipDataset(frames_dir, split, sampling, train=False,
                            motion=paths.motion_file(results_dir, dataset),
                            ground_truth=paths.ground_truth_file(data_dir, key), distractors=True)
        some = clips if max_videos is None else Subset(clips, range(min(max_videos, len(clips))))
        loader = DataLoader(some, batch_size=params.train.batch_size, shuffle=False, collate_fn=collate_clips)
        return len(some), ({**b, "video": clips.normalise(b["video"])} for b in loader)  # loaders ship uint8

    blocks = list(range(len(backbone.blocks)))
    spec = params.model.am_flow
    still = Normalise(sampling.mean, sampling.std)(still_clips(frames_dir, "val", sampling, STILL_CLIPS,
                                                               spec.still_noise))
    floors = noise_floors(spec, noise_levels(backbone, still))   # empty unless model.am_flow.noise_floor > 0
    n_val, val = batches("val")
    table = measure(backbone, val, spec, blocks, floors, still)
    # The label probe reads AM flow as a trained amflow run of this dataset would: its variant, deepest block.
    mode = "static" if variant != "aligned" else params.model.am_flow.alignment
    probe = label_probe(backbone, {"train": batches("train")[1], "val": batches("val")[1]}, spec, mode,
                        blocks[-1], floors=floors)

    out_dir.mkdir(parents=True, exist_ok=True)
    plot_localisation(table, out_dir / paths.LOCALISATION_PNG,
                      title=f"{dataset}: AM flow vs the actor ({n_val} val clips)")
    tracker = tracking.open_run(params, identity.localisation(params, dataset, val_videos=n_val),
                                experiment=dataset, key=tracking.run_key(out_dir, results_dir), name="localise")
    metrics = {}
    for row in table.itertuples():
        key = row.method if pd.isna(row.block) else f"{row.method}.block{int(row.block)}"
        metrics[f"{key}.mass_ratio"], metrics[f"{key}.auc"] = row.mass_ratio, row.auc
        if not pd.isna(row.auc_distractors):
            metrics[f"{key}.auc_distractors"] = row.auc_distractors
    metrics.update({f"probe.{row.scores}.val_accuracy": row.val_accuracy for row in probe.itertuples()})
    try:
        evidence = localisation_evidence(variant, params.model.am_flow.alignment, table)
    except AmflowError as exc:   # too few clips with the actor for an AUC: the table still counts
        evidence = {"sentence": f"the camera decision is not checked: {exc}"}
    else:
        tracker.set_tags({f"{tracking.TAG}variant_used": evidence["used"],
                          f"{tracking.TAG}aligned_beats_static": str(evidence["aligned_beats_static"]).lower()})
        metrics.update({"variant_used.mean_auc": evidence["used_auc"], "static.mean_auc": evidence["static_auc"]})
        tracker.log_json(evidence, "variant_evidence.json")
    tracker.log_metrics(metrics)
    tracker.log_artifacts([out_dir / paths.LOCALISATION_PNG])
    text = table.to_csv(index=False, float_format="%.4f", lineterminator="\n")
    tracker.log_json(json.loads(table.to_json(orient="records")), "localisation.json")
    tracker.log_json(json.loads(probe.to_json(orient="records")), "label_probe.json")
    tracker.finish()
    io.write_text(out_dir / paths.LABEL_PROBE_CSV, probe.to_csv(index=False, float_format="%.4f", lineterminator="\n"))
    io.write_text(out_dir / paths.LOCALISATION_CSV, text)
    print(f"{out_dir / paths.LOCALISATION_CSV}: {len(table)} rows from {n_val} val clips", file=sys.stderr)
    print(f"{dataset}: {evidence['sentence']}", file=sys.stderr)
    return table
