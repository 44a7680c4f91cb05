"""``amflow``: one subcommand per pipeline stage. Snakemake rules and DVC stages call these.

Heavy libraries (torch, cv2, mlflow) are imported inside the commands, so ``amflow --help`` is fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

PARAMS_HELP = "params file (YAML, validated by amflow/params.py); default params/default.yaml"


def _params(args):
    from amflow.params import load_params, parse_override, set_dotted

    overrides: dict = {}
    for item in getattr(args, "set", None) or []:
        key, value = parse_override(item)
        set_dotted(overrides, key, value)
    return load_params(args.params, overrides or None)


def _add_common(p: argparse.ArgumentParser, dataset: bool = False) -> None:
    p.add_argument("--params", default="params/default.yaml", help=PARAMS_HELP)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a params key, e.g. --set train.epochs=2 (repeatable; value parsed as YAML)")
    p.add_argument("--data-dir", default="data", type=Path, help="root of datasets and frame caches (default: data)")
    p.add_argument("--results-dir", default="results", type=Path, help="root of results (default: results)")
    if dataset:
        p.add_argument("--dataset", required=True, help="dataset name, a key under 'datasets' in the params file")


# --------------------------------------------------------------------------- commands
def cmd_validate(args) -> None:
    p = _params(args)
    print(f"{args.params}: valid ({len(p.datasets)} dataset(s): {', '.join(p.datasets)})")


def cmd_prepare(args) -> None:
    from amflow.data.prepare import prepare_dataset

    from amflow import paths

    prepare_dataset(_params(args), args.dataset, paths.dataset_dir(args.data_dir, args.dataset))


def cmd_pretrain_images(args) -> None:
    from amflow.data.pretrain_images import generate_pretrain_images

    from amflow import paths

    generate_pretrain_images(_params(args), paths.pretrain_images_dir(args.data_dir))


def cmd_extract(args) -> None:
    from amflow import paths
    from amflow.data.extract import extract_frames

    extract_frames(_params(args), args.dataset, paths.dataset_dir(args.data_dir, args.dataset),
                   paths.frames_dir(args.data_dir, args.dataset), workers=args.workers)


def cmd_camera_motion(args) -> None:
    from amflow import paths
    from amflow.camera.stage import run_camera_motion

    run_camera_motion(_params(args), args.dataset, paths.frames_dir(args.data_dir, args.dataset),
                      paths.camera_dir(args.results_dir, args.dataset),
                      motion_path=paths.motion_file(args.data_dir, args.dataset))


def cmd_ground_truth(args) -> None:
    from amflow import paths
    from amflow.data.synthmotion import write_ground_truth

    write_ground_truth(_params(args), args.dataset, paths.dataset_dir(args.data_dir, args.dataset),
                       paths.ground_truth_file(args.data_dir, args.dataset))


def cmd_localise(args) -> None:
    from amflow import paths
    from amflow.localise import run_localisation

    run_localisation(_params(args), args.dataset, data_dir=args.data_dir, results_dir=args.results_dir,
                     out_dir=paths.localisation_dir(args.results_dir, args.dataset), max_videos=args.max_videos)


def cmd_pretrain_backbone(args) -> None:
    from amflow.train.pretrain_backbone import pretrain_backbone

    from amflow import paths

    pretrain_backbone(_params(args), paths.pretrain_images_dir(args.data_dir), paths.backbone_dir(args.results_dir))


def cmd_train(args) -> None:
    from amflow.train.run import train_run

    train_run(_params(args), dataset=args.dataset, method=args.method, seed=args.seed,
              data_dir=args.data_dir, results_dir=args.results_dir, run_dir=args.run_dir)


def cmd_evaluate(args) -> None:
    from amflow.evaluate.run import evaluate_run

    evaluate_run(_params(args), dataset=args.dataset, method=args.method, seed=args.seed,
                 data_dir=args.data_dir, results_dir=args.results_dir, run_dir=args.run_dir)


def cmd_predict(args) -> None:
    from amflow.evaluate.predict import predict_video

    for name, prob in predict_video(args.video, args.run, top_k=args.top_k):
        print(f"{prob:7.2%}  {name}")


def cmd_tables(args) -> None:
    from amflow.report.tables import write_tables

    write_tables(_params(args), args.results_dir, which=args.which)


def cmd_heatmaps(args) -> None:
    from amflow.report.heatmaps import write_heatmaps

    write_heatmaps(_params(args), data_dir=args.data_dir, results_dir=args.results_dir)


def cmd_report(args) -> None:
    from amflow.report.report import write_report

    write_report(_params(args), args.results_dir)


def cmd_sweep(args) -> None:
    from amflow.sweep.run import run_sweep

    run_sweep(args)


def cmd_dvc_yaml(args) -> None:
    from amflow.dag import write_dvc_yaml

    write_dvc_yaml(Path(args.output), check=args.check)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amflow",
        description="AM Flow experiment pipeline. Each subcommand is one stage of the DAG "
                    "(see `snakemake --cores 8 results/table1.csv` for the whole chain).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable, help: str, description: str, dataset: bool = False):
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common(p, dataset=dataset)
        p.set_defaults(func=func)
        return p

    add("validate", cmd_validate, "check a params file",
        "Validate a params file against the schema and exit. A wrong key or type is reported with the file, "
        "the key and what was expected.")
    add("prepare", cmd_prepare, "generate or download/verify a dataset",
        "Make data/<dataset>/ ready: SynthMotion is generated (H.264 mp4 + annotations); Kinetics-400 is "
        "downloaded from the CVDF mirror (resumable, verified); SSv2, Toyota Smarthome and `list` datasets "
        "are verified in the folder you name in 'root' (missing files are listed with where to put them).\n\n"
        "Outputs: data/<dataset>/classes.txt, annotations/{train,val,test}.csv, dataset.json (written last).",
        dataset=True)
    add("pretrain-images", cmd_pretrain_images, "generate the single-image pretraining set",
        "Render the single-image set for backbone pretraining, labelled by single-image attributes only "
        "(shape, colour, position, orientation, size bins; never motion).\n\n"
        "Output: data/pretrain_images/ (images and labels, info.json written last).")
    p = add("extract", cmd_extract, "decode videos into the sharded frame cache",
            "Decode every video of the dataset (decord; PyAV where decord is absent), resize to the short side "
            "in params, and write a sharded frame cache. Videos that fail to decode are listed in failures.csv "
            "and skipped.\n\nOutputs: data/frames/<dataset>/ (shards, manifest.csv, failures.csv, "
            "summary.json written last).", dataset=True)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0 = one per core)")
    add("camera-motion", cmd_camera_motion, "classify camera motion and pick the AM flow variant",
        "Estimate global (camera) motion between frames, classify videos as static or moving camera, and "
        "decide the dataset's AM flow variant (static or aligned). Also caches the per-frame transforms that "
        "the aligned variant needs.\n\nOutputs: results/<dataset>/camera_motion.json, camera_motion.png, "
        "data/motion/<dataset>.npz.", dataset=True)
    add("ground-truth", cmd_ground_truth, "SynthMotion's motion ground truth, from the render plans",
        "Recompute, from the dataset's seed, the actor's coverage of every pixel of every frame and the true "
        "camera motion, without re-rendering or re-encoding a video (so an existing dataset gets them).\n\n"
        "Output: data/groundtruth/<dataset>.npz.", dataset=True)
    p = add("localise", cmd_localise, "how well AM flow finds the moving actor, without training",
            "On the val clips, with the pretrained frozen backbone: for each AM flow variant (static, aligned "
            "on the patch grid, aligned by pixel warp) and each block, the share of the scores on the actor's "
            "patches divided by their share of the area (1 = no information) and the ROC AUC of the scores "
            "against 'actor in the patch'; the same for a per-patch pixel difference with and without camera "
            "compensation. Logged to MLflow.\n\nOutputs: results/<dataset>/localisation/localisation.csv, "
            "localisation.png.", dataset=True)
    p.add_argument("--max-videos", type=int, default=None, help="use only the first N val videos (quick looks)")
    add("pretrain-backbone", cmd_pretrain_backbone, "pretrain the small ViT of the embedded default",
        "Train the embedded default's small ViT on the single-image attribute set, report per-attribute "
        "accuracy, and stop with an error if it did not learn.\n\nOutputs: results/backbone/backbone.safetensors, "
        "results/backbone/metrics.json.")
    for name, func, what in (("train", cmd_train, "train one (method, seed) run"),
                             ("evaluate", cmd_evaluate, "evaluate a trained run on the test split")):
        p = add(name, func, what,
                f"{what[0].upper()}{what[1:]} on a dataset. Outputs under "
                "results/<dataset>/<method>/seed<k>/ (or --run-dir).", dataset=True)
        p.add_argument("--method", required=True, choices=["frame", "aim", "st_adapter", "tpa", "amflow"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--run-dir", type=Path, default=None, help="override the run folder")
    p = sub.add_parser("predict", help="top-k classes for one video",
                       description="Print the top-k classes with probabilities for any video decord can read, "
                                   "using a trained run folder.")
    p.add_argument("video", type=Path)
    p.add_argument("--run", type=Path, required=True, help="run folder (results/<dataset>/<method>/seed<k>)")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=cmd_predict)
    p = add("tables", cmd_tables, "build results/table1.csv or the ablation tables",
            "Read the runs' metrics.json and write results/table1.csv (--which table1) or results/ablations.csv "
            "plus one results/ablation_<axis>.csv per ablation axis (--which ablations). Pure: the same inputs give "
            "the same bytes.")
    p.add_argument("--which", choices=["table1", "ablations"], default="table1")
    add("heatmaps", cmd_heatmaps, "plot AM flow heat maps, static against aligned",
        "Render AM flow heat maps over the frames of a static-camera and a moving-camera test clip, static "
        "against aligned variant, with the trained amflow runs' backbones.\n\nOutputs: "
        "results/plots/amflow_heatmaps.png and results/plots/amflow_heatmaps.gif.")
    add("report", cmd_report, "write results/report.md with tables and plots",
        "Generate results/report.md (every table, every plot, one paragraph per table) from the results.")
    p = sub.add_parser("sweep", help="Optuna sweep over the adapter's hyperparameters",
                       description="Run an Optuna sweep (seeded TPE, median pruner on per-epoch validation "
                                   "accuracy) and export the best trial as a params file.")
    from amflow.sweep.args import add_sweep_arguments  # light: argparse only

    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the Snakemake workflow",
                       description="Write dvc.yaml from the same stage definitions that the Snakemake rules use "
                                   "(one source of truth). --check fails if the file on disk differs.")
    p.add_argument("--output", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    p.set_defaults(func=cmd_dvc_yaml)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from amflow.errors import AmflowError
    from amflow.params import ParamsError

    try:
        args.func(args)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (AmflowError, FileNotFoundError) as exc:
        # Expected failures carry the file and the fix in their message: no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
