"""End to end on a tiny frame cache with the real model code: train (aligned AM flow), evaluate, predict.

The camera-motion stage runs for real on the tiny cache (it writes motion.npz), so the camera
transforms travel through training, multi-view evaluation, the time-reversal diagnostic and predict.
"""
from __future__ import annotations

import json
from io import StringIO as io_text

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
    from amflow.params_io import validate

    return validate(data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from amflow.stages.camera_motion import run_camera_motion
    from amflow.evaluate.evaluation import evaluate_run
    from amflow.train.training import train_run

    mp = pytest.MonkeyPatch()
    mp.setenv("AMFLOW_TRACKING", "0")
    mp.delenv("AMFLOW_STOP_AFTER_EPOCH", raising=False)
    root = tmp_path_factory.mktemp("e2e")
    make_tiny_dataset(root / "data")
    params = aligned_params()
    run_camera_motion(params, "tiny", paths.frames_dir(root / "data", paths.dataset_key(params, "tiny")),
                      paths.camera_dir(root / "results", "tiny"), motion_path=paths.motion_file(root / "results", "tiny"),
                      track=False, workers=1, progress=False)
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
    saved = io.read_json(run_dir / paths.TRAIN_JSON)
    assert saved["status"] == "complete" and saved["epochs"] == 2 and len(saved["history"]) == 2
    assert saved["am_flow_variant"] == "aligned"
    assert 0 < saved["trainable_params"] < saved["total_params"] and saved["gflops_per_clip"] > 0
    assert saved["epochs_to_90pct"] in (1, 2) and len(saved["val_curve"]) == 2
    from amflow.params_io import load_params

    assert load_params(run_dir / paths.PARAMS_YAML) == params          # resolved params, reloadable


def test_metrics_json_has_the_contract_keys(trained):
    root, *_, metrics = trained
    run_dir = root / "results" / "tiny" / "amflow" / "seed0"
    saved = io.read_json(run_dir / paths.METRICS_JSON)
    assert METRICS_KEYS <= set(saved) and saved == metrics
    assert saved["views"] == 1 and saved["am_flow_variant"] == "aligned"
    assert 0 <= saved["top1"] <= saved["top5"] <= 1
    assert saved["paired_items"] == saved["num_test"] == 8        # every tiny class has a partner
    assert 0 <= saved["reversed_top1"] <= 1 and 0 <= saved["forward_top1_paired"] <= 1
    assert saved["forward_top1_paired"] == pytest.approx(saved["top1"])
    assert saved["directional_items"] == 8                          # no tiny class is its own reversal
    assert 0 <= saved["both_directions_top1"] <= min(saved["reversed_top1"], saved["forward_top1_paired"])
    table = pd.read_csv(run_dir / paths.PER_CLASS_CSV)
    assert table["class_name"].tolist() == CLASSES and table["support"].sum() == 8
    for png in ("confusion.png", "curves.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_view_evaluation_reuses_the_training(trained):
    from amflow.evaluate.evaluation import evaluate_run

    root, _, kw, *_ = trained
    params = aligned_params(**{"sampling.test_clips": 2, "sampling.test_crops": 3})
    m = evaluate_run(params, progress=False, **kw)
    assert m["views"] == 6 and m["gflops_per_video"] == pytest.approx(6 * m["gflops_per_clip"])


def test_evaluate_refuses_other_params_and_unfinished_runs(trained):
    from amflow.evaluate.evaluation import evaluate_run

    root, _, kw, *_ = trained
    with pytest.raises(AmflowError, match="trained with different params"):
        evaluate_run(aligned_params(**{"train.lr": 0.1}), progress=False, **kw)
    with pytest.raises(AmflowError, match="not complete"):
        evaluate_run(aligned_params(), progress=False, **{**kw, "seed": 5})


def test_evaluate_refuses_a_checkpoint_that_train_json_does_not_describe(trained, tmp_path):
    import shutil

    from amflow.evaluate.evaluation import evaluate_run
    from amflow.train.training import train_run

    root, params, kw, info, _ = trained
    # The same run stopped after its first epoch: its checkpoint copied into the finished run.
    early = train_run(params, progress=False, stop_after_epoch=1, run_dir=tmp_path / "early", **kw)
    assert early["status"] == "stopped"
    finished = paths.run_dir(root / "results", "tiny", "amflow", 0)
    mixed = shutil.copytree(finished, tmp_path / "mixed", ignore=shutil.ignore_patterns("metrics.json"))
    shutil.copyfile(tmp_path / "early" / paths.TRAIN_STATE, mixed / paths.CHECKPOINT)
    with pytest.raises(AmflowError, match=f"{mixed / 'checkpoint.pt'}: not the checkpoint that .*epoch 1.*"
                                          f"train.json: epoch {info['epochs']}"):
        evaluate_run(params, progress=False, run_dir=mixed, **kw)
    # The final checkpoint, but train.json from a run with other params.
    shutil.copyfile(finished / paths.CHECKPOINT, mixed / paths.CHECKPOINT)
    io.write_json(mixed / paths.TRAIN_JSON, {**info, "params_digest": "0123456789abcdef"})
    with pytest.raises(AmflowError, match="not the checkpoint that .*digest 0123456789abcdef"):
        evaluate_run(params, progress=False, run_dir=mixed, **kw)
    assert not (mixed / paths.METRICS_JSON).exists()
    io.write_json(mixed / paths.TRAIN_JSON, info)  # the run's own pair evaluates
    assert evaluate_run(params, progress=False, run_dir=mixed, **kw)["top1"] == trained[4]["top1"]


def test_a_lost_checkpoint_is_named_with_its_fix_and_the_same_training_restores_it(trained, tmp_path, capsys):
    import shutil

    from amflow.evaluate.evaluation import evaluate_run
    from amflow.train.training import train_run

    root, params, kw, info, metrics = trained
    run = shutil.copytree(paths.run_dir(root / "results", "tiny", "amflow", 0), tmp_path / "run")
    (run / paths.CHECKPOINT).unlink()
    before = (run / paths.METRICS_JSON).read_bytes()
    with pytest.raises(AmflowError) as err:
        evaluate_run(params, progress=False, run_dir=run, **kw)
    msg = str(err.value)
    assert msg.startswith(f"{run / paths.CHECKPOINT}: missing") and "rerun `amflow train --dataset tiny" in msg
    assert "\n" not in msg and (run / paths.METRICS_JSON).read_bytes() == before  # nothing lost
    capsys.readouterr()
    again = train_run(params, progress=False, run_dir=run, **kw)  # the fix the message names
    assert f"from epoch {info['epochs']}" in capsys.readouterr().err  # from the training state: no epoch trained
    assert again["history"] == info["history"] and (run / paths.CHECKPOINT).exists()
    assert evaluate_run(params, progress=False, run_dir=run, **kw)["top1"] == metrics["top1"]


def test_evaluate_refuses_another_seeds_checkpoint(trained, tmp_path):
    """Seed 0's checkpoint copied into seed 1's folder (same params and backbone file, same epochs): refused
    in one line, before any metric is written."""
    import shutil

    from safetensors.torch import save_file

    from amflow.evaluate.evaluation import evaluate_run
    from amflow.models import build_backbone
    from amflow.train.training import train_run

    root, params, kw, *_ = trained
    weights = tmp_path / "backbone.safetensors"  # one backbone for both seeds, as a pretrained one is
    save_file(build_backbone(params.backbone).state_dict(), str(weights))
    shared = aligned_params(**{"backbone.weights": "file", "backbone.weights_file": str(weights)})
    runs = {seed: tmp_path / f"seed{seed}" for seed in (0, 1)}
    for seed, run in runs.items():
        train_run(shared, progress=False, run_dir=run, **{**kw, "seed": seed})
    shutil.copyfile(runs[0] / paths.CHECKPOINT, runs[1] / paths.CHECKPOINT)
    with pytest.raises(AmflowError) as err:
        evaluate_run(shared, progress=False, run_dir=runs[1], **{**kw, "seed": 1})
    msg = str(err.value)
    assert msg.startswith(f"{runs[1] / paths.CHECKPOINT}: not the checkpoint of this run"), msg
    assert "(seed 0; the run: seed 1)" in msg and "\n" not in msg
    assert not (runs[1] / paths.METRICS_JSON).exists()


def test_predict_samples_like_the_evaluation(trained, monkeypatch):
    """Fed the cached frames of a test video, predict gives the evaluation's probabilities for it."""
    from amflow.data.clips import ClipDataset
    from amflow.data.frame_cache import FrameCache
    from amflow.evaluate import predict as P
    from amflow.train import checkpoint as ckpt
    from amflow.models.inference import clip_probs
    from amflow.runs import build_run_model

    root, params, *_ = trained
    run_dir = root / "results" / "tiny" / "amflow" / "seed0"
    frames_dir = paths.frames_dir(root / "data", paths.dataset_key(params, "tiny"))
    test = ClipDataset(frames_dir, "test", params.sampling, train=False, motion=paths.motion_file(root / "results", "tiny"))
    item = test[3]
    cached = FrameCache(frames_dir).read(int(test.positions[3]))
    monkeypatch.setattr("amflow.data.video.read_video", lambda path, short_side=None, backend=None: (cached, 25.0))
    top = P.predict_video("unused.mp4", run_dir, top_k=3)
    assert len(top) == 3 and [n for n, _ in top][0] in CLASSES
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))

    state = ckpt.load_checkpoint(run_dir / paths.CHECKPOINT)
    model = build_run_model(params, "tiny", "amflow", len(CLASSES), "aligned", None, 0)
    ckpt.load_trainable_state(model, state["model"], run_dir / paths.CHECKPOINT)
    with torch.no_grad():
        probs = clip_probs(model.eval(), item["video"][None], item["transforms"][None], torch.device("cpu"), False,
                           test.normalise)[0]
    expected = sorted(((CLASSES[i], float(p)) for i, p in enumerate(probs)), key=lambda t: -t[1])[:3]
    assert [n for n, _ in top] == [n for n, _ in expected]
    assert np.allclose([p for _, p in top], [p for _, p in expected], atol=1e-5)


