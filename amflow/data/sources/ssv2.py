"""Something-Something v2: the user's own files (the licence forbids redistribution), verified here.

Expected in ``root`` (either naming is accepted; the first is MMAction2's, the second the layout of the
official label package):

- ``something-something-v2-labels.json``      or ``labels/labels.json``: template -> index (a string);
- ``something-something-v2-train.json``       or ``labels/train.json``: ``[{id, label, template, placeholders}]``;
- ``something-something-v2-validation.json``  or ``labels/validation.json``;
- only with ``test_source: test``: ``something-something-v2-test.json`` / ``labels/test.json`` and
  ``something-something-v2-test-answers.csv`` / ``labels/test-answers.csv`` (``id;label`` lines);
- the videos ``<id>.webm`` in ``20bn-something-something-v2/`` (or ``videos/``), or, if that folder is
  absent, the downloaded parts ``20bn-something-something-v2-00``, ``-01``... (or ``-00.zip``...), which are
  joined and extracted safely (the same as ``cat 20bn-something-something-v2-?? | tar zx``).

Labels: the template with ``[`` and ``]`` removed, looked up in labels.json (MMAction2 and SlowFast do
the same). Splits: published SSv2 numbers are on the validation set, so by default (``test_source: val``)
our test split is the official validation set and our val split a seeded, class-stratified holdout of
train (``val_fraction``), never the test videos. With ``test_source: test``: train -> train,
validation -> val, test (with the answers file) -> test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from amflow.data.safe_tar import extract_stream, open_parts
from amflow.data.sources.base import PreparedDataset, Source, split_table, video_ref
from amflow.errors import AmflowError
from amflow.params import Ssv2Dataset

DOWNLOAD_PAGE = "https://developer.qualcomm.com/software/ai-datasets/something-something"
VIDEO_DIRS = ("20bn-something-something-v2", "videos")
PART_RE = re.compile(r"^20bn-something-something-v2-(\d\d)(\.zip)?$")


def _candidates(root: Path, key: str) -> list[Path]:
    ext = "csv" if key == "test-answers" else "json"
    return [root / f"something-something-v2-{key}.{ext}", root / "labels" / f"{key}.{ext}"]


def find_file(root: Path, key: str) -> Path | None:
    return next((p for p in _candidates(root, key) if p.is_file()), None)


def find_video_dir(root: Path) -> Path | None:
    for name in VIDEO_DIRS:
        d = root / name
        if d.is_dir() and any(e.name.endswith(".webm") for e in os.scandir(d)):
            return d
    return None


def find_parts(root: Path) -> list[Path]:
    """Archive parts in order; plain parts win over zips of the same number."""
    by_number: dict[str, Path] = {}
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        m = PART_RE.match(p.name)
        if m and p.is_file() and (m.group(1) not in by_number or not m.group(2)):
            by_number[m.group(1)] = p
    return [by_number[k] for k in sorted(by_number)]


def check_files(root: Path, test_source: str) -> dict:
    """Find every needed file; raise one AmflowError listing all that are missing and where they go."""
    keys = ["labels", "train", "validation"] + (["test", "test-answers"] if test_source == "test" else [])
    found = {k: find_file(root, k) for k in keys}
    problems = [f"{_candidates(root, k)[0].name} (put it at {_candidates(root, k)[0]} or {_candidates(root, k)[1]})"
                for k, p in found.items() if p is None]
    videos, parts = find_video_dir(root), []
    if videos is None:
        parts = find_parts(root)
        if not parts:
            problems.append(f"the videos: a folder {root / VIDEO_DIRS[0]}/ holding <id>.webm, or the downloaded "
                            f"archive parts 20bn-something-something-v2-00, -01, ... (or their .zip files) in {root}/")
    if problems:
        raise AmflowError(
            f"Something-Something v2 is incomplete in {root} (source: ssv2, root in params). Missing:\n  - "
            + "\n  - ".join(problems)
            + f"\nDownload them (free registration, licence) from {DOWNLOAD_PAGE} and place them as shown; "
              f"then run `amflow prepare` again.")
    return {"files": found, "videos": videos, "parts": parts}


def extract_parts(root: Path, parts: list[Path]) -> Path:
    """Join the archive parts and extract them safely into ``root``; return the videos folder.

    Extraction goes to a temporary folder first and is moved into place at the end, so the videos
    folder only exists once complete (an interrupted run extracts again).
    """
    tmp = root / ".amflow_extract.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    streams = []
    for part in parts:
        if part.suffix == ".zip":
            try:
                with zipfile.ZipFile(part) as zf:
                    # Only read (never written by name), so member names cannot escape anything.
                    streams += [(part, n) for n in sorted(zf.namelist()) if not n.endswith("/")]
            except zipfile.BadZipFile as exc:
                raise AmflowError(f"{part}: not a valid zip file ({exc}); download it again") from None
        else:
            streams.append(part)
    print(f"ssv2: extracting {len(parts)} archive part(s) into {root} (once)")
    with open_parts(streams) as stream:
        extract_stream(stream, tmp, " + ".join(p.name for p in parts))
    inner = tmp / VIDEO_DIRS[0]
    source = inner if inner.is_dir() else tmp
    final = root / VIDEO_DIRS[0]
    if final.exists():
        shutil.rmtree(final)  # only reached when it held no .webm (find_video_dir said so)
    os.replace(source, final)
    shutil.rmtree(tmp, ignore_errors=True)
    if find_video_dir(root) != final:
        raise AmflowError(f"{final}: the archive parts {[p.name for p in parts]} held no .webm videos; check them")
    return final


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AmflowError(f"{path}: not valid JSON ({exc}); download it again") from None


def strip_template(template: str) -> str:
    return template.replace("[", "").replace("]", "")


def read_classes(path: Path) -> list[str]:
    mapping = _load_json(path)
    if not isinstance(mapping, dict):
        raise AmflowError(f"{path}: expected a mapping template -> index")
    by_index = {int(v): k for k, v in mapping.items()}
    if sorted(by_index) != list(range(len(mapping))):
        raise AmflowError(f"{path}: indices are not 0..{len(mapping) - 1} without gaps or repeats")
    return [by_index[i] for i in range(len(mapping))]


def read_split(path: Path, known: set[str]) -> list[tuple[str, str]]:
    """``[(video id, class name)]`` from a train/validation JSON."""
    entries = _load_json(path)
    out = []
    for i, e in enumerate(entries):
        try:
            vid, template = str(e["id"]), e["template"]
        except (KeyError, TypeError):
            raise AmflowError(f"{path}: entry {i} lacks 'id' or 'template': {e!r:.100}") from None
        name = strip_template(template)
        if name not in known:
            raise AmflowError(f"{path}: entry {i} (id {vid}): template {template!r} is not in the labels file, "
                              f"even with [ ] removed; are the files from the same release?")
        out.append((vid, name))
    return out


def read_test(test_json: Path, answers: Path, known: set[str]) -> list[tuple[str, str]]:
    ids = [str(e["id"]) for e in _load_json(test_json)]
    labels = {}
    for n, line in enumerate(answers.read_text().splitlines(), 1):
        if line.strip():
            vid, sep, name = line.partition(";")
            if not sep or strip_template(name.strip()) not in known:
                raise AmflowError(f"{answers}:{n}: expected 'id;class name' with a known class, got {line!r:.100}")
            labels[vid.strip()] = strip_template(name.strip())
    lost = [i for i in ids if i not in labels]
    if lost:
        raise AmflowError(f"{answers}: no answer for {len(lost)} test id(s), e.g. {lost[:3]}")
    return [(i, labels[i]) for i in ids]


def build(spec: Ssv2Dataset, dataset_name: str, out_dir: Path) -> PreparedDataset:
    root = Path(spec.root).absolute()
    found = check_files(root, spec.test_source)
    videos = found["videos"] or extract_parts(root, found["parts"])
    files = found["files"]
    classes = read_classes(files["labels"])
    known = set(classes)
    on_disk = {e.name for e in os.scandir(videos) if e.name.endswith(".webm")}
    official = {"train": read_split(files["train"], known), "validation": read_split(files["validation"], known)}
    if spec.test_source == "test":
        official["test"] = read_test(files["test"], files["test-answers"], known)
        ours = {"train": "train", "val": "validation", "test": "test"}
    else:  # no "val": prepare holds it out of train
        ours = {"train": "train", "test": "validation"}
    splits, missing = {}, []
    for split, theirs in ours.items():
        rows = []
        for vid, name in official[theirs]:
            fname = f"{vid}.webm"
            if fname in on_disk:
                rows.append({"video": video_ref(videos / fname, out_dir), "label_name": name, "ssv2_id": vid})
            else:
                missing.append({"split": split, "video": str(videos / fname), "reason": "not in the videos folder"})
        splits[split] = split_table(rows, classes, extras=("ssv2_id",))
    info = {"root": str(root), "videos_dir": str(videos), "test_from": f"official {ours['test']} split",
            "label_files": {k: str(v) for k, v in files.items()}}
    return PreparedDataset(classes=classes, splits=splits, missing=missing, info=info)


SOURCE = Source(Ssv2Dataset, build)
