"""``amflow evaluate`` taking the evaluation that ``amflow train --evaluate`` made in the training's process.

The Snakemake training job trains a run and evaluates it in one process (one start-up, one import of
torch, timm and MLflow), into ``<run>/evaluated_in_training/``; the evaluation job then only copies
those files into the run folder, when they were made from the run's current checkpoint with the same
params (the training's and the evaluation's identities, :mod:`amflow.identity`): its rerun trigger is the evaluation's params, so a changed
test view reruns the evaluation alone, which then evaluates again. Nothing here imports torch.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from amflow import identity, io, paths
from amflow.params import Params

# metrics.json of a copied evaluation: the folder it came from (its eval_time_s is the training job's).
REUSED_FROM = "evaluation_reused_from"


def evaluation_identity(params: Params, dataset: str, method: str, seed: int, checkpoint: Path) -> dict:
    """What an evaluation's numbers depend on: the run's training and evaluation digests (the latter covers
    the test views) and the checkpoint's contents."""
    return {"training_digest": identity.training(params, dataset, method, seed).digest,
            "evaluation_digest": identity.evaluation(params, dataset, method, seed).digest,
            "checkpoint_sha256": io.file_digest(checkpoint)}


def reuse_training_evaluation(params: Params, dataset: str, method: str, seed: int,
                              run_dir: Path) -> Optional[dict]:
    """Copy the evaluation made in the training's process into ``run_dir`` and return its metrics, when it
    was made with the same identity (:func:`evaluation_identity`); None (nothing written) otherwise."""
    run_dir = Path(run_dir)
    made = run_dir / paths.TRAINING_EVALUATION_DIR
    checkpoint = run_dir / paths.CHECKPOINT
    if not (made / paths.METRICS_JSON).is_file() or not checkpoint.is_file():
        return None
    try:
        metrics = io.read_json(made / paths.METRICS_JSON)
    except ValueError:
        return None  # unreadable: evaluate again
    with io.exclusive_folder(run_dir, f"amflow evaluate --dataset {dataset} (taking {made})"):
        if metrics.get("evaluated_with") != evaluation_identity(params, dataset, method, seed, checkpoint):
            return None
        for name in paths.EVALUATION_FILES[:-1]:
            with io.atomic_path(run_dir / name) as tmp:
                shutil.copyfile(made / name, tmp)
        io.write_json(run_dir / paths.METRICS_JSON, {**metrics, REUSED_FROM: paths.TRAINING_EVALUATION_DIR})
    return metrics
