"""Kinetics-400 from the CVDF mirror (https://github.com/cvdfoundation/kinetics-dataset).

Layout of the mirror (``base_url`` = ``https://s3.amazonaws.com/kinetics/400``):

- ``{base_url}/{split}/k400_{split}_path.txt``: one tarball URL per line;
- ``{base_url}/annotations/{split}.csv``: ``label,youtube_id,time_start,time_end,split[,is_cc]``;
- ``{base_url}/replacement_for_corrupted_k400.tgz``: re-encoded copies of clips that are corrupt in
  the tarballs (``download.replacement_url``).

On disk (under ``root``, default the dataset folder): ``downloads/`` (CSVs, path lists, tarballs while
they are being fetched) and ``videos/<split>/``, ``videos/replacement/`` (extracted clips).

Clip file name: ``{youtube_id}_{time_start:06d}_{time_end:06d}.mp4``. Class index: position in the
alphabetically sorted label names of the train CSV (the MMAction2 convention), so indices do not depend
on which clips were downloaded. The replacement archive is applied by pointing the annotation of a
clip to its replacement copy (the extracted original stays untouched, so a rerun is idempotent).
Clips listed in a CSV but absent on disk (dead links, or ``max_archives``) are listed in
``missing.csv`` and left out, never fatal.

Splits: K400 results are published on the validation set (MMAction2, AIM, ST-Adapter...), so with
``test_source: val`` (default) our test split is the official val split, and our val split (model
selection, convergence curves, sweeps) is a seeded, class-stratified holdout of train
(``val_fraction``): never the test videos. ``test_source: test`` uses the official test CSV as test
and the official val split as val.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urljoin

import pandas as pd

from amflow.data.download import DownloadItem, download_many
from amflow.data.safe_tar import MARKER_DIR, extract_tar, is_extracted
from amflow.data.sources.base import PreparedDataset, Source, split_table, video_ref
from amflow.errors import AmflowError
from amflow.params import Kinetics400Dataset

CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def clip_name(youtube_id: str, time_start, time_end) -> str:
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}.mp4"


def read_kinetics_csv(path: Path, need_labels: bool = True) -> pd.DataFrame:
    """Read a Kinetics CSV; youtube ids stay strings (some look like numbers or start with '-')."""
    try:
        table = pd.read_csv(path, dtype={"label": str, "youtube_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AmflowError(f"{path}: not a readable Kinetics CSV ({exc}); delete it to download it again") from None
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise AmflowError(f"{path}: missing columns {missing} (expected label,youtube_id,time_start,time_end,split); "
                          f"delete it to download it again, or check download.base_url")
    if need_labels and table["label"].isna().any():
        n = int(table["label"].isna().sum())
        raise AmflowError(f"{path}: {n} row(s) have no label. The official K400 test CSV may have none: use "
                          f"test_source: val (evaluate on the validation set, as published results do)")
    return table


def class_names(train_csv: pd.DataFrame) -> list[str]:
    return sorted(train_csv["label"].unique())


def index_videos(folder: Path) -> dict[str, Path]:
    """File name -> path for every mp4 under ``folder`` (tarballs may or may not have sub-folders)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != MARKER_DIR)
        for name in sorted(filenames):
            if name.endswith(".mp4"):
                found.setdefault(name, Path(dirpath) / name)
    return found


def read_path_list(path: Path, list_url: str) -> list[str]:
    """Tarball URLs, one per line; relative entries are resolved against the list's own URL."""
    urls = [line.strip() for line in path.read_text().splitlines()]
    urls = [urljoin(list_url, u) for u in urls if u and not u.startswith("#")]
    if not urls:
        raise AmflowError(f"{path}: the path list is empty; delete it to download it again "
                          f"(from {list_url})")
    return urls


def _checksum_for(spec: Kinetics400Dataset, url: str):
    base = spec.download.base_url.rstrip("/")
    rel = url[len(base) + 1:] if url.startswith(base + "/") else url
    return spec.download.checksums.get(rel) or spec.download.checksums.get(url)


def _items(spec: Kinetics400Dataset, pairs: list[tuple[str, Path]]) -> list[DownloadItem]:
    return [DownloadItem(url, dest, checksum=_checksum_for(spec, url)) for url, dest in pairs]


