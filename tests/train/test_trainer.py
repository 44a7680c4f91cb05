"""The generic training loop on tiny stand-ins: schedule, groups, learning, resume, accumulation, logs."""
from __future__ import annotations

import math
import time

import pandas as pd
import pytest
import torch

from amflow import paths
from amflow.errors import AmflowError
from amflow.params_io import load_params
from project_copy import ROOT
from amflow.train.schedule import build_scheduler, param_groups, warmup_cosine_factor
from amflow.train.trainer import LOG_COLUMNS, STOP_ENV, Trainer
from standins_train import TinyClips, TinyVideoNet, history_without_time, tiny_spec

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("AMFLOW_TRACKING", "0")
    monkeypatch.delenv(STOP_ENV, raising=False)


def make_trainer(run_dir, spec=None, seed=0, dropout=0.3, n_train=32, **kw):
    torch.manual_seed(seed)  # the model's init, as train_run seeds it
    model = TinyVideoNet(dropout=dropout)
    return Trainer(model, TinyClips(n_train, seed=seed), TinyClips(12, seed=seed, train=False), spec or tiny_spec(),
                   seed=seed, run_dir=run_dir, progress=False, **kw)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- schedule and groups
def test_warmup_then_cosine():
    total, warm = 20, 4
    f = [warmup_cosine_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.25) and f[3] == pytest.approx(1.0)      # linear warm-up, never 0
    assert f[4] == pytest.approx(1.0)                                      # cosine starts at the peak
    assert f[12] == pytest.approx(0.5, abs=1e-9)                           # half-way through the decay
    assert all(a >= b for a, b in zip(f[4:], f[5:]))                       # monotone decay
    assert warmup_cosine_factor(total, total, warm) == pytest.approx(0.0)  # ends at 0
    assert warmup_cosine_factor(0, total, 0) == pytest.approx(1.0)         # no warm-up


def test_fractional_warmup_is_counted_in_steps(tmp_path):
    # 32 clips / batch 8 = 4 steps per epoch; warmup_epochs 0.5 -> 2 warm-up steps.
    t = make_trainer(tmp_path, tiny_spec(warmup_epochs=0.5, lr=0.1))
    t._loaders()
    t._optim()
    lrs = []
    for _ in range(4):
        lrs.append(t.optimizer.param_groups[0]["lr"])
        t.optimizer.step()
        t.scheduler.step()
    # 12 steps in all: 2 of warm-up (0.05, 0.1), then a cosine over the other 10 from the peak, one tenth
    # of the way down at the fourth step.
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 10))])


def test_param_groups_skip_frozen_and_do_not_decay_norms_biases_embeddings():
    model = TinyVideoNet()
    groups = param_groups(model, 0.05)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = {n: p for n, p in model.named_parameters()}
    assert id(names["encoder.weight"]) not in by_id                 # frozen: not optimised at all
    assert by_id[id(names["temporal.weight"])] == 0.05
    assert by_id[id(names["head.weight"])] == 0.05
    for n in ("norm.weight", "norm.bias", "head.bias", "temporal.bias", "pos_embed"):
        assert by_id[id(names[n])] == 0.0, n


def test_default_pretraining_schedule_per_step():
    """The default pretraining: 30000 images / batch 256 = 118 steps per epoch, 5 epochs = 590 steps,
    int(0.05 * 590) = 29 warm-up steps, peak 0.002. Expected: 0.002 * (s + 1) / 29 while warming up,
    then 0.002 * 0.5 * (1 + cos(pi * (s - 29) / 561)), written out as the numbers they evaluate to."""
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=0.002)
    sched = build_scheduler(opt, 590, 29)
    lrs = []
    for _ in range(591):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert {s: lrs[s] for s in (0, 1, 27, 28, 29, 30, 309, 589, 590)} == {
        0: 6.896551724137931e-05, 1: 0.00013793103448275863, 27: 0.0019310344827586207, 28: 0.002, 29: 0.002,
        30: 0.00199998432011431, 309: 0.0010027999897937578, 589: 1.5679885690289552e-08, 590: 0.0}


