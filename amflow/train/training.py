"""One training run, what `amflow train` (:mod:`amflow.stages.train`) and each sweep trial run: resolve the run's
inputs, build model and data, train, write the run folder.

Inputs (locations from :mod:`amflow.paths`; ``<key>`` is ``<D>-<spec hash>``, ``results/<name>`` the
params file's namespace): the frame cache ``data/frames/<key>/``, the camera transforms
``results/<name>/<D>/motion.npz`` (aligned variant only), the ground truth
``data/groundtruth/<key>.npz`` (``model.am_flow.control: oracle`` only), ``data/<key>/classes.txt``,
``results/<name>/<D>/camera_motion.json`` (``amflow`` with ``variant: auto``) and
``results/<name>/backbone/backbone.safetensors`` (``backbone.weights: pretrain``).

Outputs in the run folder (default ``results/<name>/<D>/<M>/seed<S>/``): ``params.yaml`` (the resolved params,
for predict), ``mlflow_run.json`` (when tracking), ``train_state.pt`` (every epoch: what a rerun resumes
from), ``train_log.csv`` (every epoch), ``checkpoint.pt`` (once training is complete: the final trainable
weights, the last training state) and ``train.json`` (then, before the final MLflow logging: the model,
summary metrics and files, retried on a busy store; see :func:`finish_tracking`).

Multi-process: start the same command under ``torchrun --nproc_per_node N -m amflow.cli train ...``;
see :mod:`amflow.train.distributed` and :mod:`amflow.train.trainer` for what is shared how.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd
import torch
import yaml

from amflow import identity, io, tracking
from amflow import paths as amflow_paths
from amflow.data.annotations import read_classes
from amflow.data.clips import ClipDataset
from amflow.data.frame_cache import MANIFEST
from amflow.errors import AmflowError
from amflow.models import clip_gflops
from amflow.models.inference import single_view
from amflow.params import Params
from amflow.paths import CHECKPOINT, PARAMS_YAML, TRAIN_JSON, TRAIN_LOG, TRAIN_STATE
from amflow.runs import RunPaths, build_run_model, measure_noise_levels, resolve_method_variant, run_paths, uses_oracle
from amflow.train.distributed import init_distributed
from amflow.train.trainer import Trainer

# Logs a trained run's MLflow model into its run: (tracker, *, params_yaml, checkpoint, backbone) -> model URI.
ModelLogger = Callable[..., Optional[str]]


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    if hasattr(model, "param_counts"):
        return dict(model.param_counts())
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def set_threads(threads: int, ctx) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    elif ctx.distributed and ctx.device.type == "cpu":
        # N processes on one machine must share its cores, or they oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.local_world_size)))


def write_params_yaml(path: Path, params: Params) -> None:
    io.write_text(path, yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))


def epochs_to_fraction(curve: Sequence[float], fraction: float = 0.9) -> Optional[int]:
    """First epoch (1-based) whose value reaches ``fraction`` of the *final* value (the convergence figure)."""
    values = [float(v) for v in curve]
    if not values or not math.isfinite(values[-1]):
        return None
    target = fraction * values[-1]
    for epoch, value in enumerate(values, start=1):
        if math.isfinite(value) and value >= target - 1e-12:
            return epoch
    return len(values)


def summarise(history: list[dict]) -> dict:
    curve = [float(r["val_top1"]) for r in history]
    finite = [(v, i) for i, v in enumerate(curve, start=1) if math.isfinite(v)]
    best = max(finite) if finite else (math.nan, None)
    return {"val_curve": curve, "final_val_top1": curve[-1] if curve else math.nan,
            "best_val_top1": best[0], "best_epoch": best[1], "epochs_to_90pct": epochs_to_fraction(curve, 0.9)}


# --------------------------------------------------------------------------- one training run
def train_run(params: Params, *, dataset: str, method: str, seed: int, data_dir: Path, results_dir: Path,
              run_dir: Optional[Path] = None, stop_after_epoch: Optional[int] = None, progress: bool = True,
              callbacks: Sequence[Callable[[dict], None]] = (), parent_run_id: Optional[str] = None,
              tags: Optional[dict] = None, run_name: Optional[str] = None,
              log_model: Optional[ModelLogger] = None) -> dict:
    """Train one (dataset, method, seed) run; resume from the run folder's training state if there is one.

    ``callbacks`` get each epoch's record (rank 0, after the state is saved); one may raise to end the run
    (a sweep's pruner, say): the exception propagates, the training state stays, and the MLflow run is
    marked KILLED rather than FAILED. ``parent_run_id`` nests the MLflow run (sweep trials); ``tags``
    are added to it; ``run_name`` names it (default ``<method>-seed<seed>``, or the run folder's path
    under the results folder when it lies elsewhere); ``log_model`` logs the trained model into it
    (:func:`amflow.evaluate.mlflow_model.log_run_model`, which `amflow train` passes; the evaluation layer
    owns the model's format), and without it no model is logged (a sweep logs its best trial's once, at the end).

    Returns the content of ``train.json`` (or, when stopped early by the test hook, a dict with
    ``status: stopped`` and the history so far; ``train.json`` is then not written).
    """
    paths = run_paths(params, dataset, method, seed, data_dir, results_dir, run_dir)
    ident = identity.training(params, dataset, method, seed)
    ctx = init_distributed(params.train.device)
    lock = contextlib.ExitStack()
    try:
        # One writer per run folder: a second `amflow train` (or evaluate) on it fails here, before any
        # file of the first is touched. Rank 0 writes for all ranks, so it alone holds the lock.
        error = None
        if ctx.is_main:
            try:
                lock.enter_context(io.exclusive_folder(paths.run_dir, f"amflow train --dataset {dataset} "
                                                                      f"--method {method} --seed {seed}"))
            except AmflowError as exc:
                error = str(exc)
        error = ctx.broadcast_object(error)
        if error:
            raise AmflowError(error)
        set_threads(params.train.threads, ctx)
        variant, identity_for_static = resolve_method_variant(params, method, paths.results_dataset_dir)
        classes = read_classes(paths.dataset_dir)
        sampling = params.sampling_for(dataset)
        motion = paths.motion if variant == "aligned" else None
        truth = paths.ground_truth if uses_oracle(params, method, variant) else None
        train_set = ClipDataset(paths.frames_dir, "train", sampling, train=True, motion=motion, seed=seed,
                                identity_for_static=identity_for_static, ground_truth=truth)
        val_set = ClipDataset(paths.frames_dir, "val", single_view(sampling), train=False, motion=motion,
                              seed=seed, identity_for_static=identity_for_static, ground_truth=truth)
        model = build_run_model(params, dataset, method, len(classes), variant, paths.backbone_weights, seed)
        if getattr(model, "flow_noise", None) is not None:  # model.am_flow.noise_floor: calibrate on still clips
            model.set_noise_levels(measure_noise_levels(model.backbone, paths.frames_dir, sampling,
                                                        params.model.am_flow.still_noise))
        counts = param_counts(model)
        gflops = float(clip_gflops(model, sampling.num_frames, sampling.crop_size)) if ctx.is_main else None
        meta = {
            # The run's identity, written here once (train.json names the checkpoint by its digest).
            "compat": {**ident.names, "params_digest": ident.digest, "am_flow_variant": variant,
                       "identity_for_static": identity_for_static, "classes": list(classes)},
            "num_classes": len(classes), "num_frames": sampling.num_frames,
            "backbone_weights": str(paths.backbone_weights.resolve()) if paths.backbone_weights else None,
        }

        tracker = tracking.NullTracker()
        error = None
        if ctx.is_main:
            write_params_yaml(paths.run_dir / PARAMS_YAML, params)
            try:
                tracker = open_tracking(params, paths, ident, ctx=ctx,
                                        variant=variant, counts=counts, gflops=gflops,
                                        resume=(paths.run_dir / TRAIN_STATE).exists(), results_dir=results_dir,
                                        parent_run_id=parent_run_id, tags=tags, run_name=run_name)
            except AmflowError as exc:
                error = str(exc)
        # Every rank learns of a tracking failure before any training starts (no rank left waiting).
        error = ctx.broadcast_object(error)
        if error:
            raise AmflowError(error)

        by_caller = []

        def caller_callback(cb):
            def run(record):
                try:
                    cb(record)
                except BaseException:
                    by_caller.append(True)  # the caller chose to stop: not a failure of the run
                    raise
            return run

        store_failed = []  # the store's first error other than "busy": tracking of this training stops there

        def log_epoch(record):
            # A tracking failure must not end a long training: the epoch is in the training state. A busy
            # store's epoch is logged at the end (sync_history); any other error stops the tracking at once,
            # with one line (a full disk would fail every call after it).
            if store_failed:
                return
            try:
                tracker.log_epoch(record)
            except Exception as exc:  # noqa: BLE001
                if tracking.is_busy(exc):
                    print(f"warning: MLflow logging of epoch {record['epoch']} failed ({tracking.describe(exc)}); "
                          f"will retry at the end of training", file=sys.stderr)
                    return
                store_failed.append(exc)
                print(f"warning: {paths.run_dir}: MLflow logging failed at epoch {record['epoch']} on {tracker.uri} "
                      f"({tracking.describe(exc)}); tracking of this training stops here (its MLflow run is marked "
                      f"FAILED), the training goes on and writes its results to the run folder; once the store "
                      f"works, rerun the same `amflow train` command to log them (it does not train again)",
                      file=sys.stderr)

        trainer = Trainer(model, train_set, val_set, params.train, seed=seed, run_dir=paths.run_dir, ctx=ctx,
                          meta=meta, callbacks=[log_epoch, *map(caller_callback, callbacks)],
                          stop_after_epoch=stop_after_epoch, progress=progress, normalise=train_set.normalise)
        try:
            result = trainer.fit()
        except BaseException as exc:
            if ctx.is_main:
                stopped = by_caller or isinstance(exc, KeyboardInterrupt)
                _finish_quietly(tracker, "KILLED" if stopped else "FAILED")
            raise
        if not ctx.is_main:
            return {"status": result.status, "history": result.history}
        run_id = tracker.run_id
        if store_failed:  # said once already; if the store cannot even take this, the next start marks it KILLED
            _finish_quietly(tracker, "FAILED", warn=False)
            tracker = tracking.NullTracker()
        if result.status != "complete":
            tracking.with_retries(lambda: tracker.sync_history(result.history),
                                  f"logging the epochs of {paths.run_dir}")
            tracker.finish("KILLED")  # resumable: the next run reopens it as RUNNING
            return {"status": result.status, "history": result.history}

        summary = summarise(result.history)
        noise = getattr(model, "flow_noise", None)
        info = {
            "status": "complete", "params_digest": ident.digest,
            **({"flow_noise_levels": [float(v) for v in noise]} if noise is not None else {}),
            "am_flow_variant": variant, "identity_for_static": identity_for_static,
            "epochs": len(result.history), "train_time_s": result.elapsed_s, "train_cpu_s": result.cpu_s, **summary,
            "trainable_params": counts["trainable"], "total_params": counts["total"], "gflops_per_clip": gflops,
            "world_size": ctx.world_size, "device": ctx.device.type, "global_batch": params.train.batch_size,
            "accum_steps": params.train.accum_steps, "num_classes": len(classes),
            "mlflow_run_id": run_id, "history": result.history,
        }
        # Results on disk first: a tracking failure after hours of training must not lose them.
        io.write_json(paths.run_dir / TRAIN_JSON, info)
        finish_tracking(tracker, info, paths, log_model=log_model)
        return info
    finally:
        lock.close()
        ctx.close()


def open_tracking(params: Params, paths: RunPaths, run: identity.Identity, *, ctx, variant: str, counts: dict,
                  gflops: Optional[float], resume: bool, results_dir: Path, parent_run_id: Optional[str],
                  tags: Optional[dict], run_name: Optional[str]):
    """Open the run's MLflow run (its identity's params) and log what is known before training: the
    model's size, the frame manifest."""
    def failed(exc: BaseException) -> AmflowError:
        return AmflowError(f"{paths.run_dir}: its MLflow run could not be started on {tracking.resolve_uri(params)} "
                           f"({tracking.describe(exc)}); no training was started: fix the store, or set "
                           f"AMFLOW_TRACKING=0 to train without tracking")

    dataset, method, seed = run.names["dataset"], run.names["method"], run.names["seed"]
    key = tracking.run_key(paths.run_dir, results_dir)
    if run_name is None:  # a run folder elsewhere than the standard one (an ablation's) is named by its path
        standard = amflow_paths.run_dir(results_dir, dataset, method, seed).resolve() == paths.run_dir.resolve()
        run_name = tracking.run_name(method, seed) if standard else key
    manifest = paths.frames_dir / MANIFEST
    try:
        tracker = tracking.open_run(
            params, run, experiment=dataset, key=key, name=run_name, record=paths.run_dir, resume=resume,
            parent_run_id=parent_run_id,
            tags={f"{tracking.TAG}run_dir": str(paths.run_dir.resolve()),
                  f"{tracking.TAG}data_manifest_sha256": tracking.file_sha256(manifest) or "",
                  f"{tracking.TAG}am_flow_variant": variant, f"{tracking.TAG}world_size": str(ctx.world_size),
                  f"{tracking.TAG}device": ctx.device.type, **(tags or {})})
    except AmflowError:
        raise
    except Exception as exc:  # noqa: BLE001  (an MLflow or store error: stop before any training)
        raise failed(exc) from None

    def log_start():
        tracker.log_params({"run.am_flow_variant": variant, "run.trainable_params": str(counts["trainable"]),
                            "run.total_params": str(counts["total"]), "run.gflops_per_clip": f"{gflops:.6g}"})
        if manifest.exists():
            tracker.log_dataset(pd.read_csv(manifest, dtype=str), name=f"{dataset}-frames",
                                source=str(manifest.resolve()), context="training")

    try:
        tracking.with_retries(log_start, f"logging the start of {paths.run_dir}")
    except Exception as exc:  # noqa: BLE001
        _finish_quietly(tracker, "FAILED")
        raise failed(exc) from None
    return tracker


