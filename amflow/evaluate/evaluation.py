"""The evaluation of a trained run, what `amflow evaluate` and `amflow train --evaluate` run: multi-view
testing, metrics, plots, MLflow.

Test views come from the dataset's sampling params (``test_clips`` x ``test_crops``); the softmax is
averaged over the views of a video. Outputs in the run folder: ``per_class.csv``, ``predictions.csv``
(true and predicted class of every test clip: DVC's confusion plot), ``confusion.png``, ``curves.png``,
``scores.json`` (the numeric test scores alone: DVC's metrics) and ``metrics.json`` (everything; written
before the MLflow logging, which retries on a busy store). Evaluation runs in one process (rank 0 only
under torchrun: the other ranks return at once); it is cheap next to training.

Temporal-sensitivity diagnostic: when the dataset's ``dataset.json`` has ``time_reversal`` (label index ->
label index of the time-reversed action, keys as strings), the test clips of classes with a partner
are also played backwards (the T axis flipped; camera transforms reversed and inverted,
``H'_t = inv(H_{T-2-t})``) and scored against the partner labels: ``reversed_top1``. A model blind to
frame order cannot tell a class from its reversal, so it stays near chance within each pair. The sharp
test is ``both_directions_top1``: over the clips whose class differs from its reversal, the share
classified right *both* forwards and backwards. An order-blind model gives a clip and its reversal
the same prediction, so it scores exactly 0; anything above 0 is direct evidence of using frame order
(``reversed_top1`` alone is not: classes that are their own reversal, like "stay", count there).
``forward_top1_paired`` is the ordinary top-1 on the same subset, for comparison.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from amflow import io, parallel, tracking
from amflow.data import transforms_geometry as geo
from amflow.data.clips import ClipDataset
from amflow.errors import AmflowError
from amflow.evaluate import metrics as M
from amflow.evaluate.reuse import evaluation_identity
from amflow.evaluate.plots import confusion_png, curves_png
from amflow.models.inference import clip_probs, collate_clips
from amflow.params import Params
from amflow.paths import (CONFUSION_PNG, CURVES_PNG, DATASET_JSON, METRICS_JSON, PER_CLASS_CSV, PREDICTIONS_CSV,
                          SCORES_JSON)
from amflow.progress import bar as progress_bar
from amflow.runs import check_complete, load_trained_run, run_paths, trained_model, uses_oracle
from amflow.train.distributed import resolve_device
from amflow.train.trainer import loader_worker_init

# metrics.json keys repeated in scores.json: the test scores, and the epochs trained for them.
SCORES = ("top1", "top5", "mean_class_acc", "both_directions_top1", "epochs")
# Clips per evaluation forward pass, in training batches (inference keeps no activations for backward).
EVAL_BATCH_FACTOR = 4


# --------------------------------------------------------------------------- time reversal
def reverse_clips(video: torch.Tensor, transforms: Optional[torch.Tensor]):
    """Play clips backwards: flip T in ``[..., T, 3, H, W]``; transforms ``[..., T-1, 3, 3]`` become
    ``H'_t = inv(H_{T-2-t})`` (the map from reversed frame t to t+1), normalised so ``H[2,2] = 1``."""
    video = torch.flip(video, dims=(video.ndim - 4,))
    if transforms is None:
        return video, None
    inv = geo.invert(torch.flip(transforms, dims=(transforms.ndim - 3,)).double())
    return video, inv.to(transforms.dtype)


def read_time_reversal(dataset_dir: Path) -> Optional[dict[int, int]]:
    path = Path(dataset_dir) / DATASET_JSON
    if not path.exists():
        return None
    try:
        mapping = io.read_json(path).get("time_reversal")
    except ValueError as exc:
        raise AmflowError(str(exc)) from None
    if not mapping:
        return None
    try:
        return {int(k): int(v) for k, v in mapping.items()}
    except (TypeError, ValueError, AttributeError):
        raise AmflowError(f"{path}: 'time_reversal' must map label indices to label indices "
                          f"(got {str(mapping)[:80]}); rerun `amflow prepare`") from None


