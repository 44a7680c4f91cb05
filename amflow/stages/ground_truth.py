"""``amflow ground-truth``: a SynthMotion dataset's motion ground truth, recomputed from its render plans
(:mod:`amflow.data.sources.synthmotion`)."""
from __future__ import annotations

from pathlib import Path

from amflow import paths
from amflow.data.sources.synthmotion import write_ground_truth
from amflow.params import Params


def ground_truth(params: Params, dataset: str, data_dir: Path, key: str) -> Path:
    return write_ground_truth(params, dataset, paths.dataset_dir(data_dir, key), paths.ground_truth_file(data_dir, key))
