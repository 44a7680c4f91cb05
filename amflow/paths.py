"""Where each stage reads and writes: the one place that knows the layout of data/ and results/.

Two namespaces keep runs of different params files apart:

- ``results/<name>/`` (:func:`results_root`): everything a params file's runs produce, keyed by the
  file's ``name``; the CLI's ``--results-dir`` is the root above it.
- ``data/<dataset>-<spec>/`` (:func:`data_key`): a dataset's files and frame cache, keyed by a short hash
  of the dataset's spec (and, for a dataset given as lists, of the lists' contents: :func:`list_files`),
  so params files with equal specs share the frames and different specs, or edited lists, under one
  name never meet. The pretraining images are keyed by their spec the same way.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from amflow import io
from amflow.errors import AmflowError

if TYPE_CHECKING:  # typing only: amflow.params imports the dataset name rules from here (a cycle at run time)
    from amflow.params import Params

SPEC_HASH_CHARS = 8
# The regular expression of spec_hash's output (a Snakemake wildcard constraint).
SPEC_HASH_RE = rf"[0-9a-f]{{{SPEC_HASH_CHARS}}}"

# A dataset name (and a params file's name) becomes a folder name under data/ and results/. The
# Snakemake rules use the same pattern as their `dataset` wildcard constraint.
DATASET_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_\-]*"
# The folders of a params file's results beside its dataset folders (results/<name>/<dataset>/): a
# dataset of one of these names would be written over them (compared case-insensitively, for
# case-insensitive file systems). Under data/ a dataset's folders carry its spec hash, and meet none.
BACKBONE_DIR, ABLATIONS_DIR, SWEEPS_DIR, PLOTS_DIR = "backbone", "ablations", "sweeps", "plots"
RESERVED_NAMES = (BACKBONE_DIR, ABLATIONS_DIR, SWEEPS_DIR, PLOTS_DIR)
# The rules build their output patterns with the functions below, passing the wildcard itself.
_WILDCARD = "{dataset}"

# A dataset given as lists (source: list): its class list, in the folder its ``root`` names.
LIST_CLASSES = "classes.txt"

# File names inside the folders below (the stages, the rules and the tests take them from here).
# A dataset folder (dataset_dir) and a frame cache (frames_dir):
DATASET_JSON = "dataset.json"
FRAMES_SUMMARY = "summary.json"              # the frame cache's last-written file
PRETRAIN_IMAGES_INFO = "info.json"
# A camera folder (camera_dir):
CAMERA_JSON = "camera_motion.json"           # written last: marks the camera-motion stage complete
CAMERA_PNG = "camera_motion.png"
MOTION_NPZ = "motion.npz"
# A localisation folder (localisation_dir):
LOCALISATION_CSV = "localisation.csv"
LOCALISATION_PNG = "localisation.png"
LABEL_PROBE_CSV = "label_probe.csv"
# The backbone folder (backbone_dir):
BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_METRICS = "metrics.json"
# A run folder (run_dir, ablation_run_dir): training writes the first five, evaluation the rest.
PARAMS_YAML = "params.yaml"
TRAIN_STATE = "train_state.pt"               # every epoch: what an interrupted training resumes from
CHECKPOINT = "checkpoint.pt"                 # once training is complete: its final state (the model)
TRAIN_LOG = "train_log.csv"
TRAIN_JSON = "train.json"                    # written once training is complete
METRICS_JSON = "metrics.json"
SCORES_JSON = "scores.json"
PER_CLASS_CSV = "per_class.csv"
PREDICTIONS_CSV = "predictions.csv"
CONFUSION_PNG = "confusion.png"
CURVES_PNG = "curves.png"
EVALUATION_FILES = (SCORES_JSON, PER_CLASS_CSV, PREDICTIONS_CSV, CONFUSION_PNG, CURVES_PNG, METRICS_JSON)  # last: marks it complete
# `amflow train --evaluate` evaluates the run in the training's process, into this folder of the run
# folder; `amflow evaluate` takes that evaluation when it was made from the same checkpoint with the same
# params (amflow.evaluate.reuse), and evaluates again otherwise.
TRAINING_EVALUATION_DIR = "evaluated_in_training"
# The plots folder (plots_dir):
HEATMAPS_PNG = "amflow_heatmaps.png"
HEATMAPS_GIF = "amflow_heatmaps.gif"
HEATMAPS_JSON = "amflow_heatmaps.json"
CONVERGENCE_PNG = "convergence.png"
ACCURACY_PNG = "accuracy.png"
# A params file's results folder (results_root):
TABLE1_CSV = "table1.csv"
TABLE1_FIRST_SEED_CSV = "table1_first_seed.csv"  # table 1 of the first seed alone: the run's first answer
ABLATIONS_CSV = "ablations.csv"
FAIR_TEST_CSV = "fair_test.csv"
REPORT_MD = "report.md"
# A sweep folder (sweep_dir):
SWEEP_BEST = "best.yaml"
SWEEP_SUMMARY = "summary.json"
SWEEP_STUDY_DB = "study.db"


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
    problem = None if name == _WILDCARD else dataset_name_problem(name)
    if problem:
        raise AmflowError(problem)
    return name


def spec_hash(spec) -> str:
    """Short hash of a pydantic spec's values (key order does not matter)."""
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:SPEC_HASH_CHARS]


