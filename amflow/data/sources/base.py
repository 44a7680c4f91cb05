"""The contract every dataset source follows, and the one writer of a prepared dataset folder.

A source (one ``source:`` value of a params file) finds, downloads or generates the videos and returns
a :class:`PreparedDataset`: the classes, one table per split, the listed videos it could not find and
its own facts for ``dataset.json``. :func:`write_dataset` then writes, the same way for every source,
``missing.csv``, ``classes.txt``, ``annotations/{train,val,test}.csv`` and, last, ``dataset.json``
(the common annotation format, :mod:`amflow.data.annotations`).

Split policy, the same for every real dataset (a generator makes exactly the splits its spec asks for):

- ``val``: the dataset's own val split, unless ``val_fraction`` is set or the source provides none
  (Smarthome CS, a list without a val file, K400/SSv2 whose official val is the test split); then a
  seeded, class-stratified holdout of train (fraction ``val_fraction``, default 0.1), removed from train.
- ``test``: chosen by the source module (K400 and SSv2 default to the official validation set, as in
  published results; their val is then a holdout of train).
- A video may appear only once across all splits (the frame cache keys videos by path): a duplicate is
  an error naming the video and both splits. Paths are compared resolved (``os.path.realpath``), so
  ``clips/../clips/a.mp4`` or a symbolic link to a test video is the test video.
- ``max_videos``: a seeded random subset per split, in the original order (quick runs).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from amflow import io as aio
from amflow.data import annotations
from amflow.errors import AmflowError
from amflow.params import SPLITS, DatasetBase, source_name

DEFAULT_VAL_FRACTION = 0.1
MISSING_COLUMNS = ("split", "video", "reason")


@dataclass
class PreparedDataset:
    """What a source found: the class list, one table per split, and what is missing."""

    classes: list[str]
    splits: dict[str, pd.DataFrame]  # columns video, label, label_name (+ extras)
    missing: list[dict] = field(default_factory=list)  # rows with keys split, video, reason
    info: dict = field(default_factory=dict)  # source-specific facts for dataset.json


def _never_done(spec: DatasetBase, out_dir: Path) -> Optional[dict]:
    return None


@dataclass(frozen=True)
class Source:
    """One ``source:`` value: its schema and how its datasets are built.

    ``build(spec, dataset_name, out_dir)`` returns the :class:`PreparedDataset`; besides the videos
    (and a generator's own ground truth) it writes nothing: :func:`write_dataset` writes the rest.
    ``existing(spec, out_dir)`` returns the content of ``dataset.json`` when ``out_dir`` already holds
    the dataset ``spec`` asks for (nothing is then rebuilt), else None.
    A ``generator`` makes exactly the splits its spec asks for (sizes, empty ones included), so the
    split policy of real datasets does not apply, and its ``info`` is the whole of ``dataset.json``.
    """

    schema: type[DatasetBase]  # its datasets' settings, registered in amflow.params.SOURCE_SCHEMAS
    build: Callable[[DatasetBase, str, Path], PreparedDataset]
    existing: Callable[[DatasetBase, Path], Optional[dict]] = _never_done
    generator: bool = False

    @property
    def name(self) -> str:
        """The ``source:`` value."""
        return source_name(self.schema)


def video_ref(path: Path, out_dir: Path) -> str:
    """How an annotation names a video: relative to the dataset folder if inside it, else absolute."""
    path = Path(path).absolute()
    try:
        return path.relative_to(Path(out_dir).absolute()).as_posix()
    except ValueError:
        return str(path)


def split_table(rows: list[dict], classes: list[str], extras: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows with ``video`` and ``label_name`` (+ extras) -> the annotation table (label = class index)."""
    index = {name: i for i, name in enumerate(classes)}
    cols = ["video", "label", "label_name", *extras]
    table = pd.DataFrame([{**r, "label": index[r["label_name"]]} for r in rows], columns=cols)
    table["label"] = table["label"].astype(int)
    return table


def holdout_val(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move a class-stratified ``fraction`` of ``train`` to val, deterministically from ``seed``.

    round(N * fraction) videos in all, shared among classes in proportion to their size (largest
    remainders get the rounding), and every class keeps at least one training video. Within a class
    the videos are sorted by path and then shuffled by a seeded generator, so the result does not depend
    on the order in which files were listed.
    """
    groups = {label: sorted(g.index, key=lambda i: str(train.at[i, "video"]))
              for label, g in train.groupby("label")}
    labels = sorted(groups)
    quota = {c: len(groups[c]) * fraction for c in labels}
    take = {c: min(int(quota[c]), len(groups[c]) - 1) for c in labels}
    short = int(round(len(train) * fraction)) - sum(take.values())
    for c in sorted(labels, key=lambda c: (-(quota[c] - int(quota[c])), c)):
        if short <= 0:
            break
        if take[c] < len(groups[c]) - 1:
            take[c] += 1
            short -= 1
    rng = random.Random(f"val-holdout:{seed}")
    val_idx: list = []
    for c in labels:
        ids = groups[c]
        rng.shuffle(ids)
        val_idx.extend(ids[:take[c]])
    chosen = train.index.isin(val_idx)
    return train[~chosen].reset_index(drop=True), train[chosen].reset_index(drop=True)


def subsample(table: pd.DataFrame, n: int, seed: int, split: str) -> pd.DataFrame:
    """A seeded random subset of ``n`` rows (all if fewer), kept in the original order."""
    if len(table) <= n:
        return table
    rng = random.Random(f"max-videos:{seed}:{split}")
    keep = sorted(rng.sample(range(len(table)), n))
    return table.iloc[keep].reset_index(drop=True)


def check_unique(splits: dict[str, pd.DataFrame], out_dir: Path) -> None:
    """Every video once across all splits (the frame cache and fair evaluation both need it), compared by
    the file each path leads to: a path through ``..`` or a symbolic link names the file it resolves to."""
    seen: dict[str, tuple[str, str]] = {}
    for split in (s for s in SPLITS if s in splits):
        for video in splits[split]["video"]:
            real = os.path.realpath(Path(out_dir) / video)  # an absolute reference stays itself
            if real in seen:
                first_split, first = seen[real]
                where = f"twice in {split}" if first_split == split else f"in {first_split} and in {split}"
                alias = "" if first == video else f" (as {first} and as {video}, both {real})"
                raise AmflowError(f"video {video} is listed {where}{alias}; each video may appear once across "
                                  f"train, val and test. Fix the annotation lists (a val list is optional: "
                                  f"without it, val is held out from train)")
            seen[real] = (split, video)


def split_policy(result: PreparedDataset, spec: DatasetBase, out_dir: Path) -> tuple[dict[str, pd.DataFrame], str]:
    """The real-dataset split policy (module docstring): the final splits and how val was made."""
    splits = dict(result.splits)
    if "train" not in splits or "test" not in splits:
        raise AssertionError(f"source module for {spec.source} returned splits {sorted(splits)}")
    check_unique(splits, out_dir)  # on the splits as listed, before val is held out of train
    fraction = spec.val_fraction
    if fraction is None and "val" not in splits:
        fraction = DEFAULT_VAL_FRACTION
    if fraction is not None:
        splits["train"], splits["val"] = holdout_val(splits["train"], fraction, spec.split_seed)
        val_policy = f"class-stratified holdout of {fraction:g} of train (split_seed {spec.split_seed})"
    else:
        val_policy = "the dataset's own val split"
    if spec.max_videos:
        for split, n in spec.max_videos.items():
            splits[split] = subsample(splits[split], n, spec.split_seed, split)
    return splits, val_policy


def write_dataset(source: Source, spec: DatasetBase, dataset_name: str, out_dir: Path) -> dict:
    """Build dataset ``dataset_name`` with ``source`` into ``out_dir``; ``dataset.json`` last. Returns its content."""
    out_dir = Path(out_dir)
    done = source.existing(spec, out_dir)
    if done is not None:
        return done
    # dataset.json means "complete": remove a stale one before anything else is rewritten.
    (out_dir / "dataset.json").unlink(missing_ok=True)
    result = source.build(spec, dataset_name, out_dir)
    if source.generator:  # exactly the splits its spec asks for: no holdout, no subsample
        splits = dict(result.splits)
    else:
        splits, val_policy = split_policy(result, spec, out_dir)

    missing = pd.DataFrame(result.missing, columns=list(MISSING_COLUMNS))
    missing_per_split = {s: int((missing["split"] == s).sum()) for s in SPLITS}
    # Written first, so that it is there to read when a split turns out empty.
    with aio.atomic_path(out_dir / "missing.csv") as tmp:
        missing.to_csv(tmp, index=False)
    for split in SPLITS:
        table = splits[split]
        if len(table) == 0 and not source.generator:  # a generator's empty split was asked for
            n_missing = missing_per_split[split]
            why = (f"{n_missing} listed video(s) are missing on disk, see {out_dir / 'missing.csv'}" if n_missing
                   else "too few videos to split, or none of this split's kind")
            raise AmflowError(f"dataset '{dataset_name}': split '{split}' has no videos ({why}). "
                              f"Check the dataset's files under {getattr(spec, 'root', None) or out_dir} and its params.")
        bad = table[(table["label"] < 0) | (table["label"] >= len(result.classes))]
        if len(bad):
            raise AssertionError(f"{spec.source}: labels out of range in split {split}: {bad.head()}")

    annotations.write_classes(out_dir, result.classes)
    for split in SPLITS:
        annotations.write_annotations(out_dir, split, splits[split])
    if source.generator:
        info = result.info
    else:
        info = {
            "name": dataset_name,
            "source": spec.source,
            "num_classes": len(result.classes),
            "counts": {s: int(len(splits[s])) for s in SPLITS},
            "missing": missing_per_split,
            "missing_file": "missing.csv",
            "val_split": val_policy,
            "max_videos": dict(spec.max_videos) if spec.max_videos else None,
            "split_seed": spec.split_seed,
            **result.info,
        }
    if len(missing):
        print(f"{dataset_name}: {len(missing)} listed video(s) are missing and were left out "
              f"(per split: {missing_per_split}); see {out_dir / 'missing.csv'}")
    annotations.write_dataset_info(out_dir, info)
    return info
