"""Pretraining the embedded default's small ViT (docs/design.md 2.6), what `amflow pretrain-backbone`
(:mod:`amflow.stages.pretrain_backbone`) runs.

No image weights can be downloaded offline, so the pipeline pretrains its own backbone on the
single-image attribute set (:mod:`amflow.data.pretrain_images`): one linear head per attribute
(shape, colour, position, orientation, size) on the CLS features, trained together with the sum of
their cross-entropies (binary cross-entropies over the classes where a label is the set of classes
several lookalike objects show: the ``clutter`` style). Several attributes, position among them, push the features to say *what* is
*where*, the closest cheap stand-in for DINOv2's dense features. Labels never involve motion.

Recipe: AdamW (no weight decay on norms, biases, position embedding and tokens), linear warm-up then
cosine decay per step, light augmentation that keeps every label true (brightness, contrast and
pixel noise: no flips, rotations, crops or hue changes, since orientation, position, size and colour
are labels). Inputs are normalised with ``params.sampling.mean/std``, as the video models normalise
their frames. Deterministic on CPU for a given seed and thread count.

Training runs through the video runs' loop (:class:`amflow.train.trainer.Trainer`) with an
:class:`AttributeTask`: the same training state ``train_state.pt`` after every epoch (resumed by a rerun
with the same settings, a SLURM retry after a time limit; one written with other settings is moved
aside to ``train_state.stale.pt``, with a message), ``train_log.csv``, ``checkpoint.pt`` once complete,
and ``AMFLOW_STOP_AFTER_EPOCH=k`` to stop after epoch k as if the job were killed (tests). On CPU a
resumed run ends bitwise equal to an uninterrupted one. The data order and the augmentation draw
from one generator seeded once with ``pretrain.seed`` (on a GPU the augmentation from a second one,
on the device), whose state the training state carries; every epoch keeps its last, smaller batch.
Device: ``params.train.device`` (CUDA with bf16 autocast when ``train.amp``; ``synth_full``'s 100k
images at 64 px would take hours on a CPU).

Outputs: ``backbone.safetensors`` (the timm model's ``state_dict()``, heads excluded) and
``metrics.json`` (the val accuracies after the last epoch); ``amflow pretrain-backbone`` also tracks
the pretraining as an MLflow run. If the mean accuracy gain over chance stays below
``params.pretrain.min_gain_over_chance`` (when above 0) the stage fails with :class:`AmflowError` and
writes neither. Chance is the accuracy of always predicting the most frequent val class.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from amflow import identity
from amflow.data import pretrain_images as pimg
from amflow.errors import AmflowError
from amflow.models.inference import autocast
from amflow.params import Params, TrainSpec
from amflow.train.distributed import DistContext, resolve_device
from amflow.train.trainer import Task, Trainer

WARMUP_SHARE = 0.05  # share of the optimisation steps spent in linear warm-up
EVAL_BATCH = 512


class AttributeModel(nn.Module):
    """The backbone and one linear head per attribute on its features: ``forward`` gives the logits by name."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict):
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return {name: head(feats) for name, head in self.heads.items()}


def build_model(params: Params, attributes: list[dict]) -> AttributeModel:
    """The timm ViT exactly as the video models build it, with one linear head per attribute."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    spec = params.backbone
    try:
        backbone = timm.create_model(spec.model, pretrained=False, num_classes=0, **spec.kwargs)
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as exc:
        raise AmflowError(f"params backbone.model / backbone.kwargs: timm cannot build '{spec.model}' "
                          f"with kwargs {spec.kwargs}: {exc}") from exc
    heads = nn.ModuleDict({a["name"]: nn.Linear(backbone.num_features, a["classes"]) for a in attributes})
    return AttributeModel(backbone, heads)


def _augment(x, generator):
    """Brightness, contrast and pixel noise on [0, 1] images; every label stays true (adding the same
    value to all channels and scaling around the grey mean keep the hue; nothing moves)."""
    b, dev = x.shape[0], x.device  # ``generator`` lives on x's device
    contrast = torch.empty(b, 1, 1, 1, device=dev).uniform_(0.85, 1.15, generator=generator)
    brightness = torch.empty(b, 1, 1, 1, device=dev).uniform_(-0.05, 0.05, generator=generator)
    sigma = torch.empty(b, 1, 1, 1, device=dev).uniform_(0.0, 0.02, generator=generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    x = x + torch.randn(x.shape, generator=generator, device=dev) * sigma
    return x.clamp_(0.0, 1.0)


def attribute_loss(logits, target):
    """Cross-entropy for a class index; for a class set, the binary cross-entropy summed over classes
    (a set of k classes then weighs about as much as k single labels)."""
    import torch.nn.functional as F

    if target.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(target)
    return F.cross_entropy(logits, target)


def _hits(logits, target):
    """Correct predictions: the class (argmax), or for a class set every class's membership (logit > 0)."""
    if target.dim() == 2:
        return (logits.gt(0).float() == target).float().mean(dim=1)
    return (logits.argmax(dim=1) == target).float()


