"""Checkpoints: safe loading, clear errors for corrupt or mismatched files, what is (not) stored."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from amflow import paths
from amflow.errors import AmflowError
from amflow.train import checkpoint as ckpt
from amflow.train.trainer import Trainer
from standins_train import TinyClips, TinyVideoNet, tiny_spec

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    monkeypatch.setenv("AMFLOW_TRACKING", "0")
    monkeypatch.delenv("AMFLOW_STOP_AFTER_EPOCH", raising=False)


def trained_run(run_dir, epochs=1):
    torch.manual_seed(0)
    model = TinyVideoNet()
    Trainer(model, TinyClips(16), TinyClips(8, train=False), tiny_spec(epochs=epochs), seed=0, run_dir=run_dir,
            progress=False, meta={"compat": {"method": "x"}}).fit()
    return model, run_dir / paths.CHECKPOINT


def test_checkpoint_holds_only_safe_types_and_trainable_weights(tmp_path):
    model, path = trained_run(tmp_path)
    state = torch.load(path, weights_only=True)  # would raise on any pickled object
    assert state["epoch"] == 1 and state["format"] == ckpt.FORMAT
    assert "encoder.weight" not in state["model"]               # frozen: rebuilt from its weights file
    assert set(state["model"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert torch.equal(state["model"]["head.weight"], model.head.weight.detach())
    assert len(state["history"]) == 1 and state["meta"]["compat"] == {"method": "x"}
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 2  # 16 clips / batch 8


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_checkpoint_is_a_clear_error_naming_the_file(tmp_path, damage):
    _, path = trained_run(tmp_path)
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(AmflowError) as err:
        ckpt.load_checkpoint(path)
    assert str(path) in str(err.value) and "delete it" in str(err.value)
    # The trainer surfaces the same error when it finds its training state so on resume.
    (tmp_path / paths.TRAIN_STATE).write_bytes(damaged)
    torch.manual_seed(0)
    with pytest.raises(AmflowError, match=f"{tmp_path / paths.TRAIN_STATE}: checkpoint is corrupted"):
        Trainer(TinyVideoNet(), TinyClips(16), None, tiny_spec(epochs=2), seed=0, run_dir=tmp_path,
                progress=False).fit()


def test_a_foreign_torch_file_is_refused(tmp_path):
    path = tmp_path / paths.CHECKPOINT
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(AmflowError, match="not an amflow training checkpoint"):
        ckpt.load_checkpoint(path)


def test_weights_of_another_model_are_refused(tmp_path):
    _, path = trained_run(tmp_path)
    state = ckpt.load_checkpoint(path)
    other = TinyVideoNet(dim=8)
    with pytest.raises(AmflowError, match="does not match the model"):
        ckpt.load_trainable_state(other, {"nonsense.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError):  # right names, wrong shapes: torch's own size-mismatch error
        ckpt.load_trainable_state(other, state["model"], path)


def test_changed_frozen_backbone_is_detected(tmp_path):
    model, path = trained_run(tmp_path)
    state = ckpt.load_checkpoint(path)
    ckpt.check_fingerprint(model, state["frozen_fingerprint"], path)  # unchanged: fine
    with torch.no_grad():
        model.encoder.weight.mul_(1.01)
    with pytest.raises(AmflowError, match="frozen backbone differs"):
        ckpt.check_fingerprint(model, state["frozen_fingerprint"], path)


def test_no_temporary_files_are_left_behind(tmp_path):
    trained_run(tmp_path, epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "train_log.csv", "train_state.pt"]


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trained_run(tmp_path, epochs=1)
    path = tmp_path / paths.TRAIN_STATE
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(AmflowError) as err:  # resumes from epoch 1; saving epoch 2 finds the disk full
        trained_run(tmp_path, epochs=2)
    assert str(err.value).startswith(f"{path}: the disk is full") and "intact" in str(err.value)
    assert path.read_bytes() == before and (tmp_path / paths.CHECKPOINT).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "train_log.csv", "train_state.pt"]
