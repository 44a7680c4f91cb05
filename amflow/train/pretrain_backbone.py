"""``amflow pretrain-backbone``: pretrain the embedded default's small ViT (docs/design.md 2.6).

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

Device: ``params.train.device`` (CUDA with bf16 autocast when ``train.amp``; ``synth_full``'s 100k
images at 64 px would take hours on a CPU). A checkpoint ``pretrain_checkpoint.pt`` is written after
every epoch and resumed by a rerun with the same settings (a SLURM retry after a time limit), then
deleted once the outputs are written; on CPU a resumed run ends bitwise equal to an uninterrupted one.
``AMFLOW_STOP_AFTER_EPOCH=k`` stops after epoch k as if the job were killed (tests).

Outputs: ``backbone.safetensors`` (the timm model's ``state_dict()``, heads excluded) and
``metrics.json``; ``amflow pretrain-backbone`` also tracks the pretraining as an MLflow run. If the
mean accuracy gain over chance stays below ``params.pretrain.min_gain_over_chance`` (when above 0)
the stage fails with :class:`AmflowError` and writes neither. Chance is the accuracy of always predicting the most frequent val class.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from amflow import identity, io, paths, progress
from amflow.data import pretrain_images as pimg
from amflow.errors import AmflowError
from amflow.params import Params
from amflow.models.inference import autocast
from amflow.train.schedule import build_scheduler, param_groups
from amflow.train.trainer import stop_after_from_env

WARMUP_SHARE = 0.05  # share of the optimisation steps spent in linear warm-up
EVAL_BATCH = 512
CHECKPOINT = "pretrain_checkpoint.pt"


def build_model(params: Params, attributes: list[dict]):
    """(backbone, heads): the timm ViT exactly as the video models build it, one linear head per attribute."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm
    import torch.nn as nn

    spec = params.backbone
    try:
        backbone = timm.create_model(spec.model, pretrained=False, num_classes=0, **spec.kwargs)
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as exc:
        raise AmflowError(f"params backbone.model / backbone.kwargs: timm cannot build '{spec.model}' "
                          f"with kwargs {spec.kwargs}: {exc}") from exc
    heads = nn.ModuleDict({a["name"]: nn.Linear(backbone.num_features, a["classes"]) for a in attributes})
    return backbone, heads


def _normalise(x_uint8, mean, std):
    return (x_uint8.float() / 255.0 - mean) / std