def evaluate(model: AttributeModel, data: pimg.AttributeImages, mean, std,
             amp: bool = False) -> tuple[dict[str, float], float]:
    """(per-attribute accuracy, mean summed attribute loss) of the model on ``data`` (batches moved to
    ``mean``'s device); for a multi-label attribute the accuracy is the mean over images and classes of a
    correct membership."""
    model.eval()
    dev = mean.device
    correct = {name: 0.0 for name in data.targets}
    loss = 0.0
    with torch.no_grad():
        for start in range(0, len(data), EVAL_BATCH):
            batch = data[slice(start, start + EVAL_BATCH)]
            x = batch["image"].to(dev, non_blocking=True)
            with autocast(dev, amp):
                logits = model((x.float() / 255.0 - mean) / std)
                for name, target in batch["targets"].items():
                    out = logits[name].float().cpu()
                    correct[name] += float(_hits(out, target).sum())
                    loss += float(attribute_loss(out, target)) * len(target)
    n = max(1, len(data))
    return {name: c / n for name, c in correct.items()}, loss / n


def chance_accuracy(target) -> float:
    """What a constant prediction scores: the most frequent class, or for class sets each class's more
    frequent membership."""
    if target.dim() == 2:
        share = target.mean(dim=0)
        return float(np.mean(np.maximum(share.numpy(), 1 - share.numpy())))
    counts = np.bincount(target.numpy())
    return float(counts.max() / counts.sum())


class AttributeTask(Task):
    """The trainer's task for backbone pretraining: batches of the in-memory image set in the order of
    one ``randperm`` per epoch (the last, smaller batch kept), augmented on the device, scored by the sum
    of the attribute losses; validation: every attribute's val accuracy (``acc_<name>``; ``val_top1``
    their mean). The order and the augmentation draw from generators seeded once with ``seed``, their
    state kept in the training state; warm-up: :data:`WARMUP_SHARE` of the steps, at least one."""

    def __init__(self, train_set: pimg.AttributeImages, val_set: pimg.AttributeImages, mean: Sequence[float],
                 std: Sequence[float], seed: int):
        self.train_set, self.val_set = train_set, val_set
        self.norm, self.seed = (list(mean), list(std)), seed

    def setup(self, trainer: Trainer) -> int:
        if trainer.ctx.distributed:
            raise AmflowError("backbone pretraining runs in one process: start `amflow pretrain-backbone` "
                              "without torchrun")
        dev, self.amp = trainer.device, trainer.amp
        self.mean = torch.tensor(self.norm[0], device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(self.norm[1], device=dev).view(1, 3, 1, 1)
        if dev.type == "cuda":  # uint8, host memory; batches go to the device
            self.train_set.images = self.train_set.images.pin_memory()
        self.batch = min(trainer.spec.batch_size, len(self.train_set))
        self.gen = torch.Generator().manual_seed(self.seed)  # the data order (and, on CPU, the augmentation)
        # On a GPU the augmentation draws on the device, from its own seeded stream.
        self.aug_gen = self.gen if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(self.seed + 1)
        return math.ceil(len(self.train_set) / self.batch)

    def warmup_steps(self, spec: TrainSpec, steps_per_epoch: int, total: int) -> int:
        return max(1, int(WARMUP_SHARE * total))

    def batches(self, epoch: int) -> Iterable[dict]:
        n, b = len(self.train_set), self.batch
        perm = torch.randperm(n, generator=self.gen)  # drawn at the first batch, before its augmentation
        for step in range(math.ceil(n / b)):
            yield self.train_set[perm[step * b:(step + 1) * b]]

    def loss(self, net: nn.Module, batch: dict) -> tuple[torch.Tensor, int, torch.Tensor]:
        dev = self.mean.device
        x = _augment(batch["image"].to(dev, non_blocking=True).float() / 255.0, self.aug_gen)
        loss, hits = 0, 0.0
        with autocast(dev, self.amp):
            logits = net((x - self.mean) / self.std)
            for name, target in batch["targets"].items():
                target = target.to(dev, non_blocking=True)
                out = logits[name].float()
                loss = loss + attribute_loss(out, target)
                hits = hits + _hits(out.detach(), target).sum()
        # train_acc: the attributes' mean accuracy
        return loss, len(x), (hits / len(batch["targets"])).double()

    def validate(self, model: nn.Module) -> dict[str, float]:
        acc, loss = evaluate(model, self.val_set, self.mean, self.std, self.amp)
        return {"val_top1": float(np.mean(list(acc.values()))), "val_loss": loss,
                **{f"acc_{name}": v for name, v in acc.items()}}

    def state_dict(self) -> dict:
        state = {"generator": self.gen.get_state()}
        if self.aug_gen is not self.gen:
            state["aug_generator"] = self.aug_gen.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["generator"])
        if self.aug_gen is not self.gen and "aug_generator" in state:
            self.aug_gen.set_state(state["aug_generator"])