def test_default_pretraining_groups():
    """The default pretraining's ViT (4 blocks) and its five attribute heads: decay on the matrices
    and the patch projection, none on the norms, biases, position embedding and CLS token."""
    from amflow.train.pretraining import build_model

    attributes = [{"name": n, "classes": c} for n, c in
                  (("shape", 6), ("colour", 6), ("position", 9), ("orientation", 8), ("size", 3))]
    model = build_model(load_params(ROOT / "params" / "default.yaml"), attributes)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [(g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in param_groups(model, 0.05)]
    heads_ = ("shape", "colour", "position", "orientation", "size")
    block = ("norm1.weight", "norm1.bias", "attn.qkv.bias", "attn.proj.bias", "norm2.weight", "norm2.bias",
             "mlp.fc1.bias", "mlp.fc2.bias")
    assert groups == [
        (0.05, ["backbone.patch_embed.proj.weight"]
         + [f"backbone.blocks.{b}.{w}.weight" for b in range(4) for w in ("attn.qkv", "attn.proj", "mlp.fc1",
                                                                           "mlp.fc2")]
         + [f"heads.{h}.weight" for h in heads_]),
        (0.0, ["backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.bias"]
         + [f"backbone.blocks.{b}.{n}" for b in range(4) for n in block]
         + ["backbone.norm.weight", "backbone.norm.bias"] + [f"heads.{h}.bias" for h in heads_]),
    ]


# --------------------------------------------------------------------------- training
def test_learns_and_writes_log(tmp_path):
    res = make_trainer(tmp_path, tiny_spec(epochs=6, lr=0.01)).fit()
    assert res.status == "complete" and res.epochs_completed == 6
    log = pd.read_csv(tmp_path / paths.TRAIN_LOG)
    assert tuple(log.columns) == LOG_COLUMNS
    assert list(log["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    assert log["val_top1"].iloc[-1] > 0.5                  # 4 classes: chance is 0.25
    assert (log["clips_per_s"] > 0).all() and (log["epoch_time"] > 0).all()
    assert (tmp_path / paths.CHECKPOINT).exists()


def test_the_cpu_seconds_of_the_epochs_are_counted_across_a_resume(tmp_path, monkeypatch):
    spec = tiny_spec(epochs=3)
    monkeypatch.setenv(STOP_ENV, "1")
    c0 = time.process_time()
    first = make_trainer(tmp_path, spec).fit()
    assert 0 < first.cpu_s <= time.process_time() - c0  # the epochs' share of what this process spent
    monkeypatch.delenv(STOP_ENV)
    c1 = time.process_time()
    rest = make_trainer(tmp_path, spec).fit()
    assert rest.resumed_from == 1
    # The finished run's figure holds epoch 1 (the first process) and epochs 2-3 (this one), nothing more.
    assert first.cpu_s < rest.cpu_s <= first.cpu_s + (time.process_time() - c1)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    spec = tiny_spec(epochs=3)
    full = make_trainer(tmp_path / "full", spec)
    res_full = full.fit()

    monkeypatch.setenv(STOP_ENV, "1")  # the test hook: stop after epoch 1, as if killed
    part = make_trainer(tmp_path / "part", spec)
    res_part = part.fit()
    assert res_part.status == "stopped" and res_part.epochs_completed == 1
    assert len(pd.read_csv(tmp_path / "part" / paths.TRAIN_LOG)) == 1
    monkeypatch.delenv(STOP_ENV)

    # A fresh process: the same frozen part (rebuilt from its weights), but other trainable values and
    # a disturbed global RNG, which the checkpoint and the per-epoch reseeding must make irrelevant.
    torch.manual_seed(0)
    model = TinyVideoNet(dropout=0.3)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    torch.manual_seed(999)
    resumed = Trainer(model, TinyClips(32), TinyClips(12, train=False), spec, seed=0,
                      run_dir=tmp_path / "part", progress=False)
    res_resumed = resumed.fit()
    assert res_resumed.resumed_from == 1 and res_resumed.status == "complete"
    assert history_without_time(res_resumed.history) == history_without_time(res_full.history)
    a, b = trainable(full.model), trainable(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name                         # bitwise on CPU
    log_full = pd.read_csv(tmp_path / "full" / paths.TRAIN_LOG).drop(columns=["epoch_time", "clips_per_s"])
    log_part = pd.read_csv(tmp_path / "part" / paths.TRAIN_LOG).drop(columns=["epoch_time", "clips_per_s"])
    pd.testing.assert_frame_equal(log_full, log_part)


def test_a_checkpoint_made_with_other_settings_is_set_aside_not_resumed(tmp_path, capsys):
    make_trainer(tmp_path, tiny_spec(epochs=1), meta={"compat": {"params_digest": "aaa"}}).fit()
    res = make_trainer(tmp_path, tiny_spec(epochs=2), meta={"compat": {"params_digest": "bbb"}}).fit()
    assert res.resumed_from == 0 and res.epochs_completed == 2          # trained from scratch
    assert (tmp_path / "train_state.stale.pt").exists()                   # the old one kept aside
    assert "params_digest" in capsys.readouterr().err


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    # batch 4 x accum 2 takes the same clips per optimizer step as batch 8 (sampler order is shared)
    a = make_trainer(tmp_path / "a", tiny_spec(epochs=2, batch_size=8, accum_steps=1), dropout=0.0)
    b = make_trainer(tmp_path / "b", tiny_spec(epochs=2, batch_size=4, accum_steps=2), dropout=0.0)
    ha, hb = a.fit().history, b.fit().history
    for ra, rb in zip(ha, hb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["lr"] == pytest.approx(rb["lr"])
    for (na, pa), (nb, pb) in zip(trainable(a.model).items(), trainable(b.model).items()):
        assert torch.allclose(pa, pb, atol=1e-5), na


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    h0 = make_trainer(tmp_path / "a", tiny_spec(epochs=1)).fit().history
    h0b = make_trainer(tmp_path / "b", tiny_spec(epochs=1)).fit().history
    h1 = make_trainer(tmp_path / "c", tiny_spec(epochs=1), seed=1).fit().history
    assert history_without_time(h0) == history_without_time(h0b)
    assert h0[0]["train_loss"] != h1[0]["train_loss"]


def test_too_small_training_set_is_a_clear_error(tmp_path):
    with pytest.raises(AmflowError, match="fewer than one optimizer step"):
        make_trainer(tmp_path, tiny_spec(batch_size=16, accum_steps=4), n_train=32).fit()


def test_workers_do_not_change_the_result(tmp_path):
    h0 = make_trainer(tmp_path / "a", tiny_spec(epochs=1, num_workers=0)).fit().history
    h2 = make_trainer(tmp_path / "b", tiny_spec(epochs=1, num_workers=2)).fit().history
    assert history_without_time(h0) == history_without_time(h2)


@pytest.mark.timeout(300, method="thread")  # the fault is a wait that never ends, even for signals
def test_loader_workers_start_after_opencv_ran_threads_in_this_process(tmp_path):
    import cv2
    import numpy as np

    cv2.setNumThreads(2)     # OpenCV's thread pool, busy in this process before the loader forks
    for _ in range(3):
        cv2.resize(np.zeros((1024, 1024, 3), np.uint8), (2048, 2048))
    res = make_trainer(tmp_path, tiny_spec(epochs=1, num_workers=2)).fit()
    assert res.status == "complete"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_short_amp_run_on_cuda(tmp_path):
    from amflow.train.distributed import init_distributed

    t = make_trainer(tmp_path, tiny_spec(epochs=2, device="cuda", amp=True), ctx=init_distributed("cuda"))
    assert t.amp
    res = t.fit()
    assert res.status == "complete"
    assert all(math.isfinite(r["train_loss"]) for r in res.history)
    assert t.model.last_dtype == torch.bfloat16          # autocast was on
    assert next(t.model.parameters()).device.type == "cuda"


class _WorkerState(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        import resource

        import cv2

        return torch.tensor([cv2.getNumThreads(), resource.getrlimit(resource.RLIMIT_NOFILE)[0]])


def test_loader_workers_use_one_opencv_thread_and_the_hard_descriptor_limit():
    import resource

    from amflow.train.trainer import loader_worker_init

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))  # the worker inherits a low soft limit
    try:
        loader = torch.utils.data.DataLoader(_WorkerState(), num_workers=1, worker_init_fn=loader_worker_init)
        threads, limit = next(iter(loader))[0].tolist()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert threads == 1
    assert limit == (hard if hard != resource.RLIM_INFINITY else 1 << 20)


def test_progress_to_a_file_reads_the_loss_only_for_its_lines(tmp_path, monkeypatch):
    """Each progress figure is a device sync; written to a log file it comes with a log line, not every step."""
    import sys

    from amflow import progress

    reads = []
    real = progress.tqdm.set_postfix
    monkeypatch.setattr(progress.tqdm, "set_postfix", lambda self, *a, **k: (reads.append(1), real(self, *a, **k)))
    monkeypatch.setattr(progress, "LINES_PER_BAR", 2)  # a line every half epoch
    log = open(tmp_path / "train.log", "w")
    monkeypatch.setattr(sys, "stderr", log)  # as under Snakemake: `> {log} 2>&1`
    try:
        t = make_trainer(tmp_path / "run", tiny_spec(epochs=2))
        t.progress = True
        t.fit()
    finally:
        log.close()
    steps = t.steps_per_epoch * 2
    assert steps >= 8 and len(reads) == 2 * 2, (steps, len(reads))  # two lines an epoch, one figure each
    assert "\r" not in (tmp_path / "train.log").read_text()
