"""Where each stage reads and writes: the one place that knows the layout of data/ and results/."""
from __future__ import annotations

from pathlib import Path


def dataset_dir(data_dir: Path, dataset: str) -> Path:
    """Videos (or links to them), classes.txt, annotations/, dataset.json."""
    return Path(data_dir) / dataset


def frames_dir(data_dir: Path, dataset: str) -> Path:
    """The sharded frame cache. Kept out of dataset_dir so DVC can track both without overlap."""
    return Path(data_dir) / "frames" / dataset


def motion_file(data_dir: Path, dataset: str) -> Path:
    """Per-frame global-motion transforms written by the camera-motion stage."""
    return Path(data_dir) / "motion" / f"{dataset}.npz"


def ground_truth_file(data_dir: Path, dataset: str) -> Path:
    """SynthMotion's motion ground truth (actor coverage, true camera motion), recomputed from the plans."""
    return Path(data_dir) / "groundtruth" / f"{dataset}.npz"


def localisation_dir(results_dir: Path, dataset: str) -> Path:
    """localisation.csv, localisation.png (how well AM flow finds the actor, without training)."""
    return Path(results_dir) / dataset / "localisation"


def pretrain_images_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "pretrain_images"


def backbone_dir(results_dir: Path) -> Path:
    return Path(results_dir) / "backbone"


def backbone_file(results_dir: Path) -> Path:
    return backbone_dir(results_dir) / "backbone.safetensors"


def camera_dir(results_dir: Path, dataset: str) -> Path:
    """camera_motion.json and camera_motion.png."""
    return Path(results_dir) / dataset


def run_dir(results_dir: Path, dataset: str, method: str, seed: int) -> Path:
    return Path(results_dir) / dataset / method / f"seed{seed}"


def ablation_run_dir(results_dir: Path, axis: str, value: str, dataset: str, seed: int) -> Path:
    return Path(results_dir) / "ablations" / axis / str(value) / dataset / f"seed{seed}"