def data_key(name: str, spec_digest: str) -> str:
    """Folder name of a dataset (or of the pretraining images) under data/: ``<name>-<spec hash>``."""
    return f"{name}-{spec_digest}"


def dataset_of_key(key: str) -> str:
    """The dataset name in a data folder's name (``<name>-<spec hash>``; a plain name is its own)."""
    m = re.fullmatch(rf"(.+)-{SPEC_HASH_RE}", key)
    return m.group(1) if m else key


def annotation_lists(spec) -> dict[str, Path]:
    """A list dataset's list file per split, as its spec names them (relative to ``root``, or absolute)."""
    root = Path(spec.root).absolute()
    return {split: p if (p := Path(name)).is_absolute() else root / p
            for split, name in (spec.annotations or {}).items()}


def list_files(spec) -> list[Path]:
    """The files whose contents define a dataset given as lists (``source: list``): each split's list and
    ``root/classes.txt`` (which may be absent); none for any other source."""
    if spec.source != "list" or spec.root is None:
        return []
    return [*annotation_lists(spec).values(), Path(spec.root).absolute() / LIST_CLASSES]


def lists_digest(spec) -> str | None:
    """Digest of the contents of :func:`list_files` (an absent file counts as absent), or None when the
    dataset is not given as lists."""
    files = list_files(spec)
    if not files:
        return None
    contents = {str(f): io.file_digest(f) if f.is_file() else None for f in files}
    return hashlib.sha256(json.dumps(contents, sort_keys=True).encode()).hexdigest()


def dataset_key(params: "Params", dataset: str) -> str:
    """``<dataset>-<hash>``: the hash of the dataset's spec and, for a list dataset, of its lists' contents
    (editing a list makes another dataset, with its own folders)."""
    spec = params.dataset(check_dataset_name(dataset))
    digest = lists_digest(spec)
    if digest is None:
        return data_key(dataset, spec_hash(spec))
    text = json.dumps([spec.model_dump(mode="json"), digest], sort_keys=True, separators=(",", ":"))
    return data_key(dataset, hashlib.sha256(text.encode()).hexdigest()[:SPEC_HASH_CHARS])


def results_root(results_dir: Path, name: str) -> Path:
    """The namespace of one params file (its ``name``) under the results root."""
    return Path(results_dir) / name


def logs_root(logs_dir: Path, name: str) -> Path:
    """A params file's Snakemake logs: ``logs/<name>/<rule>/...``."""
    return Path(logs_dir) / name


def benchmarks_root(benchmarks_dir: Path, name: str) -> Path:
    """A params file's Snakemake benchmark files (time and memory per job): ``benchmarks/<name>/<rule>/...``,
    the same layout as its logs."""
    return Path(benchmarks_dir) / name


PIPELINES_DIR = Path("pipelines")
DVC_YAML = "dvc.yaml"
# The embedded default's name (params/default.yaml): its DVC pipeline is the repository's own dvc.yaml.
DEFAULT_NAME = "default"