def train_spec(params: Params) -> TrainSpec:
    """The trainer's settings for the pretraining recipe: no gradient clipping or label smoothing; the
    warm-up is :class:`AttributeTask`'s; device and amp as training's."""
    spec = params.pretrain
    return TrainSpec(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, weight_decay=spec.weight_decay,
                     grad_clip=0.0, label_smoothing=0.0, amp=params.train.amp, device=params.train.device)


def train_attribute_model(params: Params, images_dir: str | Path, run_dir: str | Path,
                          callbacks: Iterable[Callable[[dict], None]] = ()):
    """Train the backbone and its attribute heads on ``images_dir`` through the trainer, its training
    state in ``run_dir``; returns (backbone, metrics, history), backbone and metrics None when stopped
    before the last epoch (``AMFLOW_STOP_AFTER_EPOCH``). ``callbacks`` get each epoch's record (the
    trainer's, plus ``acc_<attribute>``). Checks nothing and writes no outputs: :func:`pretrain_backbone`
    does both."""
    images_dir = Path(images_dir)
    spec = params.pretrain
    info = pimg.read_info(images_dir)
    attributes = info["attributes"]
    train_set, val_set = pimg.AttributeImages(images_dir, "train"), pimg.AttributeImages(images_dir, "val")
    device = resolve_device(params.train.device)

    torch.manual_seed(spec.seed)  # the model's initialisation
    model = build_model(params, attributes)
    patch_embed = model.backbone.patch_embed
    expected = tuple(getattr(patch_embed, "img_size", None) or ())
    size = tuple(train_set.images.shape[2:4])
    if expected and expected != size and getattr(patch_embed, "strict_img_size", True):
        raise AmflowError(
            f"{images_dir}: images are {size[0]}x{size[1]} px but the backbone expects {expected[0]}x{expected[1]} "
            f"(params backbone.kwargs.img_size); set pretrain_images.resolution and backbone.kwargs.img_size "
            f"to the same value and rerun `amflow pretrain-images`")

    task = AttributeTask(train_set, val_set, params.sampling.mean, params.sampling.std, spec.seed)
    # The state is only resumed under the same identity (recipe, backbone, normalisation, image set); each
    # of its values is compared, so a stale state is named by the key that changed.
    compat = identity.pretraining(params, info.get("spec")).leaves()
    trainer = Trainer(model, train_set, val_set, train_spec(params), seed=spec.seed, run_dir=Path(run_dir),
                      ctx=DistContext(device=device), meta={"compat": compat}, callbacks=callbacks, task=task)
    result = trainer.fit()
    if result.status != "complete":
        return None, None, result.history

    history = result.history
    acc = {a["name"]: history[-1][f"acc_{a['name']}"] for a in attributes}
    per_attr = {}
    for a in attributes:
        chance = chance_accuracy(val_set.targets[a["name"]])
        per_attr[a["name"]] = {"accuracy": round(acc[a["name"]], 4), "chance": round(chance, 4),
                               "uniform_chance": 0.5 if a.get("multi_label") else round(1.0 / a["classes"], 4), "classes": a["classes"],
                               "gain_over_chance": round(acc[a["name"]] - chance, 4)}
    gain = float(np.mean([v["gain_over_chance"] for v in per_attr.values()]))
    n, epoch_loss = len(train_set), [r["train_loss"] for r in history]
    metrics = {
        "attributes": per_attr,
        "mean_accuracy": round(float(np.mean(list(acc.values()))), 4),
        "mean_gain_over_chance": round(gain, 4),
        "min_gain_over_chance": spec.min_gain_over_chance,
        "epochs": spec.epochs,
        "batch_size": task.batch,
        "lr": spec.lr,
        "steps": trainer.steps_per_epoch * spec.epochs,
        "train_images": n,
        "val_images": len(val_set),
        "final_train_loss": round(epoch_loss[-1], 4),
        "epoch_loss": [round(v, 4) for v in epoch_loss],
        "train_time_s": round(result.elapsed_s, 2),
        "train_cpu_s": round(result.cpu_s, 2),
        "images_per_s": round(n * len(history) / max(result.elapsed_s, 1e-9), 1),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "model": params.backbone.model,
        "kwargs": params.backbone.kwargs,
        "normalisation": {"mean": list(params.sampling.mean), "std": list(params.sampling.std)},
        "seed": spec.seed,
        "images": {"dir": str(images_dir), "spec": info.get("spec")},
    }
    return model.backbone.cpu(), metrics, history
