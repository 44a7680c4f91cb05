"""The one annotation format every dataset is converted to.

A prepared dataset lives in ``data/<dataset>-<spec>/`` (:mod:`amflow.paths`):

- ``classes.txt``: one class name per line; the line number (from 0) is the label index.
- ``annotations/<split>.csv``: columns ``video`` (path relative to that folder or absolute),
  ``label`` (int index) and ``label_name``, plus optional dataset extras (``subject``, ``camera``,
  ``youtube_id``...), one row per video.
- ``dataset.json``: how it was made (source, counts per split); written last, so its presence
  means the dataset is complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from amflow import io, paths
from amflow.params import SPLITS

REQUIRED_COLUMNS = ("video", "label", "label_name")


def classes_path(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / "classes.txt"


def annotations_path(dataset_dir: Path, split: str) -> Path:
    return Path(dataset_dir) / "annotations" / f"{split}.csv"


def write_classes(dataset_dir: Path, names: Iterable[str]) -> list[str]:
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{classes_path(dataset_dir)}: duplicate class names")
    io.write_text(classes_path(dataset_dir), "".join(f"{n}\n" for n in names))
    return names


def read_classes(dataset_dir: Path) -> list[str]:
    path = classes_path(dataset_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: class index not found; run `amflow prepare` for this dataset first")
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


def write_annotations(dataset_dir: Path, split: str, table: pd.DataFrame) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (expected one of {SPLITS})")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"annotations for split '{split}' lack columns {missing}")
    table = table.copy()
    table["label"] = table["label"].astype(int)
    with io.atomic_path(annotations_path(dataset_dir, split)) as tmp:
        table.to_csv(tmp, index=False)


def read_annotations(dataset_dir: Path, split: str) -> pd.DataFrame:
    path = annotations_path(dataset_dir, split)
    if not path.exists():
        raise FileNotFoundError(f"{path}: annotations not found; run `amflow prepare` for this dataset first")
    table = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (expected {REQUIRED_COLUMNS})")
    return table


def resolve_video(dataset_dir: Path, video: str) -> Path:
    p = Path(video)
    return p if p.is_absolute() else Path(dataset_dir) / p


def write_dataset_info(dataset_dir: Path, info: dict) -> None:
    io.write_json(Path(dataset_dir) / paths.DATASET_JSON, info)