def dvc_pipeline_file(name: str) -> Path:
    """The DVC pipeline of one params file (``amflow dvc-yaml``), its ``dvc.lock`` beside it: the
    repository's ``dvc.yaml`` for the embedded default (``dvc repro`` and ``dvc dag`` need no target),
    ``pipelines/<name>/dvc.yaml`` for any other, so a second params file never rewrites the default's."""
    return Path(DVC_YAML) if name == DEFAULT_NAME else PIPELINES_DIR / name / DVC_YAML


# Where the workflow writes the params its jobs read (amflow.params_io.write_resolved): Snakemake's own
# working folder, not a results folder (the file is a means, not a result).
RESOLVED_PARAMS_DIR = Path(".snakemake") / "amflow_params"
# Where the workflow writes each command's code stamp (amflow.import_graph.code_stamp), for the same reason.
CODE_STAMPS_DIR = Path(".snakemake") / "amflow_code"


def dataset_dir(data_dir: Path, key: str) -> Path:
    """Videos (or links to them), classes.txt, annotations/, dataset.json. ``key``: :func:`dataset_key`."""
    return Path(data_dir) / key


def frames_dir(data_dir: Path, key: str) -> Path:
    """The sharded frame cache. Kept out of dataset_dir so DVC can track both without overlap."""
    return Path(data_dir) / "frames" / key


def pretrain_images_dir(data_dir: Path, params: "Params") -> Path:
    return Path(data_dir) / data_key("pretrain_images", spec_hash(params.pretrain_images))


def camera_dir(results_dir: Path, dataset: str) -> Path:
    """camera_motion.json, camera_motion.png and motion.npz of one dataset."""
    return Path(results_dir) / check_dataset_name(dataset)


def motion_file(results_dir: Path, dataset: str) -> Path:
    """Per-frame global-motion transforms written by the camera-motion stage. In the results namespace,
    not under data/: they also depend on the params file's camera_motion settings."""
    return camera_dir(results_dir, dataset) / MOTION_NPZ


def ground_truth_file(data_dir: Path, key: str) -> Path:
    """SynthMotion's motion ground truth (actor coverage, true camera motion), recomputed from the render
    plans; keyed like the dataset (``key``: :func:`dataset_key`)."""
    return Path(data_dir) / "groundtruth" / f"{key}.npz"


def localisation_dir(results_dir: Path, dataset: str) -> Path:
    """localisation.csv, localisation.png (how well AM flow finds the actor, without training)."""
    return camera_dir(results_dir, dataset) / "localisation"


def backbone_dir(results_dir: Path) -> Path:
    return Path(results_dir) / BACKBONE_DIR


def backbone_file(results_dir: Path) -> Path:
    return backbone_dir(results_dir) / BACKBONE_WEIGHTS


def run_dir(results_dir: Path, dataset: str, method: str, seed: int) -> Path:
    check_dataset_name(dataset)
    return Path(results_dir) / dataset / method / f"seed{seed}"


def ablation_run_dir(results_dir: Path, axis: str, value: str, dataset: str, seed: int) -> Path:
    check_dataset_name(dataset)
    return Path(results_dir) / ABLATIONS_DIR / axis / str(value) / dataset / f"seed{seed}"



def ablation_table_file(results_dir: Path, axis: str) -> Path:
    """The ablation table of one axis (``ablations.csv`` holds every axis)."""
    return Path(results_dir) / f"ablation_{axis}.csv"


def sweep_dir(results_dir: Path, dataset: str, method: str) -> Path:
    """An Optuna sweep's study, trials and best params."""
    return Path(results_dir) / SWEEPS_DIR / dataset / method


def sweep_trial_dir(sweep_folder: Path, number: int) -> Path:
    """The run folder of one sweep trial (a training run like any other)."""
    return Path(sweep_folder) / "trials" / f"trial_{number:04d}"


def plots_dir(results_dir: Path) -> Path:
    """The figures of a params file's results: heat maps, convergence and accuracy plots."""
    return Path(results_dir) / PLOTS_DIR
