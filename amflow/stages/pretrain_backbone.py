"""``amflow pretrain-backbone``: train the backbone on the single-image attribute set
(:func:`amflow.train.pretraining.train_attribute_model`, through the trainer), check that it learnt, and
write ``backbone.safetensors`` and ``metrics.json``; tracked as an MLflow run."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from amflow import identity, io, paths
from amflow.data import pretrain_images as pimg
from amflow.errors import AmflowError
from amflow.params import Params
from amflow.train.pretraining import train_attribute_model


def _clear_outputs(out_dir: Path) -> None:
    # A failed run must not leave an older backbone that looks like this run's result.
    for name in (paths.BACKBONE_WEIGHTS, paths.BACKBONE_METRICS):
        (out_dir / name).unlink(missing_ok=True)


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

        def log_epoch(record: dict) -> None:
            try:
                tracker.log_epoch(record)
            except Exception as exc:  # noqa: BLE001  (a tracking hiccup must not end the pretraining)
                print(f"warning: MLflow logging of pretraining epoch {record['epoch']} failed ({exc}); "
                      f"logged at the end", file=sys.stderr)

        backbone, metrics, history = train_attribute_model(params, images_dir, out_dir, callbacks=[log_epoch])
        # The epochs the store missed, or all of them for a finished state that was only resumed.
        tracking.with_retries(lambda: tracker.sync_history(history), "logging the pretraining epochs")
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
