"""The generic training loop: a model, a :class:`Task` (how batches are drawn, the loss of one, validation)
and the training state that makes a run resumable. The default task, :class:`ClipTask`, trains any
``model(video, transforms) -> logits`` on a dataset of clip dicts (``amflow train``); backbone
pretraining brings its own (:class:`amflow.train.pretraining.AttributeTask`).

What it guarantees (and the tests check):

- **Determinism.** Every RNG (python, numpy, torch) is reseeded at the start of each epoch from
  ``(seed, epoch, rank)``; the data order comes from a ``DistributedSampler`` seeded with ``seed``
  (its permutation does not depend on the world size); DataLoader workers get seeds from a generator
  reseeded per epoch; the dataset's ``set_epoch`` is called. On CPU deterministic algorithms are on.
  So a run stopped after epoch k and resumed ends bitwise equal to an uninterrupted one. A task that
  draws from its own generators across epochs stores their state in the training state
  (:meth:`Task.state_dict`), which keeps that guarantee.
- **World-size invariance.** ``train.batch_size`` is the global batch of one loader step; each of W
  processes takes ``batch_size / W`` of it (rank r gets positions r, r+W, ... of each global batch),
  and DDP averages gradients, so the loss curve matches a single process at the same global batch
  (up to floating-point summation order). Gradient accumulation multiplies the batch per optimizer
  step by ``accum_steps``. Training drops the last incomplete global batch.
- **Validation** runs every epoch on the val split, sharded over ranks without padding (rank r takes
  items r, r+W, ...); correct counts and loss sums are all-reduced, so the figures are exact and
  identical on every rank. ``val_loss`` is plain cross-entropy (no label smoothing).
- Only rank 0 writes the training state (every epoch, atomically; ``checkpoint.pt`` once complete, see
  :mod:`amflow.train.checkpoint`) and ``train_log.csv``, and calls the epoch callbacks (MLflow logging,
  a sweep's pruner). A callback may raise to end the run: rank 0 broadcasts the decision, the other
  ranks return ``status="stopped"`` and rank 0 re-raises.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from amflow import io, parallel, paths, progress
from amflow.data.frame_cache import raise_open_file_limit
from amflow.data.frame_codec import init_worker as init_decoder_worker
from amflow.errors import AmflowError
from amflow.models.inference import autocast, clip_probs, collate_clips, coverage_input
from amflow.params import TrainSpec
from amflow.train import checkpoint as ckpt
from amflow.train.distributed import DistContext, per_process_batch
from amflow.train.schedule import build_scheduler, param_groups

LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_top1", "val_loss", "epoch_time", "clips_per_s")
STOP_ENV = "AMFLOW_STOP_AFTER_EPOCH"


# --------------------------------------------------------------------------- seeding
def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def loader_worker_init(worker_id: int) -> None:
    """DataLoader worker set-up (training and evaluation): seeds, one OpenCV thread, descriptors."""
    # torch gives each worker base_seed + worker_id (base_seed from the loader's generator, which we
    # reseed every epoch); derive numpy/python seeds from it so no worker shares a stream.
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
    init_decoder_worker()      # one OpenCV thread per worker: N workers x all cores oversubscribes the node
    raise_open_file_limit()    # a worker maps many shards over an epoch (Kinetics: thousands)


# --------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    status: str                      # "complete" or "stopped" (test hook / stop_after_epoch)
    history: list[dict[str, float]]
    elapsed_s: float
    epochs_completed: int
    cpu_s: float = 0.0               # this process's CPU seconds in those epochs (all its threads)
    resumed_from: int = 0            # epochs already done when this process started
    extra: dict[str, Any] = field(default_factory=dict)


NORM_PREFIX = "norm."  # an epoch record's integration weight norms (VideoModel.integration_norms)


def write_train_log(path: Path, history: list[dict]) -> None:
    columns = list(LOG_COLUMNS) + sorted({k for row in history for k in row if k.startswith(NORM_PREFIX)})
    table = pd.DataFrame([{k: row.get(k) for k in columns} for row in history], columns=columns)
    with io.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def stop_after_from_env() -> Optional[int]:
    value = os.environ.get(STOP_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise AmflowError(f"{STOP_ENV}={value!r} must be an integer number of epochs") from None


# --------------------------------------------------------------------------- tasks
class Task:
    """What the loop trains on: the data order, the loss of a batch and the validation figures.

    :meth:`setup` is called once the model is on its device and returns the loader steps of one epoch
    (micro-batches: ``accum_steps`` of them make an optimizer step); :meth:`batches` gives an epoch's
    batches in order, after the trainer reseeded every global RNG for the epoch; :meth:`loss` returns
    ``(loss, items, correct)`` for one batch (``correct``: a float64 tensor, the items right);
    :meth:`validate` the epoch's ``val_top1`` and ``val_loss`` (also when there is nothing to validate:
    NaN). :meth:`state_dict` holds what the task draws from across epochs (generator states), saved
    with the training state and restored by :meth:`load_state_dict` on resume."""

    def setup(self, trainer: "Trainer") -> int:
        raise NotImplementedError

    def batches(self, epoch: int) -> Iterable:
        raise NotImplementedError

    def loss(self, net: torch.nn.Module, batch) -> tuple[torch.Tensor, int, torch.Tensor]:
        raise NotImplementedError

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def warmup_steps(self, spec: TrainSpec, steps_per_epoch: int, total: int) -> int:
        return min(total, int(round(spec.warmup_epochs * steps_per_epoch)))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ClipTask(Task):
    """Clip classification (``amflow train``): ``model(video, transforms) -> logits`` on clip dicts,
    cross-entropy with ``train.label_smoothing``. The data order comes from a ``DistributedSampler``
    seeded with the run's seed; loader workers get seeds from a generator reseeded per epoch; the last
    incomplete global batch is dropped. ``collate`` batches the items, ``normalise`` turns uint8 clips
    into model input on the device (training and validation alike)."""

    def __init__(self, train_set: Dataset, val_set: Optional[Dataset], collate: Callable = collate_clips,
                 normalise: Optional[Callable] = None):
        self.train_set, self.val_set = train_set, val_set
        self.collate = collate
        self.normalise = normalise or (lambda video: video)

    def setup(self, trainer: "Trainer") -> int:
        spec, ctx, self.trainer = trainer.spec, trainer.ctx, trainer
        self.batch = per_process_batch(spec.batch_size, ctx.world_size)
        # One sampler for every world size: its permutation depends only on (seed, epoch).
        self.sampler = DistributedSampler(self.train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=trainer.seed, drop_last=True)
        self.loader_gen = torch.Generator()
        if spec.num_workers > 0:
            parallel.before_forking_workers()
        common = dict(num_workers=spec.num_workers, collate_fn=self.collate, worker_init_fn=loader_worker_init,
                      pin_memory=trainer.device.type == "cuda", persistent_workers=False)
        self.train_loader = DataLoader(self.train_set, batch_size=self.batch, sampler=self.sampler, drop_last=True,
                                       generator=self.loader_gen, **common)
        self.val_loader = None
        if self.val_set is not None and len(self.val_set) > 0:
            shard = Subset(self.val_set, list(range(ctx.rank, len(self.val_set), ctx.world_size)))
            self.val_loader = DataLoader(shard, batch_size=self.batch, shuffle=False, drop_last=False,
                                         generator=torch.Generator().manual_seed(trainer.seed), **common)
        return len(self.train_loader)

    def batches(self, epoch: int) -> Iterable:
        t = self.trainer
        self.sampler.set_epoch(epoch)
        self.loader_gen.manual_seed(epoch_seed(t.seed, epoch, 10**6 + t.ctx.rank))
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        return self.train_loader

    def loss(self, net: torch.nn.Module, batch) -> tuple[torch.Tensor, int, torch.Tensor]:
        t = self.trainer
        dev = t.device
        labels = batch["label"].to(dev, non_blocking=True)
        video = self.normalise(batch["video"].to(dev, non_blocking=True))
        transforms = batch["transforms"]
        if transforms is not None:
            transforms = transforms.to(dev, non_blocking=True)
        with autocast(dev, t.amp):
            logits = net(video, transforms, **coverage_input(batch.get("coverage"), dev))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=t.spec.label_smoothing)
        return loss, labels.shape[0], (logits.detach().argmax(dim=-1) == labels).sum().double()

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        if self.val_loader is None:
            return {"val_top1": math.nan, "val_loss": math.nan}
        t = self.trainer
        loss_sum = correct = count = 0.0
        for batch in self.val_loader:
            probs = clip_probs(model, batch["video"], batch["transforms"], t.device, t.amp, self.normalise,
                               batch.get("coverage"))
            labels = batch["label"].to(t.device)
            loss_sum += float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
            correct += float((probs.argmax(dim=-1) == labels).sum())
            count += labels.shape[0]
        loss_sum, correct, count = t.ctx.all_reduce_sum([loss_sum, correct, count])
        return {"val_top1": correct / count, "val_loss": loss_sum / count}


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Train ``model`` (whose frozen parameters have ``requires_grad=False``), saving its state every epoch.

    ``task`` says what to train on (default: a :class:`ClipTask` over ``train_set`` and ``val_set`` with
    ``collate`` and ``normalise``). ``meta`` is stored in the checkpoint; its ``compat`` dict must match on
    resume (so a run folder is never resumed with different params). ``callbacks`` are called on rank 0
    after each epoch's save with the epoch's record (a dict with :data:`LOG_COLUMNS`).
    """

    def __init__(self, model: torch.nn.Module, train_set: Optional[Dataset], val_set: Optional[Dataset],
                 spec: TrainSpec, *, seed: int, run_dir: Path, ctx: Optional[DistContext] = None,
                 meta: Optional[dict] = None, callbacks: Iterable[Callable[[dict], None]] = (),
                 stop_after_epoch: Optional[int] = None, progress: bool = True, collate: Callable = collate_clips,
                 normalise: Optional[Callable] = None, task: Optional[Task] = None):
        self.model = model
        self.task = task or ClipTask(train_set, val_set, collate, normalise)
        self.spec = spec
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.ctx = ctx or DistContext()
        self.meta = dict(meta or {})
        self.callbacks = list(callbacks)
        self.stop_after_epoch = stop_after_epoch if stop_after_epoch is not None else stop_after_from_env()
        self.progress = progress
        self.device = self.ctx.device
        self.amp = bool(spec.amp and self.device.type == "cuda")
        self.state_path = self.run_dir / paths.TRAIN_STATE
        self.checkpoint_path = self.run_dir / paths.CHECKPOINT
        self.log_path = self.run_dir / paths.TRAIN_LOG

    # ------------------------------------------------------------------ set-up
    def _loaders(self) -> None:
        spec = self.spec
        self.steps_per_epoch = self.task.setup(self) // spec.accum_steps
        if self.steps_per_epoch == 0:
            raise AmflowError(f"the training set has {len(self.task.train_set)} items, fewer than one optimizer "
                              f"step (train.batch_size {spec.batch_size} x train.accum_steps {spec.accum_steps}): "
                              f"lower the batch size or accumulation")

    def _optim(self) -> None:
        spec = self.spec
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise AmflowError("the model has no trainable parameters (every parameter is frozen)")
        self.optimizer = torch.optim.AdamW(param_groups(self.model, spec.weight_decay), lr=spec.lr)
        total = self.steps_per_epoch * spec.epochs
        warmup = self.task.warmup_steps(spec, self.steps_per_epoch, total)
        self.scheduler = build_scheduler(self.optimizer, total, warmup)

    def _resume(self) -> tuple[int, list[dict], float, float]:
        # Rank 0 alone looks at the file and decides; the others follow its word. Were every rank to
        # check for itself, a late rank could look while rank 0 moves a stale file aside, then skip
        # the barrier (collectives out of step: a hang until the NCCL timeout) or fail to load.
        decision, error = "fresh", None
        if self.ctx.is_main and self.state_path.exists():
            try:
                stale = self._stale_reason(ckpt.load_checkpoint(self.state_path))
                decision = f"stale: {stale}" if stale else "resume"
            except AmflowError as exc:  # a corrupted file: every rank stops with rank 0's message
                error = str(exc)
        decision, error = self.ctx.broadcast_object((decision, error))
        if error:
            raise AmflowError(error)
        if decision == "fresh":
            return 0, [], 0.0, 0.0
        if decision.startswith("stale"):
            # The run's settings or backbone changed since this state was saved (Snakemake and DVC rerun the
            # job then): resuming would mix two configurations, so start over and keep the old file aside.
            self.ctx.barrier()  # every rank is past its last use of the run folder
            if self.ctx.is_main:
                aside = self.state_path.with_name("train_state.stale.pt")
                os.replace(self.state_path, aside)
                print(f"{self.state_path}: {decision[len('stale: '):]}; moved it to {aside.name} and "
                      "training from scratch", file=sys.stderr)
            self.ctx.barrier()  # the file is gone before any rank goes on
            return 0, [], 0.0, 0.0
        state = ckpt.load_checkpoint(self.state_path)  # every rank reads it (a shared filesystem)
        ckpt.load_trainable_state(self.model, state["model"], self.state_path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.task.load_state_dict(state.get("task", {}))
        return (int(state["epoch"]), list(state["history"]), float(state.get("elapsed_s", 0.0)),
                float(state.get("cpu_s", 0.0)))

    def _stale_reason(self, state: dict) -> Optional[str]:
        """Why ``state`` cannot be resumed by this run (different settings or backbone), or None."""
        saved = state["meta"].get("compat", {})
        for key, value in self.meta.get("compat", {}).items():
            if key in saved and saved[key] != value:
                return f"written with a different {key} ({saved[key]!r}, now {value!r})"
        if "frozen_fingerprint" in state:
            try:
                ckpt.check_fingerprint(self.model, state["frozen_fingerprint"], self.state_path)
            except AmflowError:
                return "written with a different frozen backbone"
        return None

    def _wrap(self) -> torch.nn.Module:
        if not self.ctx.distributed:
            return self.model
        # Every rank builds the same frozen backbone from the same file: check it instead of
        # broadcasting it, and leave frozen tensors out of DDP (only trainable ones are all-reduced).
        prints = self.ctx.all_gather_object(self._frozen_print)
        if any(abs(a - b) > 1e-9 * max(1.0, abs(a)) for p in prints for a, b in zip(p, prints[0])):
            raise AmflowError(f"the frozen backbone differs between processes ({prints}); every process must "
                              "load the same backbone weights file")
        frozen = [n for n, p in self.model.named_parameters() if not p.requires_grad]
        # The one private torch call: DDP has no public way to leave some parameters out of its
        # initial broadcast (init_sync=False skips them all). Without it the result is the same, only
        # the broadcast bigger; torch is pinned in pyproject.toml and tests/train/test_ddp.py runs this path.
        if hasattr(DDP, "_set_params_and_buffers_to_ignore_for_model"):
            DDP._set_params_and_buffers_to_ignore_for_model(self.model, frozen)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(self.model, device_ids=ids, find_unused_parameters=False)

    # ------------------------------------------------------------------ loop
    def fit(self) -> TrainResult:
        saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if self.device.type == "cpu":
            # Deterministic kernels where torch has them (warn_only: some ops have no deterministic version).
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit()
        finally:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])  # a process-wide switch: put it back

    def _fit(self) -> TrainResult:
        self.model.to(self.device)
        self._frozen_print = ckpt.frozen_fingerprint(self.model)  # the backbone never changes: once
        self._loaders()
        self._optim()
        start, history, elapsed, cpu = self._resume()
        self.net = self._wrap()
        resumed_from = start
        if start and self.ctx.is_main:
            print(f"resuming {self.run_dir} from epoch {start} ({self.state_path})", file=sys.stderr)
        status = "complete"
        for epoch in range(start, self.spec.epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            record = self._train_epoch(epoch)
            record.update(self._validate())
            # Zero-initialised integration weights that never leave zero show here, epoch by epoch.
            norms = getattr(self.model, "integration_norms", dict)()
            record.update({NORM_PREFIX + k: v for k, v in norms.items()})
            record["epoch_time"] = time.perf_counter() - t0
            elapsed += record["epoch_time"]
            # Learning's own CPU seconds, so that the overhead share (amflow.report.timing) need not assume
            # that start-up and epochs use the cores alike. DataLoader workers are other processes.
            cpu += time.process_time() - c0
            history.append(record)
            failure: Optional[BaseException] = None
            if self.ctx.is_main:
                try:
                    self._save(epoch + 1, history, elapsed, cpu)
                    write_train_log(self.log_path, history)
                    print(self._summary(record), file=sys.stderr)
                    for cb in self.callbacks:
                        cb(record)
                except BaseException as exc:  # a callback stopping the run, or a write error
                    failure = exc
            # Rank 0 tells the others whether to go on, so none is left waiting in a collective.
            if self.ctx.broadcast_object(failure is not None):
                if failure is not None:
                    raise failure
                status = "stopped"
                break
            if self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch and epoch + 1 < self.spec.epochs:
                status = "stopped"
                break
        if status == "complete" and self.ctx.is_main:
            ckpt.publish(self.state_path, self.checkpoint_path)
        return TrainResult(status=status, history=history, elapsed_s=elapsed,
                           epochs_completed=len(history), resumed_from=resumed_from, cpu_s=cpu)

    def _summary(self, r: dict) -> str:
        return (f"epoch {r['epoch']}/{self.spec.epochs}: loss {r['train_loss']:.4f} acc {r['train_acc']:.3f} "
                f"val_top1 {r['val_top1']:.3f} val_loss {r['val_loss']:.4f} lr {r['lr']:.2e} "
                f"{r['clips_per_s']:.1f} clips/s (data wait {r['data_wait_frac']:.0%}) {r['epoch_time']:.1f}s")

    def _save(self, epochs_done: int, history: list[dict], elapsed: float, cpu: float) -> None:
        task_state = self.task.state_dict()
        ckpt.save_checkpoint(self.state_path, {
            "format": ckpt.FORMAT,
            "epoch": epochs_done,
            "model": ckpt.trainable_state(self.model),
            "frozen_fingerprint": self._frozen_print,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
            "elapsed_s": elapsed,
            "cpu_s": cpu,
            "meta": self.meta,
            **({"task": task_state} if task_state else {}),  # a clip run's file stays as it was
        })

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        spec, ctx, dev = self.spec, self.ctx, self.device
        seed_everything(epoch_seed(self.seed, epoch, ctx.rank))
        it = iter(self.task.batches(epoch))
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.float64, device=dev)
        count, wait = 0, 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        bar = progress.bar(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{spec.epochs}", unit="step",
                           disable=not (self.progress and ctx.is_main), leave=False)
        # The running loss is read (a device sync) only as often as a log line is written.
        show_every = progress.every(self.steps_per_epoch)
        t0 = time.perf_counter()
        for step in range(self.steps_per_epoch):
            for micro in range(spec.accum_steps):
                t_wait = time.perf_counter()
                batch = next(it)
                wait += time.perf_counter() - t_wait
                # Gradients are all-reduced only on the last micro-batch of an optimizer step.
                sync = micro == spec.accum_steps - 1 or not ctx.distributed
                with (contextlib.nullcontext() if sync else self.net.no_sync()):
                    loss, n, hits = self.task.loss(self.net, batch)
                    (loss / spec.accum_steps).backward()
                loss_sum += loss.detach().double() * n
                correct += hits
                count += n
            if spec.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.trainable, spec.grad_clip)
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if not bar.disable:
                if (step + 1) % show_every == 0 or step + 1 == self.steps_per_epoch:
                    rate = count * ctx.world_size / max(1e-9, time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{float(loss_sum) / count:.4f}", clips_s=f"{rate:.1f}", refresh=False)
                bar.update(1)
        bar.close()
        train_time = time.perf_counter() - t0
        s_loss, s_correct, s_count, s_wait = ctx.all_reduce_sum(
            [float(loss_sum), float(correct), float(count), wait / max(1e-9, train_time)])
        # data_wait_frac: share of the loop spent waiting for the DataLoader (mean over ranks); near 0
        # when the model is the bottleneck. In train.json and MLflow, not in train_log.csv.
        return {"epoch": epoch + 1, "lr": lr, "train_loss": s_loss / s_count, "train_acc": s_correct / s_count,
                "clips_per_s": s_count / max(1e-9, train_time), "data_wait_frac": s_wait / ctx.world_size}

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        self.model.eval()  # unwrapped: evaluation needs no gradient sync
        return self.task.validate(self.model)