# --------------------------------------------------------------------------- the evaluation loop
@dataclass
class EvalOutputs:
    probs: np.ndarray                 # [N, C], averaged over views
    labels: np.ndarray                # [N]
    indices: np.ndarray               # [N] dataset indices
    rev_probs: np.ndarray             # [M, C] of the reversed clips of reversible classes
    rev_targets: np.ndarray           # [M] partner labels
    rev_rows: np.ndarray              # [M] rows into probs/labels of those items


@torch.inference_mode()
def evaluate_model(model: torch.nn.Module, dataset, *, device: torch.device, amp: bool, batch_size: int,
                   num_workers: int = 0, reversal: Optional[dict[int, int]] = None,
                   progress: bool = True, normalise: Optional[Callable] = None) -> EvalOutputs:
    model.eval()
    if num_workers > 0:
        parallel.before_forking_workers()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_clips, pin_memory=device.type == "cuda",
                        worker_init_fn=loader_worker_init)
    probs, labels, indices, rev_probs, rev_targets, rev_rows = [], [], [], [], [], []
    seen = 0
    for batch in progress_bar(loader, desc="evaluate", unit="batch", disable=not progress):
        coverage = batch.get("coverage")
        p = clip_probs(model, batch["video"], batch["transforms"], device, amp, normalise, coverage)
        y = batch["label"]
        probs.append(p.cpu().numpy())
        labels.append(y.numpy())
        indices.append(batch["index"].numpy())
        if reversal:
            keep = torch.tensor([int(v) in reversal for v in y], dtype=torch.bool)
            if keep.any():
                tr = batch["transforms"][keep] if batch["transforms"] is not None else None
                v_rev, t_rev = reverse_clips(batch["video"][keep], tr)
                c_rev = None if coverage is None else torch.flip(coverage[keep], dims=(coverage.ndim - 3,))
                rev_probs.append(clip_probs(model, v_rev, t_rev, device, amp, normalise, c_rev).cpu().numpy())
                rev_targets.append(np.array([reversal[int(v)] for v in y[keep]], dtype=np.int64))
                rev_rows.append(seen + np.flatnonzero(keep.numpy()))
        seen += len(y)
    num_classes = probs[0].shape[1] if probs else 0

    def cat(parts, shape, dtype):
        return np.concatenate(parts) if parts else np.zeros(shape, dtype)

    return EvalOutputs(cat(probs, (0, num_classes), np.float64), cat(labels, (0,), np.int64),
                       cat(indices, (0,), np.int64), cat(rev_probs, (0, num_classes), np.float64),
                       cat(rev_targets, (0,), np.int64), cat(rev_rows, (0,), np.int64))


def score(out: EvalOutputs) -> dict:
    preds = out.probs.argmax(axis=1)
    result = {
        "top1": M.topk_accuracy(out.probs, out.labels, 1),
        "top5": M.topk_accuracy(out.probs, out.labels, 5),
        "mean_class_acc": M.mean_class_accuracy(out.labels, preds),
        "num_test": int(len(out.labels)),
        "classes_in_test": int(len(np.unique(out.labels))),
        "reversed_top1": None, "forward_top1_paired": None, "paired_items": 0,
        "both_directions_top1": None, "directional_items": 0,
    }
    if len(out.rev_targets):
        result["reversed_top1"] = M.topk_accuracy(out.rev_probs, out.rev_targets, 1)
        result["forward_top1_paired"] = M.topk_accuracy(out.probs[out.rev_rows], out.labels[out.rev_rows], 1)
        result["paired_items"] = int(len(out.rev_targets))
        labels = out.labels[out.rev_rows]
        directional = out.rev_targets != labels  # a self-reversing class proves nothing about order
        if directional.any():
            both = (preds[out.rev_rows] == labels) & (out.rev_probs.argmax(axis=1) == out.rev_targets)
            result["both_directions_top1"] = float(both[directional].mean())
            result["directional_items"] = int(directional.sum())
    return result


