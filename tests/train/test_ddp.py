"""DDP under torchrun (2 CPU processes, gloo) follows the single-process loss curve at the same global batch.

Why they can match: the sampler's permutation depends only on (seed, epoch), rank r takes positions
r, r+2, ... of each global batch, and DDP averages the two half-batch gradients, which equals the
full-batch mean gradient. What differs is floating-point summation order (and, with dropout, the
per-rank random streams: the stand-in has no dropout here). Tolerance: relative 1e-5 on the
per-epoch train loss, 1e-5 absolute on the final weights, exact on validation accuracy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from amflow import paths
from amflow.errors import AmflowError
from amflow.train.distributed import DistContext, init_distributed, per_process_batch

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"

SCRIPT = r'''
import json, os, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from standins_train import TinyClips, TinyVideoNet, tiny_spec
from amflow.train.distributed import init_distributed
from amflow.train.trainer import Trainer

class Stop(Exception):
    pass


def stop_at_2(record):
    if record["epoch"] == 2:
        raise Stop()


ctx = init_distributed("cpu")
if ctx.rank == 1:  # a late rank: it reaches the checkpoint after rank 0 has decided on it
    time.sleep(float(os.environ.get("TEST_RANK1_DELAY_S", "0")))
torch.manual_seed(0)
model = TinyVideoNet(dropout=0.0)
callbacks = [stop_at_2] if len(sys.argv) > 2 else []
try:
    res = Trainer(model, TinyClips(40), TinyClips(10, train=False), tiny_spec(epochs=3, batch_size=8), seed=0,
                  run_dir=sys.argv[1], ctx=ctx, progress=False, callbacks=callbacks,
                  meta={{"compat": {{"params_digest": os.environ.get("TEST_DIGEST", "a")}}}}).fit()
except Stop:
    sys.exit(3)
out = {{"rank": ctx.rank, "world": ctx.world_size, "history": res.history, "status": res.status,
        "resumed_from": res.resumed_from,
        "weights": {{n: p.detach().tolist() for n, p in model.named_parameters() if p.requires_grad}}}}
with open(f"{{sys.argv[1]}}/result_rank{{ctx.rank}}.json", "w") as f:
    json.dump(out, f)
ctx.close()
'''


def run(cmd, tmp_path, expect_ok=True, **env_extra):
    env = {**os.environ, "AMFLOW_TRACKING": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env_extra}
    env.pop("AMFLOW_STOP_AFTER_EPOCH", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
def test_two_cpu_processes_match_one_process(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    run([sys.executable, str(script), str(one)], tmp_path)
    run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(two)], tmp_path)

    single = json.loads((one / "result_rank0.json").read_text())
    ranks = [json.loads((two / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    assert single["world"] == 1 and ranks[0]["world"] == 2
    for rank in ranks:  # every rank sees the same (all-reduced) figures
        for a, b in zip(single["history"], rank["history"]):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
            assert b["train_acc"] == a["train_acc"]
            assert b["val_top1"] == a["val_top1"]
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
            assert b["lr"] == pytest.approx(a["lr"])
        for name, w in single["weights"].items():
            assert torch.allclose(torch.tensor(rank["weights"][name]), torch.tensor(w), atol=1e-5), name
    # Only rank 0 wrote the run's files.
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint.pt", "result_rank0.json", "result_rank1.json",
                                                     "train_log.csv", "train_state.pt"]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
def test_a_stop_on_rank_0_reaches_every_rank(tmp_path):
    """A rank-0 callback that ends the run (a sweep's pruner) must not leave rank 1 waiting in a collective."""
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    out = tmp_path / "stop"
    out.mkdir()
    t0 = time.perf_counter()
    proc = run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(out), "stop"], tmp_path,
               expect_ok=False)
    assert proc.returncode != 0 and time.perf_counter() - t0 < 120      # rank 0's exit code 3, no hang
    rank1 = json.loads((out / "result_rank1.json").read_text())
    assert rank1["status"] == "stopped" and len(rank1["history"]) == 2
    assert not (out / "result_rank0.json").exists()                     # rank 0 raised the callback's error


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside the interpreter")
def test_rerun_after_a_params_change_sets_the_checkpoint_aside_on_every_rank(tmp_path):
    """Rank 0 decides that the checkpoint is stale and moves it; a late rank 1 must follow that decision
    (not look for the file itself, find it gone and skip the barrier: a hang) and train from scratch."""
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    out = tmp_path / "run"
    out.mkdir()
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(out)]
    run(cmd, tmp_path, TEST_DIGEST="a")
    first = json.loads((out / "result_rank0.json").read_text())
    run(cmd, tmp_path, TEST_DIGEST="a")  # same params: resumes after the last epoch, nothing to train
    assert [json.loads((out / f"result_rank{r}.json").read_text())["resumed_from"] for r in (0, 1)] == [3, 3]
    run(cmd, tmp_path, TEST_DIGEST="b", TEST_RANK1_DELAY_S="3")  # params changed, rank 1 late
    assert (out / "train_state.stale.pt").exists() and (out / paths.CHECKPOINT).exists()
    for r in (0, 1):
        again = json.loads((out / f"result_rank{r}.json").read_text())
        assert again["status"] == "complete" and again["resumed_from"] == 0 and len(again["history"]) == 3
        # trained from scratch: the same curve as the first run (same seed and data)
        assert [h["train_loss"] for h in again["history"]] == pytest.approx(
            [h["train_loss"] for h in first["history"]], rel=1e-6)


def test_global_batch_must_divide_by_world_size():
    assert per_process_batch(16, 4) == 4
    with pytest.raises(AmflowError, match="not divisible by the 3 processes"):
        per_process_batch(16, 3)


def test_single_process_needs_no_process_group(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0] and ctx.broadcast_object("x") == "x"
    assert not torch.distributed.is_initialized()


def test_cuda_requested_without_gpu_is_an_error(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(AmflowError, match="CUDA is unusable"):
        init_distributed("cuda")
    assert DistContext().device.type == "cpu"


def test_unusable_cuda_fails_at_once_with_the_driver_and_wheel_facts(monkeypatch, tmp_path, capsys):
    from amflow.train import distributed

    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
                    "GCC version:  gcc version 12.3.0\n")
    assert distributed.nvidia_driver_version(proc) == "535.104.05"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n")
    assert distributed.nvidia_driver_version(proc) == "580.65.06"
    assert distributed.nvidia_driver_version(tmp_path / "absent") is None

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(distributed, "nvidia_driver_version", lambda: "535.104.05")
    with pytest.raises(AmflowError) as err:
        distributed.resolve_device("cuda")
    msg = str(err.value)
    assert "CUDA 13.0" in msg and "580.65.06 or newer" in msg and "driver is 535.104.05" in msg and "\n" not in msg
    # auto on a machine with a driver but no usable CUDA still runs, but says why on stderr
    assert distributed.resolve_device("auto").type == "cpu"
    assert "CUDA is unusable" in capsys.readouterr().err
    monkeypatch.setattr(distributed, "nvidia_driver_version", lambda: None)
    with pytest.raises(AmflowError, match="no NVIDIA driver loaded"):
        distributed.resolve_device("cuda")


def test_gpu_params_files_ask_for_cuda_explicitly():
    """A GPU job must fail at once rather than train on the CPU until its time limit."""
    from amflow.params_io import load_params

    for name in ("k400", "ssv2", "smarthome", "synth_full"):
        assert load_params(ROOT / "params" / f"{name}.yaml").train.device == "cuda", name
