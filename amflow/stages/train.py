"""``amflow train``: one training run (:mod:`amflow.train.training`), its MLflow model logged in the
evaluation layer's format, and with ``--evaluate`` its evaluation in the same process (no second start-up)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from amflow import paths
from amflow.params import Params
from amflow.train.training import train_run


def log_model(tracker, **files) -> Optional[str]:
    from amflow.evaluate.mlflow_model import log_run_model  # imports mlflow's model code: only when tracking

    return log_run_model(tracker, **files)


def train(params: Params, *, dataset: str, method: str, seed: int, data_dir: Path, results_dir: Path,
          run_dir: Optional[Path], evaluate: bool) -> dict:
    info = train_run(params, dataset=dataset, method=method, seed=seed, data_dir=data_dir, results_dir=results_dir,
                     run_dir=run_dir, log_model=log_model)
    if evaluate and info.get("status") == "complete":
        from amflow.evaluate.evaluation import evaluate_run  # imports the test-time code: only to evaluate

        folder = run_dir or paths.run_dir(results_dir, dataset, method, seed)
        evaluate_run(params, dataset=dataset, method=method, seed=seed, data_dir=data_dir, results_dir=results_dir,
                     run_dir=run_dir, out_dir=folder / paths.TRAINING_EVALUATION_DIR)
    return info