# --------------------------------------------------------------------------- one run's evaluation
def evaluate_run(params: Params, *, dataset: str, method: str, seed: int, data_dir: Path, results_dir: Path,
                 run_dir: Optional[Path] = None, progress: bool = True, out_dir: Optional[Path] = None) -> dict:
    """Evaluate the trained run on the test split; returns the content of ``metrics.json``. The files go
    to the run folder, or to ``out_dir`` (``amflow train --evaluate``: see :mod:`amflow.evaluate.reuse`)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return {}  # evaluation is single-process; see the module docstring
    paths = run_paths(params, dataset, method, seed, data_dir, results_dir, run_dir)
    train_command = f"amflow train --dataset {dataset} --method {method} --seed {seed}"
    if not paths.run_dir.is_dir():
        check_complete(paths.run_dir, train_command)  # never trained: no folder to lock (nor to make)
    # One writer per run folder: not while a training (or another evaluation) of it is running; the
    # lock comes first, so that an evaluation beside a running training names it.
    with io.exclusive_folder(paths.run_dir, f"amflow evaluate --dataset {dataset} --method {method} --seed {seed}"):
        run = load_trained_run(paths.run_dir, params, dataset=dataset, method=method, seed=seed, make=train_command)
        return _evaluate_locked(params, paths, run, dataset=dataset, method=method, seed=seed, progress=progress,
                                out_dir=Path(out_dir) if out_dir is not None else paths.run_dir)


def _evaluate_locked(params: Params, paths, run, *, dataset: str, method: str, seed: int, progress: bool,
                     out_dir: Path) -> dict:
    train_info, compat = run.info, run.compat
    tracker = tracking.reopen_run(paths.run_dir)  # an unreachable server fails here
    variant, identity_for_static = compat["am_flow_variant"], bool(compat["identity_for_static"])
    classes = list(compat["classes"])
    sampling = params.sampling_for(dataset)
    device = resolve_device(params.train.device)
    if params.train.threads > 0:
        torch.set_num_threads(params.train.threads)

    model = trained_model(params, run.state, dataset=dataset, method=method, seed=seed, variant=variant,
                          backbone=paths.backbone_weights, source=run.checkpoint)
    model.to(device)

    motion = paths.motion if variant == "aligned" else None
    test_set = ClipDataset(paths.frames_dir, "test", sampling, train=False, motion=motion, seed=seed,
                           identity_for_static=identity_for_static,
                           ground_truth=paths.ground_truth if uses_oracle(params, method, variant) else None)
    views = sampling.test_clips * sampling.test_crops
    reversal = read_time_reversal(paths.dataset_dir)
    # Each item is V views. No activations are kept for a backward pass, so a forward pass takes
    # EVAL_BATCH_FACTOR training batches of clips: fewer, larger matrix products.
    batch = max(1, EVAL_BATCH_FACTOR * params.train.batch_size // views)
    t0, c0 = time.perf_counter(), time.process_time()
    out = evaluate_model(model, test_set, device=device, amp=bool(params.train.amp and device.type == "cuda"),
                         batch_size=batch, num_workers=params.train.num_workers, reversal=reversal,
                         progress=progress, normalise=test_set.normalise)
    eval_time, eval_cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = score(out)

    run_dir = out_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    preds = out.probs.argmax(axis=1)
    table = M.per_class_table(out.labels, preds, classes)
    with io.atomic_path(run_dir / PER_CLASS_CSV) as tmp:
        table.to_csv(tmp, index=False)
    with io.atomic_path(run_dir / PREDICTIONS_CSV) as tmp:
        pd.DataFrame({"label": [classes[i] for i in out.labels],
                      "predicted": [classes[i] for i in preds]}).to_csv(tmp, index=False)
    title = f"{dataset} / {method} / seed {seed}"
    confusion_png(M.confusion_matrix(out.labels, preds, len(classes)), classes, run_dir / CONFUSION_PNG,
                  title=f"{title}: test top-1 {scores['top1']:.3f} ({views} view(s))")
    history = train_info.get("history", [])
    curves_png(history, run_dir / CURVES_PNG, title=title)

    gflops = train_info.get("gflops_per_clip")
    result = {
        "dataset": dataset, "method": method, "seed": int(seed),
        "top1": scores["top1"], "top5": scores["top5"], "mean_class_acc": scores["mean_class_acc"],
        "views": views, "test_clips": sampling.test_clips, "test_crops": sampling.test_crops,
        "trainable_params": train_info.get("trainable_params"), "total_params": train_info.get("total_params"),
        "gflops_per_clip": gflops, "gflops_per_video": gflops * views if gflops is not None else None,
        "train_time_s": train_info.get("train_time_s"), "eval_time_s": eval_time, "eval_cpu_s": eval_cpu,
        "val_curve": [r["val_top1"] for r in history], "final_val_top1": train_info.get("final_val_top1"),
        "epochs_to_90pct": train_info.get("epochs_to_90pct"),
        # per-epoch wall time (training and validation): the time to reach an accuracy, read off the curve
        "epoch_times": [float(r["epoch_time"]) for r in history],
        "train_clips_per_s": (float(np.mean([r["clips_per_s"] for r in history])) if history else None),
        "epochs": len(history), "am_flow_variant": variant, "identity_for_static": identity_for_static,
        "reversed_top1": scores["reversed_top1"], "forward_top1_paired": scores["forward_top1_paired"],
        "paired_items": scores["paired_items"], "both_directions_top1": scores["both_directions_top1"],
        "directional_items": scores["directional_items"], "num_test": scores["num_test"],
        "num_classes": len(classes), "classes_in_test": scores["classes_in_test"],
        "mlflow_run_id": train_info.get("mlflow_run_id"),
        "evaluated_with": evaluation_identity(params, dataset, method, seed, run.checkpoint),
    }
    io.write_json(run_dir / SCORES_JSON, {k: result[k] for k in SCORES})
    io.write_json(run_dir / METRICS_JSON, result)  # on disk first: a tracking failure must not lose it
    logged = ("top1", "top5", "mean_class_acc", "reversed_top1", "forward_top1_paired", "both_directions_top1",
              "eval_time_s", "views")

    def log_evaluation():
        tracker.log_metrics({f"test_{k}": result[k] for k in logged
                             if result[k] is not None and not (isinstance(result[k], float) and math.isnan(result[k]))})
        tracker.log_artifacts([run_dir / PER_CLASS_CSV, run_dir / CONFUSION_PNG, run_dir / CURVES_PNG],
                              artifact_path="evaluate")
        tracker.log_json(result, f"evaluate/{METRICS_JSON}")
        tracker.set_tags({f"{tracking.TAG}stage": "evaluate"})

    try:
        tracking.with_retries(log_evaluation, f"logging the evaluation of {run_dir}")
    except Exception as exc:  # noqa: BLE001
        raise AmflowError(f"{run_dir}: logging the evaluation to MLflow run {tracker.run_id} on {tracker.uri} failed "
                          f"({tracking.describe(exc)}); {METRICS_JSON} is saved; rerun the same `amflow evaluate` "
                          f"command to log it") from None
    print(f"evaluate {dataset}/{method}/seed{seed}: top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%}, "
          f"mean class accuracy {result['mean_class_acc']:.2%} ({result['num_test']} test videos, {views} view(s), "
          f"{eval_time:.1f} s)", file=sys.stderr)
    return result
