"""Toyota Smarthome (trimmed clips): the user's own files, split by the protocols' file-name rules.

Clips are named ``Activity[.Sub]_pXX_rXX_vXX_cXX.mp4`` (p: subject, r: repetition, v: view sequence,
c: camera), e.g. ``Cook.Cleandishes_p02_r00_v02_c03.mp4``; the class is the whole ``Activity[.Sub]``.
Any folder layout under ``root`` works (the official archive unpacks to ``mp4/``).

Protocols (as coded in public split scripts):

- ``cs`` (cross-subject): train subjects {3,4,6,7,9,12,13,15,17,19,25}, test the other subjects. There
  is no official val split: ``prepare`` holds out a seeded, class-stratified 10% of train
  (``val_fraction``). Those val clips share subjects with train, so val accuracy overestimates test
  accuracy; use val for model selection and convergence curves only.
- ``cv1`` (cross-view): train camera 1, val camera 5, test camera 2.
- ``cv2``: train cameras {1,3,4,6,7}, val camera 5, test camera 2.

Classes: the activities present in the train split, sorted alphabetically; val/test clips of other
classes are dropped and counted. The CV protocols are said to use 19 classes (UNVERIFIED: check
``num_classes`` in dataset.json against the official split files). Report mean class accuracy.
"""
from __future__ import annotations

import re
from pathlib import Path

from amflow.data.sources.base import PreparedDataset, Source, split_table, video_ref
from amflow.errors import AmflowError
from amflow.params import SmarthomeDataset

REQUEST_PAGE = "https://project.inria.fr/toyotasmarthome/"
NAME_RE = re.compile(r"^(?P<activity>.+)_p(?P<subject>\d+)_r(?P<rep>\d+)_v(?P<view>\d+)_c(?P<camera>\d+)\.mp4$")
CS_TRAIN_SUBJECTS = frozenset({3, 4, 6, 7, 9, 12, 13, 15, 17, 19, 25})
CV_CAMERAS = {
    "cv1": {"train": {1}, "val": {5}, "test": {2}},
    "cv2": {"train": {1, 3, 4, 6, 7}, "val": {5}, "test": {2}},
}


def parse_name(name: str) -> dict | None:
    """``Cook.Cleandishes_p02_r00_v02_c03.mp4`` -> activity, subject, repetition, view, camera; else None."""
    m = NAME_RE.match(name)
    if not m:
        return None
    return {"activity": m["activity"], "subject": int(m["subject"]), "repetition": int(m["rep"]),
            "view": int(m["view"]), "camera": int(m["camera"])}


def protocol_split(protocol: str, clip: dict) -> str | None:
    """The split a parsed clip belongs to under ``protocol`` (None: not used by it)."""
    if protocol == "cs":
        return "train" if clip["subject"] in CS_TRAIN_SUBJECTS else "test"
    for split, cams in CV_CAMERAS[protocol].items():
        if clip["camera"] in cams:
            return split
    return None


def build(spec: SmarthomeDataset, dataset_name: str, out_dir: Path) -> PreparedDataset:
    root = Path(spec.root).absolute()
    files = sorted(root.rglob("*.mp4")) if root.is_dir() else []
    if not files:
        where = "does not exist" if not root.is_dir() else "holds no .mp4 clips"
        raise AmflowError(
            f"Toyota Smarthome: {root} {where}. Request the trimmed clips (mp4) at {REQUEST_PAGE}, unpack them "
            f"under {root} (any sub-folder, names like Cook.Cleandishes_p02_r00_v02_c03.mp4), or set 'root' "
            f"in the params file to where they are; then run `amflow prepare` again.")
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    unparsed, unused = [], 0
    for f in files:
        clip = parse_name(f.name)
        if clip is None:
            unparsed.append(str(f))
            continue
        split = protocol_split(spec.protocol, clip)
        if split is None:
            unused += 1
            continue
        by_split[split].append({"video": video_ref(f, out_dir), "label_name": clip["activity"],
                                "subject": clip["subject"], "camera": clip["camera"]})
    if unparsed:
        print(f"smarthome: {len(unparsed)} .mp4 file(s) do not follow Activity_pXX_rXX_vXX_cXX.mp4 and were "
              f"ignored, e.g. {unparsed[:3]}")
    classes = sorted({r["label_name"] for r in by_split["train"]})
    known = set(classes)
    dropped = {s: sum(r["label_name"] not in known for r in rows) for s, rows in by_split.items()}
    extras = ("subject", "camera")
    splits = {s: split_table([r for r in rows if r["label_name"] in known], classes, extras)
              for s, rows in by_split.items() if s != "val" or spec.protocol != "cs"}
    info = {
        "root": str(root),
        "protocol": spec.protocol,
        "clips_found": len(files),
        "unparsed_names": len(unparsed),
        "unparsed_examples": unparsed[:10],
        "clips_outside_protocol": unused,
        "dropped_class_not_in_train": {s: n for s, n in dropped.items() if n},
        "metric": "mean class accuracy",
    }
    if spec.protocol in CV_CAMERAS:
        info["note"] = ("CV protocols: classes are those present in the train cameras; the paper-era statement "
                        "of 19 classes is unverified, compare num_classes with the official split files")
    return PreparedDataset(classes=classes, splits=splits, missing=[], info=info)


SOURCE = Source(SmarthomeDataset, build)
