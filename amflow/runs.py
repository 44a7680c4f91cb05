"""A trained run: where its files are, its model, and loading it back with one compatibility policy
(what defines the run, and its digest: :func:`amflow.identity.training`).

A run folder (:func:`amflow.paths.run_dir`, or ``--run-dir``) holds ``params.yaml``, ``train_state.pt``
(every epoch), ``train_log.csv``, ``checkpoint.pt`` and ``train.json`` (written once training is
complete: the final trainable weights, and what the training was) and, after evaluation, ``metrics.json``
and its companions; the names are :mod:`amflow.paths`'s.

The policy (:func:`load_trained_run`), for evaluation, prediction and the heat maps alike: training is
complete (``train.json`` exists); the checkpoint records the params digest of the params it is used with
(a missing digest is refused like a different one); and the checkpoint is the one ``train.json``
describes (the same digest and last epoch). Each refusal names the file and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from amflow import identity, io, methods, paths
from amflow.camera.rules import resolve_variant
from amflow.data.clips import Normalise
from amflow.data.still_clips import still_clips
from amflow.errors import AmflowError
from amflow.models import build_backbone, build_model
from amflow.models.frozen_flow import noise_levels
from amflow.params import GROUND_TRUTH_CONTROLS, Params, SamplingSpec
from amflow.train import checkpoint as ckpt
from amflow.train.trainer import seed_everything


STILL_CLIPS = 32  # still clips that calibrate AM flow's noise floor


@dataclass
class RunPaths:
    dataset_dir: Path
    frames_dir: Path
    motion: Path
    results_dataset_dir: Path
    backbone_weights: Optional[Path]
    run_dir: Path
    ground_truth: Path


def run_paths(params: Params, dataset: str, method: str, seed: int, data_dir: Path, results_dir: Path,
              run_dir: Optional[Path] = None) -> RunPaths:
    """Every input and output location of a run, from :mod:`amflow.paths` (the one layout)."""
    try:
        key = paths.dataset_key(params, dataset)
    except KeyError as exc:
        raise AmflowError(str(exc.args[0])) from None
    data_dir, results_dir = Path(data_dir), Path(results_dir)
    weights = paths.backbone_file(results_dir) if params.backbone.weights == "pretrain" else None
    return RunPaths(dataset_dir=paths.dataset_dir(data_dir, key), frames_dir=paths.frames_dir(data_dir, key),
                    motion=paths.motion_file(results_dir, dataset),
                    results_dataset_dir=paths.camera_dir(results_dir, dataset), backbone_weights=weights,
                    run_dir=Path(run_dir) if run_dir is not None else paths.run_dir(results_dir, dataset, method, seed),
                    ground_truth=paths.ground_truth_file(data_dir, key))


def resolve_method_variant(params: Params, method: str, results_dataset_dir: Path) -> tuple[str, bool]:
    """(AM flow variant for the model, identity_for_static); 'none' for a method that reads no AM flow."""
    if not methods.get(method).am_flow:
        return "none", False
    return resolve_variant(params.model.am_flow.variant, results_dataset_dir)


def uses_oracle(params: Params, method: str, variant: str) -> bool:
    """Whether the model reads the actor's ground-truth coverage (``model.am_flow.control`` oracle,
    footprint or rank_matched)."""
    return (methods.get(method).ground_truth_controls and variant != "none"
            and params.model.am_flow.control in GROUND_TRUTH_CONTROLS)


def build_run_model(params: Params, dataset: str, method: str, num_classes: int, variant: str,
                    weights_path: Optional[Path], seed: int) -> torch.nn.Module:
    """The video model, initialised from ``seed`` (so a random backbone is the same in predict)."""
    seed_everything(seed)
    backbone = build_backbone(params.backbone, weights_path)
    return build_model(method, backbone, num_classes, params.sampling_for(dataset).num_frames, params.model,
                       variant)


def measure_noise_levels(backbone: torch.nn.Module, frames_dir: Path, sampling: SamplingSpec,
                         still_noise: float) -> torch.Tensor:
    """The backbone's noise level per block (``model.am_flow.noise_floor``'s unit), on still clips made
    from the val split's frames (:mod:`amflow.data.still_clips`)."""
    still = still_clips(frames_dir, "val", sampling, STILL_CLIPS, still_noise)
    return noise_levels(backbone, Normalise(sampling.mean, sampling.std)(still))


