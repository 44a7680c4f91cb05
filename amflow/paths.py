"""Where each stage reads and writes: the one place that knows the layout of data/ and results/."""
from __future__ import annotations

import re
from pathlib import Path

from amflow.errors import AmflowError

# A dataset name becomes a folder name under data/, data/frames/ and results/. The Snakemake rules
# use the same pattern as their `dataset` wildcard constraint.
DATASET_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_\-]*"
# Folders of the layout itself: a dataset of one of these names would be written over them
# (compared case-insensitively, for case-insensitive file systems).
RESERVED_NAMES = ("frames", "motion", "pretrain_images", "backbone", "ablations", "sweeps", "plots")


def dataset_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a dataset name, or None if it can."""
    if not re.fullmatch(DATASET_NAME_PATTERN, name):
        return (f"dataset name {name!r} is not allowed: use letters, digits, '_' and '-', starting with a "
                f"letter or digit (it becomes a folder name)")
    if name.lower() in RESERVED_NAMES:
        return (f"dataset name {name!r} is reserved for the layout's own folders "
                f"({', '.join(RESERVED_NAMES)}); rename the dataset")
    return None


def check_dataset_name(name: str) -> str:
    problem = dataset_name_problem(name)
    if problem:
        raise AmflowError(problem)
    return name


def dataset_dir(data_dir: Path, dataset: str) -> Path:
    """Videos (or links to them), classes.txt, annotations/, dataset.json."""
    check_dataset_name(dataset)
    return Path(data_dir) / dataset


def frames_dir(data_dir: Path, dataset: str) -> Path:
    """The sharded frame cache. Kept out of dataset_dir so DVC can track both without overlap."""
    check_dataset_name(dataset)
    return Path(data_dir) / "frames" / dataset


def motion_file(data_dir: Path, dataset: str) -> Path:
    """Per-frame global-motion transforms written by the camera-motion stage."""
    check_dataset_name(dataset)
    return Path(data_dir) / "motion" / f"{dataset}.npz"


def pretrain_images_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "pretrain_images"


def backbone_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "backbone"


def backbone_file(results_dir: Path) -> Path:
    return backbone_dir(results_dir) / "backbone.safetensors"


def camera_dir(results_dir: Path, dataset: str) -> Path:
    """camera_motion.json and camera_motion.png."""
    check_dataset_name(dataset)
    return Path(results_dir) / dataset


def run_dir(results_dir: Path, dataset: str, method: str, seed: int) -> Path:
    check_dataset_name(dataset)
    return Path(results_dir) / dataset / method / f"seed{seed}"


def ablation_run_dir(results_dir: Path, axis: str, value: str, dataset: str, seed: int) -> Path:
    check_dataset_name(dataset)
    return Path(results_dir) / "ablations" / axis / str(value) / dataset / f"seed{seed}"