def _augment(x, generator):
    """Brightness, contrast and pixel noise on [0, 1] images; every label stays true (adding the same
    value to all channels and scaling around the grey mean keep the hue; nothing moves)."""
    import torch

    b, dev = x.shape[0], x.device  # ``generator`` lives on x's device
    contrast = torch.empty(b, 1, 1, 1, device=dev).uniform_(0.85, 1.15, generator=generator)
    brightness = torch.empty(b, 1, 1, 1, device=dev).uniform_(-0.05, 0.05, generator=generator)
    sigma = torch.empty(b, 1, 1, 1, device=dev).uniform_(0.0, 0.02, generator=generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    x = x + torch.randn(x.shape, generator=generator, device=dev) * sigma
    return x.clamp_(0.0, 1.0)


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()  # uint8 [N,3,H,W], in memory


def _targets(table, attributes):
    """Per attribute: class indices int64 [N], or for a multi-label attribute (a bit mask per image)
    the 0/1 set membership float32 [N, classes]."""
    import torch

    out = {}
    for a in attributes:
        labels = torch.from_numpy(table[a["name"]].to_numpy(np.int64, copy=True))
        if a.get("multi_label"):
            labels = ((labels[:, None] >> torch.arange(a["classes"])) & 1).float()
        out[a["name"]] = labels
    return out


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


def evaluate(backbone, heads, images, targets, mean, std, amp: bool = False) -> dict[str, float]:
    """Per-attribute accuracy of the model on uint8 images [N,3,H,W] (moved to ``mean``'s device per batch);
    for a multi-label attribute the mean over images and classes of a correct membership."""
    import torch

    backbone.eval()
    heads.eval()
    dev = mean.device
    correct = {name: 0.0 for name in targets}
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            with autocast(dev, amp):
                feats = backbone(_normalise(images[start:start + EVAL_BATCH].to(dev, non_blocking=True), mean, std))
                for name, head in heads.items():
                    hits = _hits(head(feats).float().cpu(), targets[name][start:start + EVAL_BATCH])
                    correct[name] += float(hits.sum())
    return {name: c / max(1, len(images)) for name, c in correct.items()}


def chance_accuracy(target) -> float:
    """What a constant prediction scores: the most frequent class, or for class sets each class's more
    frequent membership."""
    if target.dim() == 2:
        share = target.mean(dim=0)
        return float(np.mean(np.maximum(share.numpy(), 1 - share.numpy())))
    counts = np.bincount(target.numpy())
    return float(counts.max() / counts.sum())


def _clear_outputs(out_dir: Path) -> None:
    # A failed run must not leave an older backbone that looks like this run's result.
    for name in (paths.BACKBONE_WEIGHTS, paths.BACKBONE_METRICS):
        (out_dir / name).unlink(missing_ok=True)


def train_attribute_model(params: Params, images_dir: str | Path, checkpoint: Optional[Path] = None,
                          stop_after_epoch: Optional[int] = None,
                          on_epoch: Optional[Callable[[int, float], None]] = None):
    """Train the backbone and its attribute heads on ``images_dir``; returns (backbone, metrics).

    With ``checkpoint``, the state after each epoch is saved there, and a checkpoint written under
    the same settings is resumed. Stopped by ``stop_after_epoch`` before the last epoch: returns
    (None, None). ``on_epoch(epoch, mean_loss)`` is called after each epoch (1-based). Checks nothing
    and writes no outputs: :func:`pretrain_backbone` does both."""
    import torch

    from amflow.train.distributed import resolve_device

    images_dir = Path(images_dir)
    spec = params.pretrain
    info = pimg.read_info(images_dir)
    attributes = info["attributes"]
    train_np, train_table = pimg.load_split(images_dir, "train")
    val_np, val_table = pimg.load_split(images_dir, "val")
    device = resolve_device(params.train.device)
    amp = bool(params.train.amp and device.type == "cuda")

    torch.manual_seed(spec.seed)  # the model's initialisation
    backbone, heads = build_model(params, attributes)
    expected = tuple(getattr(backbone.patch_embed, "img_size", None) or ())
    size = tuple(train_np.shape[1:3])
    if expected and expected != size and getattr(backbone.patch_embed, "strict_img_size", True):
        raise AmflowError(
            f"{images_dir}: images are {size[0]}x{size[1]} px but the backbone expects {expected[0]}x{expected[1]} "
            f"(params backbone.kwargs.img_size); set pretrain_images.resolution and backbone.kwargs.img_size "
            f"to the same value and rerun `amflow pretrain-images`")
    backbone.to(device)
    heads.to(device)

    train_x, val_x = _to_tensor(train_np), _to_tensor(val_np)  # uint8, host memory; batches go to the device
    if device.type == "cuda":
        train_x = train_x.pin_memory()
    train_y, val_y = _targets(train_table, attributes), _targets(val_table, attributes)
    mean = torch.tensor(params.sampling.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(params.sampling.std, device=device).view(1, 3, 1, 1)

    n = len(train_x)
    batch = min(spec.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = spec.epochs * steps_per_epoch
    warmup = max(1, int(WARMUP_SHARE * total))
    opt = torch.optim.AdamW(param_groups(torch.nn.ModuleList([backbone, heads]), spec.weight_decay), lr=spec.lr)
    sched = build_scheduler(opt, total, warmup)
    gen = torch.Generator().manual_seed(spec.seed)  # the data order (and, on CPU, the augmentation)
    # On a GPU the augmentation draws on the device, from its own seeded stream.
    aug_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(spec.seed + 1)

    epoch_loss: list[float] = []
    seen, start_epoch, elapsed = 0, 0, 0.0
    # What a pretraining checkpoint may only be resumed under: recipe, model, normalisation, image set.
    digest = identity.pretraining(params, info.get("spec")).digest
    if checkpoint is not None and Path(checkpoint).exists():
        state = _load_checkpoint(Path(checkpoint))
        if state.get("digest") == digest:
            backbone.load_state_dict(state["backbone"])
            heads.load_state_dict(state["heads"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            if aug_gen is not gen and "aug_generator" in state:
                aug_gen.set_state(state["aug_generator"])
            start_epoch, epoch_loss = int(state["epoch"]), list(state["epoch_loss"])
            seen, elapsed = int(state["seen"]), float(state["elapsed_s"])
            print(f"pretrain: resuming from epoch {start_epoch} ({checkpoint})", file=sys.stderr)
        else:
            print(f"pretrain: {checkpoint} was written with other settings; training from scratch", file=sys.stderr)

    t0 = time.perf_counter() - elapsed
    for epoch in range(start_epoch, spec.epochs):
        backbone.train()
        heads.train()
        perm = torch.randperm(n, generator=gen)
        running = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        bar = progress.bar(range(steps_per_epoch), desc=f"pretrain epoch {epoch + 1}/{spec.epochs}", unit="step",
                           leave=False)
        show_every = progress.every(steps_per_epoch)
        for step in bar:
            idx = perm[step * batch:(step + 1) * batch]
            x = _augment(train_x[idx].to(device, non_blocking=True).float() / 255.0, aug_gen)
            with autocast(device, amp):
                feats = backbone((x - mean) / std)
                loss = sum(attribute_loss(head(feats).float(), train_y[name][idx].to(device, non_blocking=True))
                           for name, head in heads.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach().double() * len(idx)  # a tensor: read (a device sync) only for the log line
            count += len(idx)
            seen += len(idx)
            if (step + 1) % show_every == 0 or step + 1 == steps_per_epoch:
                bar.set_postfix(loss=f"{float(running) / count:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
        bar.close()
        epoch_loss.append(float(running) / max(1, count))
        print(f"pretrain epoch {epoch + 1}/{spec.epochs}: loss {epoch_loss[-1]:.4f}", file=sys.stderr)
        if on_epoch is not None:
            on_epoch(epoch + 1, epoch_loss[-1])
        if checkpoint is not None:
            state = {"digest": digest, "epoch": epoch + 1, "backbone": backbone.state_dict(),
                     "heads": heads.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "generator": gen.get_state(), "epoch_loss": epoch_loss, "seen": seen,
                     "elapsed_s": time.perf_counter() - t0}
            if aug_gen is not gen:
                state["aug_generator"] = aug_gen.get_state()
            with io.atomic_path(Path(checkpoint)) as tmp:
                torch.save(state, tmp)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < spec.epochs:
            return None, None
    train_time = time.perf_counter() - t0

    acc = evaluate(backbone, heads, val_x, val_y, mean, std, amp)
    per_attr = {}
    for a in attributes:
        chance = chance_accuracy(val_y[a["name"]])
        per_attr[a["name"]] = {"accuracy": round(acc[a["name"]], 4), "chance": round(chance, 4),
                               "uniform_chance": 0.5 if a.get("multi_label") else round(1.0 / a["classes"], 4), "classes": a["classes"],
                               "gain_over_chance": round(acc[a["name"]] - chance, 4)}
    gain = float(np.mean([v["gain_over_chance"] for v in per_attr.values()]))
    metrics = {
        "attributes": per_attr,
        "mean_accuracy": round(float(np.mean(list(acc.values()))), 4),
        "mean_gain_over_chance": round(gain, 4),
        "min_gain_over_chance": spec.min_gain_over_chance,
        "epochs": spec.epochs,
        "batch_size": batch,
        "lr": spec.lr,
        "steps": total,
        "train_images": n,
        "val_images": len(val_x),
        "final_train_loss": round(epoch_loss[-1], 4),
        "epoch_loss": [round(v, 4) for v in epoch_loss],
        "train_time_s": round(train_time, 2),
        "images_per_s": round(seen / max(train_time, 1e-9), 1),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "model": params.backbone.model,
        "kwargs": params.backbone.kwargs,
        "normalisation": {"mean": list(params.sampling.mean), "std": list(params.sampling.std)},
        "seed": spec.seed,
        "images": {"dir": str(images_dir), "spec": info.get("spec")},
    }
    return backbone.cpu(), metrics


def _load_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (zip, unpickling and EOF errors all mean "corrupt")
        raise AmflowError(f"{path}: pretraining checkpoint is corrupted or unreadable ({type(exc).__name__}); "
                          f"delete it (rm '{path}') to restart pretraining from epoch 0") from None


def pretrain_backbone(params: Params, images_dir: str | Path, out_dir: str | Path, track: bool = False,
                      results_dir: Optional[str | Path] = None) -> dict:
    """Train the backbone on ``images_dir`` and write ``out_dir/backbone.safetensors`` and
    ``out_dir/metrics.json``; returns the metrics. Raises :class:`AmflowError` if it did not learn.

    With ``track`` the pretraining is an MLflow run (:func:`amflow.tracking.open_run`, in the experiment
    ``<prefix>-<params name>-pretrain_images``; found again by ``out_dir`` under ``results_dir``): params, the loss per epoch, the accuracies, the image
    table as its dataset input, and ``metrics.json`` and the backbone file as artefacts."""
    from safetensors.torch import save_file

    from amflow import tracking

    out_dir = Path(out_dir)
    images = pimg.read_info(images_dir)  # fail on a missing set before touching earlier outputs
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_outputs(out_dir)
    tracker = tracking.NullTracker()
    if track:
        key = tracking.run_key(out_dir, Path(results_dir) if results_dir else out_dir.parent)
        tracker = tracking.open_run(params, identity.pretraining(params, images.get("spec")),
                                    experiment="pretrain_images", key=key, name="pretrain-backbone")
    try:
        if track:
            _, table = pimg.load_split(images_dir, "train")
            tracking.with_retries(lambda: tracker.log_dataset(
                table, name="pretrain_images-train", source=str(Path(images_dir).resolve()), context="training"),
                "logging the pretraining images")

        def log_epoch(epoch: int, loss: float) -> None:
            try:
                tracker.log_metrics({"train_loss": loss}, step=epoch)
            except Exception as exc:  # noqa: BLE001  (a tracking hiccup must not end the pretraining)
                print(f"warning: MLflow logging of pretraining epoch {epoch} failed ({exc})", file=sys.stderr)

        backbone, metrics = train_attribute_model(params, images_dir, out_dir / CHECKPOINT, stop_after_from_env(),
                                                  on_epoch=log_epoch)
        if backbone is None:
            tracker.finish("KILLED")
            return {"status": "stopped"}
        per_attr, gain = metrics["attributes"], metrics["mean_gain_over_chance"]
        tracking.with_retries(lambda: tracker.log_metrics({
            "mean_accuracy": metrics["mean_accuracy"], "mean_gain_over_chance": gain,
            "train_time_s": metrics["train_time_s"], "images_per_s": metrics["images_per_s"],
            **{f"acc_{k}": v["accuracy"] for k, v in per_attr.items()}}), "logging the pretraining metrics")
        spec = params.pretrain
        summary = ", ".join(f"{k} {v['accuracy']:.1%} (chance {v['chance']:.1%})" for k, v in per_attr.items())
        if spec.min_gain_over_chance > 0 and gain < spec.min_gain_over_chance:  # 0: no check (tiny test sets)
            raise AmflowError(
                f"pretrain-backbone: the backbone did not learn: mean accuracy gain over chance {gain:.3f} < "
                f"pretrain.min_gain_over_chance {spec.min_gain_over_chance} ({summary}; {spec.epochs} epoch(s) on "
                f"{metrics['train_images']} images). No backbone was written. Train longer (pretrain.epochs), on "
                f"more images (pretrain_images.images), or with another pretrain.lr / pretrain.batch_size; a smaller "
                f"image (pretrain_images.resolution with backbone.kwargs.img_size) also learns faster")
        with io.atomic_path(out_dir / paths.BACKBONE_WEIGHTS) as tmp:
            state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
            save_file(state, str(tmp), metadata={"model": params.backbone.model, "source": "amflow pretrain-backbone"})
        io.write_json(out_dir / paths.BACKBONE_METRICS, metrics)  # results on disk before the final logging
        (out_dir / CHECKPOINT).unlink(missing_ok=True)  # done: a rerun starts afresh

        def log_end() -> None:
            tracker.log_artifacts([out_dir / paths.BACKBONE_METRICS, out_dir / paths.BACKBONE_WEIGHTS])
            tracker.finish("FINISHED")

        tracking.with_retries(log_end, f"logging the end of the pretraining into {out_dir}")
    except BaseException:
        try:
            tracker.finish("FAILED")
        except Exception as exc:  # noqa: BLE001  (the original error matters more)
            print(f"warning: could not mark the MLflow run FAILED: {exc}", file=sys.stderr)
        raise
    print(f"pretrain-backbone: {summary}; mean gain {gain:.3f}; {metrics['train_time_s']:.0f} s "
          f"({metrics['images_per_s']:.0f} img/s)", file=sys.stderr)
    return metrics