# --------------------------------------------------------------------------- loading a trained run
@dataclass
class TrainedRun:
    """A finished run folder: ``info`` is ``train.json``, ``state`` the checkpoint (``model``: the trainable
    weights; ``meta``: ``num_classes`` and ``compat`` with the classes and the resolved AM flow variant)."""

    run_dir: Path
    info: dict
    state: dict

    @property
    def compat(self) -> dict:
        return self.state["meta"].get("compat", {})

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / paths.CHECKPOINT


def check_complete(run_dir: Path, make: str) -> None:
    """Refuse a run whose training is not complete; ``make`` is the command that completes it."""
    train_json = Path(run_dir) / paths.TRAIN_JSON
    if not train_json.exists():
        raise AmflowError(f"{train_json}: training of this run is not complete; run `{make}` first")


def check_digest(state: dict, expected: identity.Identity, source: Path, trained_params: Path) -> None:
    """Refuse weights trained with params other than those of the run ``expected`` (a missing digest
    counts as other)."""
    recorded = state["meta"].get("compat", {}).get("params_digest")
    if recorded != expected.digest:
        raise AmflowError(f"{source}: this run was trained with different params (digest {recorded} vs "
                          f"{expected.digest} now); use the params it was trained with ({trained_params}), or "
                          f"retrain it with the other params")


def _refuse_other(checkpoint: Path, found: dict, other: dict, other_name: str, label: str, run_dir: Path) -> None:
    differ = [k for k in found if found[k] != other[k]]
    if differ:
        raise AmflowError(f"{checkpoint}: not the checkpoint {other_name} "
                          f"({', '.join(f'{k} {found[k]}' for k in differ)}; "
                          f"{label}: {', '.join(f'{k} {other[k]}' for k in differ)}); restore the run's own "
                          f"checkpoint, or delete {run_dir} and retrain")


def load_trained_run(run_dir: Path, params: Params, *, make: str, dataset: Optional[str] = None,
                     method: Optional[str] = None, seed: Optional[int] = None) -> TrainedRun:
    """The finished run in ``run_dir``, checked against ``params`` under the module's one policy.

    ``dataset``, ``method`` and ``seed`` (the run asked for) default to those the checkpoint records;
    ``make`` is the command that (re)makes the run, for the error of an unfinished one."""
    run_dir = Path(run_dir)
    check_complete(run_dir, make)
    train_json, checkpoint = run_dir / paths.TRAIN_JSON, run_dir / paths.CHECKPOINT
    try:
        info = io.read_json(train_json)
    except ValueError as exc:
        raise AmflowError(str(exc)) from None
    if not checkpoint.exists():
        raise AmflowError(f"{checkpoint}: missing, though {train_json} says training is complete; rerun `{make}` "
                          f"(or the pipeline): it restores the checkpoint from {paths.TRAIN_STATE}, or trains again")
    state = ckpt.load_checkpoint(checkpoint)
    compat = state["meta"].get("compat", {})
    recorded = {k: compat.get(k) for k in ("dataset", "method", "seed")}  # the run's identity, in its checkpoint
    asked = {"dataset": dataset or recorded["dataset"], "method": method or recorded["method"],
             "seed": recorded["seed"] if seed is None else int(seed)}
    _refuse_other(checkpoint, recorded, asked, "of this run", "the run", run_dir)
    check_digest(state, identity.training(params, **asked), run_dir, run_dir / paths.PARAMS_YAML)
    # train.json names its checkpoint by the digest (the same run and params) and the last epoch.
    _refuse_other(checkpoint, {"params digest": compat.get("params_digest"), "epoch": state["epoch"]},
                  {"params digest": info.get("params_digest"), "epoch": info.get("epochs")},
                  f"that {train_json} describes", "train.json", run_dir)
    return TrainedRun(run_dir, info, state)


def trained_model(params: Params, state: dict, *, dataset: str, method: str, seed: int, variant: str,
                  backbone: Optional[Path], source: Path) -> torch.nn.Module:
    """The run's model with the trained weights of ``state`` (a checkpoint, or the MLflow model's weights
    read from ``source``), its frozen backbone checked against the one it was trained with."""
    model = build_run_model(params, dataset, method, int(state["meta"]["num_classes"]), variant, backbone, seed)
    ckpt.load_trainable_state(model, state["model"], source)
    if "frozen_fingerprint" in state:
        ckpt.check_fingerprint(model, state["frozen_fingerprint"], source)
    return model