def fetch(spec: Kinetics400Dataset, root: Path, progress: bool = True) -> dict:
    """Download annotation CSVs, path lists and tarballs; extract them safely. Returns counts."""
    dl = spec.download
    base = dl.base_url.rstrip("/")
    downloads, videos = root / "downloads", root / "videos"
    csv_splits = ["train", "val"] + (["test"] if spec.test_source == "test" else [])
    small = [(f"{base}/annotations/{s}.csv", downloads / "annotations" / f"{s}.csv") for s in csv_splits]
    lists = {s: f"{base}/{s}/k400_{s}_path.txt" for s in dl.splits}
    small += [(url, downloads / s / Path(url).name) for s, url in lists.items()]
    download_many(_items(spec, small), workers=dl.workers, retries=dl.retries, timeout=dl.timeout_s,
                  backoff=dl.backoff_s, progress=False)

    # (url, archive path, extraction folder)
    archives: list[tuple[str, Path, Path]] = []
    for s, list_url in lists.items():
        urls = read_path_list(downloads / s / Path(list_url).name, list_url)
        if dl.max_archives is not None:
            urls = urls[:dl.max_archives]
        archives += [(u, downloads / s / Path(u).name, videos / s) for u in urls]
    if dl.replacement_url:
        url = urljoin(base + "/", dl.replacement_url)
        archives.append((url, downloads / "replacement" / Path(url).name, videos / "replacement"))
    todo = [a for a in archives if not is_extracted(a[2], a[1].name)]
    target = {str(path): folder for _, path, folder in todo}

    lock = threading.Lock()  # one extraction at a time: downloads overlap, tarfile's mkdirs would race

    def extract(item: DownloadItem, path: Path) -> None:
        with lock:
            extract_tar(path, target[str(path)], delete_after=not dl.keep_archives)

    if todo:
        print(f"kinetics400: {len(archives) - len(todo)} of {len(archives)} archive(s) already extracted; "
              f"fetching {len(todo)} with {dl.workers} worker(s)")
        download_many(_items(spec, [(u, p) for u, p, _ in todo]), workers=dl.workers, retries=dl.retries,
                      timeout=dl.timeout_s, backoff=dl.backoff_s, progress=progress, desc="kinetics400",
                      on_done=extract)
    return {"archives": len(archives), "archives_fetched_now": len(todo)}


def build(spec: Kinetics400Dataset, dataset_name: str, out_dir: Path) -> PreparedDataset:
    root = Path(spec.root) if spec.root else Path(out_dir)
    fetched = fetch(spec, root)
    ann = root / "downloads" / "annotations"
    train_csv = read_kinetics_csv(ann / "train.csv")
    classes = class_names(train_csv)
    known = set(classes)
    replacement = index_videos(root / "videos" / "replacement") if spec.download.replacement_url else {}

    # our split -> official split it is read from; without "val", prepare holds val out of train
    official = ({"train": "train", "val": "val", "test": "test"} if spec.test_source == "test"
                else {"train": "train", "test": "val"})
    splits: dict[str, pd.DataFrame] = {}
    missing: list[dict] = []
    replaced = 0
    for ours, theirs in official.items():
        table = train_csv if theirs == "train" else read_kinetics_csv(ann / f"{theirs}.csv")
        on_disk = index_videos(root / "videos" / theirs)
        rows = []
        for label, yid, start, end in table[list(CSV_COLUMNS)].itertuples(index=False):
            name = clip_name(yid, start, end)
            path = replacement.get(name)
            replaced += path is not None
            path = path or on_disk.get(name)
            listed = f"videos/{theirs}/{name}"
            if label not in known:
                missing.append({"split": ours, "video": listed, "reason": f"label {label!r} not in train.csv"})
            elif path is None:
                why = ("not downloaded (download.splits)" if theirs not in spec.download.splits
                       else "not in the downloaded archives")
                missing.append({"split": ours, "video": listed, "reason": why})
            else:
                rows.append({"video": video_ref(path, out_dir), "label_name": label, "youtube_id": yid})
        splits[ours] = split_table(rows, classes, extras=("youtube_id",))
    info = {
        "test_from": f"official {official['test']} split",
        "download": {"base_url": spec.download.base_url, "splits": list(spec.download.splits),
                     "max_archives": spec.download.max_archives, **fetched},
        "replaced_by_replacement_archive": replaced,
    }
    if spec.download.max_archives is not None:
        info["note"] = (f"max_archives={spec.download.max_archives}: only part of each split was downloaded, "
                        f"so most listed videos are missing by design")
    return PreparedDataset(classes=classes, splits=splits, missing=missing, info=info)


SOURCE = Source(Kinetics400Dataset, build)
