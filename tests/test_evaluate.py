"""End to end on a tiny frame cache with the real model code: train (aligned AM flow), evaluate, predict.

The camera-motion stage runs for real on the tiny cache (it writes motion.npz), so the camera
transforms travel through training, multi-view evaluation, the time-reversal diagnostic and predict.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from amflow import io, paths
from amflow.errors import AmflowError
from standins_train import CLASSES, make_tiny_dataset, tiny_params

torch.set_num_threads(1)

METRICS_KEYS = {"dataset", "method", "seed", "top1", "top5", "mean_class_acc", "views", "trainable_params",
                "total_params", "gflops_per_clip", "train_time_s", "eval_time_s", "val_curve", "epochs_to_90pct",
                "am_flow_variant", "reversed_top1", "forward_top1_paired", "both_directions_top1"}


def aligned_params(**overrides):
    p = tiny_params(epochs=2)
    data = p.model_dump(mode="json")
    data["model"]["am_flow"]["variant"] = "aligned"
    data["camera_motion"]["workers"] = 1
    for dotted, value in overrides.items():
        node = data
        *keys, last = dotted.split(".")
        for k in keys:
            node = node[k]
        node[last] = value
    from amflow.params import validate

    return validate(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from amflow.camera.stage import run_camera_motion
    from amflow.evaluate.run import evaluate_run
    from amflow.train.run import train_run

    mp = pytest.MonkeyPatch()
    mp.setenv("AMFLOW_TRACKING", "0")
    mp.delenv("AMFLOW_STOP_AFTER_EPOCH", raising=False)
    root = tmp_path_factory.mktemp("e2e")
    make_tiny_dataset(root / "data")
    params = aligned_params()
    run_camera_motion(params, "tiny", paths.frames_dir(root / "data", "tiny"), paths.camera_dir(root / "results", "tiny"),
                      motion_path=paths.motion_file(root / "data", "tiny"), track=False, workers=1, progress=False)
    kw = dict(dataset="tiny", method="amflow", seed=0, data_dir=root / "data", results_dir=root / "results")
    info = train_run(params, progress=False, **kw)
    metrics = evaluate_run(params, progress=False, **kw)
    try:
        yield root, params, kw, info, metrics
    finally:
        mp.undo()


def test_train_outputs(trained):
    root, params, kw, info, _ = trained
    run_dir = root / "results" / "tiny" / "amflow" / "seed0"
    assert {"checkpoint.pt", "train_log.csv", "params.yaml", "train.json"} <= {p.name for p in run_dir.iterdir()}
    saved = io.read_json(run_dir / "train.json")
    assert saved["status"] == "complete" and saved["epochs"] == 2 and len(saved["history"]) == 2
    assert saved["am_flow_variant"] == "aligned"
    assert 0 < saved["trainable_params"] < saved["total_params"] and saved["gflops_per_clip"] > 0
    assert saved["epochs_to_90pct"] in (1, 2) and len(saved["val_curve"]) == 2
    from amflow.params import load_params

    assert load_params(run_dir / "params.yaml") == params          # resolved params, reloadable


def test_metrics_json_has_the_contract_keys(trained):
    root, *_, metrics = trained
    run_dir = root / "results" / "tiny" / "amflow" / "seed0"
    saved = io.read_json(run_dir / "metrics.json")
    assert METRICS_KEYS <= set(saved) and saved == metrics
    assert saved["views"] == 1 and saved["am_flow_variant"] == "aligned"
    assert 0 <= saved["top1"] <= saved["top5"] <= 1
    assert saved["paired_items"] == saved["num_test"] == 8        # every tiny class has a partner
    assert 0 <= saved["reversed_top1"] <= 1 and 0 <= saved["forward_top1_paired"] <= 1
    assert saved["forward_top1_paired"] == pytest.approx(saved["top1"])
    assert saved["directional_items"] == 8                          # no tiny class is its own reversal
    assert 0 <= saved["both_directions_top1"] <= min(saved["reversed_top1"], saved["forward_top1_paired"])
    table = pd.read_csv(run_dir / "per_class.csv")
    assert table["class_name"].tolist() == CLASSES and table["support"].sum() == 8
    for png in ("confusion.png", "curves.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_view_evaluation_reuses_the_training(trained):
    from amflow.evaluate.run import evaluate_run

    root, _, kw, *_ = trained
    params = aligned_params(**{"sampling.test_clips": 2, "sampling.test_crops": 3})
    m = evaluate_run(params, progress=False, **kw)
    assert m["views"] == 6 and m["gflops_per_video"] == pytest.approx(6 * m["gflops_per_clip"])


def test_evaluate_refuses_other_params_and_unfinished_runs(trained):
    from amflow.evaluate.run import evaluate_run

    root, _, kw, *_ = trained
    with pytest.raises(AmflowError, match="trained with different params"):
        evaluate_run(aligned_params(**{"train.lr": 0.1}), progress=False, **kw)
    with pytest.raises(AmflowError, match="not complete"):
        evaluate_run(aligned_params(), progress=False, **{**kw, "seed": 5})


def test_predict_samples_like_the_evaluation(trained, monkeypatch):
    """Fed the cached frames of a test video, predict gives the evaluation's probabilities for it."""
    from amflow.data.clips import ClipDataset
    from amflow.data.frame_cache import FrameCache
    from amflow.evaluate import predict as P
    from amflow.train import checkpoint as ckpt
    from amflow.train.run import build_run_model
    from amflow.train.trainer import clip_probs

    root, params, *_ = trained
    run_dir = root / "results" / "tiny" / "amflow" / "seed0"
    frames_dir = paths.frames_dir(root / "data", "tiny")
    test = ClipDataset(frames_dir, "test", params.sampling, train=False, motion=paths.motion_file(root / "data", "tiny"))
    item = test[3]
    cached = FrameCache(frames_dir).read(int(test.positions[3]))
    monkeypatch.setattr("amflow.data.video.read_video", lambda path, short_side=None, backend=None: (cached, 25.0))
    top = P.predict_video("unused.mp4", run_dir, top_k=3)
    assert len(top) == 3 and [n for n, _ in top][0] in CLASSES
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))

    state = ckpt.load_checkpoint(run_dir / "checkpoint.pt")
    model = build_run_model(params, "tiny", "amflow", len(CLASSES), "aligned", None, 0)
    ckpt.load_trainable_state(model, state["model"], run_dir / "checkpoint.pt")
    with torch.no_grad():
        probs = clip_probs(model.eval(), item["video"][None], item["transforms"][None], torch.device("cpu"), False,
                           test.normalise)[0]
    expected = sorted(((CLASSES[i], float(p)) for i, p in enumerate(probs)), key=lambda t: -t[1])[:3]
    assert [n for n, _ in top] == [n for n, _ in expected]
    assert np.allclose([p for _, p in top], [p for _, p in expected], atol=1e-5)


def test_predict_decodes_a_real_video_file(trained, tmp_path):
    from amflow.evaluate.predict import predict_video
    from standins_train import moving_square
    from video_files import write_mp4

    root, *_ = trained
    path = tmp_path / "clip.mp4"
    frames = moving_square(1, 12, 32, np.random.default_rng(0))
    write_mp4(path, frames)
    top = predict_video(path, root / "results" / "tiny" / "amflow" / "seed0", top_k=10)
    assert len(top) == len(CLASSES)                                  # k is capped at the class count
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)
