"""Any dataset given as lists of videos (``source: list``).

Per split, ``annotations: {train: ..., val: ..., test: ...}`` names a file, relative to ``root``:

- a ``.txt`` in the MMAction2 style: one ``<path> <label>`` per line (``#`` starts a comment); the label
  is the last whitespace-separated field, so paths may contain spaces but class *names* in a txt may
  not (use a CSV for those);
- a ``.csv`` with columns ``path,label``.

A label is a class index (int) or a class name. Classes come from ``root/classes.txt`` (one name per
line, line number = index) if present; otherwise integer labels keep their value as index (names
"0", "1", ... up to the largest), and names are sorted alphabetically over all splits. Paths are
relative to ``root`` (or absolute). Listed videos that do not exist are reported in ``missing.csv``
and left out. ``train`` and ``test`` are required; without ``val``, val is held out from train.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from amflow import paths
from amflow.data.sources.base import PreparedDataset, Source, split_table, video_ref
from amflow.errors import AmflowError
from amflow.params import ListDataset

INT_RE = re.compile(r"^-?\d+$")


def read_list(path: Path) -> list[tuple[str, str, str]]:
    """``[(video path, raw label, where)]`` from a txt or csv list; ``where`` is ``file:line`` for errors."""
    if not path.is_file():
        raise AmflowError(f"{path}: annotation list not found; fix 'annotations' (paths are relative to 'root')")
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not {"path", "label"} <= set(table.columns):
            raise AmflowError(f"{path}: a CSV list needs the columns path,label (found {list(table.columns)})")
        out = []
        for i, (p, lab) in enumerate(zip(table["path"], table["label"])):
            if not p.strip() or not lab.strip():
                raise AmflowError(f"{path}:{i + 2}: empty path or label")
            out.append((p.strip(), lab.strip(), f"{path}:{i + 2}"))
        return out
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise AmflowError(f"{path}:{n}: expected '<path> <label>', got {line!r:.100}")
        out.append((parts[0], parts[1], f"{path}:{n}"))
    return out


def resolve_classes(root: Path, lists: dict[str, list[tuple[str, str, str]]]) -> tuple[list[str], dict]:
    """Class names and a raw-label -> class-name map, following the rules in the module docstring."""
    labels = [(lab, where) for rows in lists.values() for _, lab, where in rows]
    is_int = [bool(INT_RE.match(lab)) for lab, _ in labels]
    classes_file = root / paths.LIST_CLASSES
    if classes_file.is_file():
        classes = [ln.strip() for ln in classes_file.read_text().splitlines() if ln.strip()]
        if len(set(classes)) != len(classes):
            raise AmflowError(f"{classes_file}: duplicate class names")
        names = set(classes)
        mapping = {}
        for (lab, where), as_int in zip(labels, is_int):
            if lab in names:  # a name wins: classes.txt may name classes "1", "2"...
                mapping[lab] = lab
            elif as_int and 0 <= int(lab) < len(classes):
                mapping[lab] = classes[int(lab)]
            else:
                raise AmflowError(f"{where}: label {lab!r} is neither a class in {classes_file} nor an index "
                                  f"0..{len(classes) - 1}")
        return classes, mapping
    if all(is_int):
        for lab, where in labels:
            if int(lab) < 0:
                raise AmflowError(f"{where}: negative label {lab}")
        top = max(int(lab) for lab, _ in labels)
        classes = [str(i) for i in range(top + 1)]
        return classes, {lab: str(int(lab)) for lab, _ in labels}
    if not any(is_int):
        classes = sorted({lab for lab, _ in labels})
        return classes, {c: c for c in classes}
    first_int = next(w for (_, w), i in zip(labels, is_int) if i)
    first_name = next(w for (_, w), i in zip(labels, is_int) if not i)
    raise AmflowError(f"the lists mix class indices (e.g. {first_int}) and class names (e.g. {first_name}); "
                      f"use one kind, or add {classes_file} (one class name per line) to map both")


def build(spec: ListDataset, dataset_name: str, out_dir: Path) -> PreparedDataset:
    root = Path(spec.root).absolute()
    if not root.is_dir():
        raise AmflowError(f"{root}: the folder named by 'root' does not exist; set 'root' to the folder your "
                          f"annotation lists and video paths are relative to")
    given = dict(spec.annotations or {})
    lacking = [s for s in ("train", "test") if s not in given]
    if lacking:
        raise AmflowError(f"source 'list' needs annotation lists for train and test; missing: {lacking}. "
                          f"(val is optional: without it, val_fraction of train is held out, default 0.1.)")
    lists = {s: read_list(p) for s, p in paths.annotation_lists(spec).items()}
    if not any(lists.values()):
        raise AmflowError(f"the annotation lists under {root} are all empty")
    classes, mapping = resolve_classes(root, lists)
    splits, missing = {}, []
    for split, rows in lists.items():
        kept = []
        for rel, lab, where in rows:
            path = Path(rel) if Path(rel).is_absolute() else root / rel
            if path.is_file():
                kept.append({"video": video_ref(path, out_dir), "label_name": mapping[lab]})
            else:
                missing.append({"split": split, "video": str(path), "reason": f"file not found (listed at {where})"})
        splits[split] = split_table(kept, classes)
    info = {"root": str(root), "annotation_files": {s: str(f) for s, f in given.items()},
            "classes_from": paths.LIST_CLASSES if (root / paths.LIST_CLASSES).is_file() else "labels in the lists",
            "test_from": "the test list"}
    return PreparedDataset(classes=classes, splits=splits, missing=missing, info=info)


SOURCE = Source(ListDataset, build)