def test_predict_refuses_what_evaluate_refuses(trained, tmp_path):
    """One policy for a trained run: predict refuses an unfinished run and weights of other params."""
    import shutil

    import yaml

    from amflow.evaluate.predict import Predictor

    root, *_ = trained
    finished = paths.run_dir(root / "results", "tiny", "amflow", 0)
    copy = shutil.copytree(finished, tmp_path / "run")
    assert Predictor.from_run_dir(copy).classes == CLASSES
    (copy / paths.TRAIN_JSON).unlink()
    with pytest.raises(AmflowError, match=f"{copy / 'train.json'}: training of this run is not complete"):
        Predictor.from_run_dir(copy)
    shutil.copyfile(finished / paths.TRAIN_JSON, copy / paths.TRAIN_JSON)
    edited = yaml.safe_load((copy / paths.PARAMS_YAML).read_text())
    edited["train"]["lr"] = 0.1
    (copy / paths.PARAMS_YAML).write_text(yaml.safe_dump(edited))
    with pytest.raises(AmflowError, match="trained with different params"):
        Predictor.from_run_dir(copy)


def test_predict_decodes_a_real_video_file(trained, tmp_path):
    from amflow.evaluate.predict import predict_video
    from standins_train import moving_square
    from video_files import write_mp4

    root, *_ = trained
    path = tmp_path / "clip.mp4"
    frames = moving_square(1, 12, 32, np.random.default_rng(0))
    write_mp4(path, frames)
    run_dir = paths.run_dir(root / "results", "tiny", "amflow", 0)
    top = predict_video(path, run_dir, top_k=len(CLASSES))
    assert len(top) == len(CLASSES)
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)
    assert len(predict_video(path, run_dir)) == len(CLASSES)           # the default 5 fits the 4 classes
    with pytest.raises(AmflowError, match="--top-k 10: the run has 4 classes"):
        predict_video(path, run_dir, top_k=10)


