"""``amflow evaluate``: the test scores of a trained run (:mod:`amflow.evaluate.evaluation`), or the evaluation
its training already made with the same checkpoint and params (:mod:`amflow.evaluate.reuse`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from amflow import paths
from amflow.evaluate.reuse import reuse_training_evaluation
from amflow.params import Params


def evaluate(params: Params, *, dataset: str, method: str, seed: int, data_dir: Path, results_dir: Path,
             run_dir: Optional[Path]) -> None:
    folder = run_dir or paths.run_dir(results_dir, dataset, method, seed)
    if reuse_training_evaluation(params, dataset, method, seed, folder) is not None:
        print(f"evaluate {folder}: the evaluation made by its training, same checkpoint and params", file=sys.stderr)
        return
    from amflow.evaluate.evaluation import evaluate_run  # imports torch and the models: only to evaluate

    evaluate_run(params, dataset=dataset, method=method, seed=seed, data_dir=data_dir, results_dir=results_dir,
                 run_dir=run_dir)