def finish_tracking(tracker, info: dict, paths: RunPaths, log_model: Optional[ModelLogger] = None) -> None:
    """The final logging of a finished training (summary metrics, files, the MLflow model), retried on a
    busy store. ``train.json`` is already on disk: if it still fails, the error says how to log it
    without training again (the same command resumes the finished training state and only logs)."""
    if tracker.run_id is None:
        return  # tracking is off
    run_dir = paths.run_dir
    steps = {
        "epochs": lambda: tracker.sync_history(info["history"]),  # those a busy store missed
        "summary metrics": lambda: tracker.log_metrics({k: info[k] for k in (
            "train_time_s", "final_val_top1", "best_val_top1", "epochs_to_90pct", "trainable_params",
            "total_params", "gflops_per_clip") if info[k] is not None}),
        "files": lambda: (tracker.log_artifacts([run_dir / TRAIN_LOG, run_dir / PARAMS_YAML],
                                                artifact_path="train"),
                          tracker.log_json(info, f"train/{TRAIN_JSON}")),
        "model": lambda: log_model(tracker, params_yaml=run_dir / PARAMS_YAML, checkpoint=run_dir / CHECKPOINT,
                                       backbone=paths.backbone_weights),
        "status": lambda: tracker.finish("FINISHED"),
    }
    if log_model is None:
        del steps["model"]
    try:
        for what, step in steps.items():  # one at a time: a retry repeats only the step that failed
            tracking.with_retries(step, f"logging the {what} of {run_dir}")
    except Exception as exc:  # noqa: BLE001
        _finish_quietly(tracker, "FAILED")
        raise AmflowError(
            f"{run_dir}: training finished and its results are saved ({TRAIN_JSON}, {CHECKPOINT}), but "
            f"logging them to MLflow run {tracker.run_id} on {tracker.uri} failed ({tracking.describe(exc)}); rerun "
            f"the same `amflow train` command to log them (it does not train again)") from None


def _finish_quietly(tracker, status: str, warn: bool = True) -> None:
    try:
        tracker.finish(status)
    except Exception as exc:  # noqa: BLE001  (the original error matters more)
        if warn:
            print(f"warning: could not mark the MLflow run {status}: {tracking.describe(exc)}", file=sys.stderr)