def test_predict_cli_several_videos_a_list_json_and_csv(trained, tmp_path, capsys):
    """`amflow predict` as the README and --help show it: videos and/or a list file, text, --json, --csv;
    a --top-k above the class count and a video that cannot be decoded each give one clear line."""
    from amflow.cli import main
    from standins_train import moving_square
    from video_files import write_mp4

    root, *_ = trained
    run = str(paths.run_dir(root / "results", "tiny", "amflow", 0))
    videos = []
    for label in (0, 3):
        videos.append(tmp_path / "clips" / f"clip{label}.mp4")
        videos[-1].parent.mkdir(exist_ok=True)
        write_mp4(videos[-1], moving_square(label, 12, 32, np.random.default_rng(label)))
    listing = tmp_path / "clips" / "videos.txt"
    listing.write_text(f"# test clips\n{videos[1].name}\n\n")         # relative to the list's folder

    assert main(["predict", str(videos[0]), "--list", str(listing), "--run", run, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [a["video"] for a in answer] == [str(videos[0]), str(videos[1])]
    for a in answer:
        probs = [p["probability"] for p in a["predictions"]]
        assert [p["rank"] for p in a["predictions"]] == [1, 2, 3, 4] and probs == sorted(probs, reverse=True)
        assert {p["label"] for p in a["predictions"]} == set(CLASSES)

    assert main(["predict", *map(str, videos), "--run", run, "--csv", "--top-k", "2"]) == 0
    table = pd.read_csv(io_text(capsys.readouterr().out))
    assert list(table.columns) == ["video", "rank", "label", "probability"] and len(table) == 4
    first = [(p["label"], p["probability"]) for p in answer[0]["predictions"][:2]]
    got = table[table["video"] == str(videos[0])]
    assert got["label"].tolist() == [n for n, _ in first]
    assert np.allclose(got["probability"], [p for _, p in first], atol=1e-6)

    assert main(["predict", *map(str, videos), "--run", run]) == 0      # text: a header per video
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{videos[0]}:" and len(out) == 2 * (1 + len(CLASSES))

    assert main(["predict", str(videos[0]), "--run", run, "--top-k", "9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --top-k 9: the run has 4 classes; give a value from 1 to 4"]

    bad = tmp_path / "clips" / "broken.mp4"
    bad.write_bytes(b"not a video")
    assert main(["predict", str(bad), str(videos[0]), "--run", run, "--csv"]) == 1   # the good one still answers
    captured = capsys.readouterr()
    assert len(pd.read_csv(io_text(captured.out))) == len(CLASSES)
    assert [line for line in captured.err.splitlines() if line.startswith("error:")] == \
        [line for line in captured.err.splitlines() if str(bad) in line]


def test_the_evaluation_made_by_the_training_is_taken_only_for_the_same_checkpoint_and_views(trained, tmp_path):
    """`amflow train --evaluate` evaluates into evaluated_in_training/; `amflow evaluate` copies those files
    for the same checkpoint and test views (byte for byte, metrics.json naming where it came from), and
    takes nothing for other views or another checkpoint."""
    import shutil

    from amflow.evaluate.reuse import REUSED_FROM, reuse_training_evaluation
    from amflow.evaluate.evaluation import evaluate_run

    root, params, kw, *_ = trained
    run_dir = shutil.copytree(root / "results" / "tiny" / "amflow" / "seed0", tmp_path / "run")
    for name in paths.EVALUATION_FILES:
        (run_dir / name).unlink()
    made = run_dir / paths.TRAINING_EVALUATION_DIR
    metrics = evaluate_run(params, progress=False, run_dir=run_dir, out_dir=made, **kw)
    assert not (run_dir / paths.METRICS_JSON).exists()

    views = aligned_params(**{"sampling.test_clips": 2})
    assert reuse_training_evaluation(views, "tiny", "amflow", 0, run_dir) is None
    assert not (run_dir / paths.METRICS_JSON).exists()

    assert reuse_training_evaluation(params, "tiny", "amflow", 0, run_dir) == metrics
    for name in paths.EVALUATION_FILES[:-1]:
        assert (run_dir / name).read_bytes() == (made / name).read_bytes()
    assert io.read_json(run_dir / paths.METRICS_JSON) == {**metrics, REUSED_FROM: paths.TRAINING_EVALUATION_DIR}

    checkpoint = run_dir / paths.CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # another file than the one evaluated
    assert reuse_training_evaluation(params, "tiny", "amflow", 0, run_dir) is None
