"""``amflow``: one subcommand per pipeline stage. Snakemake rules and DVC stages call these.

Heavy libraries (torch, cv2, mlflow) are imported inside the commands, so ``amflow --help`` is fast.
"""
from __future__ import annotations

import argparse
import errno
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Callable

from amflow import methods, paths
from amflow.benchmark_file import CPU_LINE, process_cpu_s
from amflow.errors import AmflowError
from amflow.params import SOURCE_SCHEMAS, source_summary
from amflow.params_io import ParamsError, load_params, parse_override, set_dotted, set_source
from amflow.paths import dataset_name_problem

PARAMS_HELP = "params file (YAML, validated by amflow/params.py); default params/default.yaml"


def _params(args):
    overrides: dict = {}
    items = getattr(args, "set", None) or []
    for item in items:
        key, value = parse_override(item)
        set_dotted(overrides, key, value)
    return load_params(args.params, overrides or None, set_source(items))


def _dataset_name(text: str) -> str:
    """--dataset: refused before it becomes a folder name (the schema checks the params file's names alike)."""
    problem = dataset_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _results(args, p) -> Path:
    """This params file's results folder: ``<--results-dir>/<name>``."""
    return paths.results_root(args.results_dir, p.name)


def _dataset_key(p, dataset: str) -> str:
    try:
        return paths.dataset_key(p, dataset)
    except KeyError as exc:
        raise AmflowError(str(exc.args[0])) from None


def _pretrain_images(args, p) -> Path:
    if p.pretrain_images is None:
        raise AmflowError(f"{args.params}: no 'pretrain_images' section, so there is nothing to pretrain on")
    return paths.pretrain_images_dir(args.data_dir, p)


def _add_common(p: argparse.ArgumentParser, dataset: bool = False) -> None:
    p.add_argument("--params", default="params/default.yaml", help=PARAMS_HELP)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a params key, e.g. --set train.epochs=2 (repeatable; value parsed as YAML)")
    p.add_argument("--data-dir", default="data", type=Path,
                   help="root of datasets and frame caches, one folder <dataset>-<spec hash> each (default: data)")
    p.add_argument("--results-dir", default="results", type=Path,
                   help="root of results; a params file's results go to <results-dir>/<name> (default: results)")
    if dataset:
        p.add_argument("--dataset", required=True, type=_dataset_name,
                       help="dataset name, a key under 'datasets' in the params file")


# --------------------------------------------------------------------------- commands
# Each command imports its stage (amflow/stages/<command>.py) and nothing else, inside the function: the
# stage's code is what `amflow <command>` depends on (amflow.import_graph), and `amflow --help` stays fast.
def cmd_validate(args) -> None:
    from amflow.stages.validate import validate

    validate(_params(args), args.params, args.show)


def cmd_prepare(args) -> None:
    from amflow.stages.prepare import prepare_dataset

    p = _params(args)
    prepare_dataset(p, args.dataset, paths.dataset_dir(args.data_dir, _dataset_key(p, args.dataset)))


def cmd_pretrain_images(args) -> None:
    from amflow.stages.pretrain_images import generate_pretrain_images

    p = _params(args)
    generate_pretrain_images(p, _pretrain_images(args, p))


def cmd_extract(args) -> None:
    from amflow.stages.extract import extract_frames

    p = _params(args)
    key = _dataset_key(p, args.dataset)
    extract_frames(p, args.dataset, paths.dataset_dir(args.data_dir, key), paths.frames_dir(args.data_dir, key),
                   workers=args.workers)


def cmd_camera_motion(args) -> None:
    from amflow.stages.camera_motion import run_camera_motion

    p = _params(args)
    results = _results(args, p)
    run_camera_motion(p, args.dataset, paths.frames_dir(args.data_dir, _dataset_key(p, args.dataset)),
                      paths.camera_dir(results, args.dataset), motion_path=paths.motion_file(results, args.dataset))


def cmd_ground_truth(args) -> None:
    from amflow.stages.ground_truth import ground_truth

    p = _params(args)
    ground_truth(p, args.dataset, args.data_dir, _dataset_key(p, args.dataset))


def cmd_localise(args) -> None:
    from amflow.stages.localise import run_localisation

    p = _params(args)
    results = _results(args, p)
    run_localisation(p, args.dataset, data_dir=args.data_dir, results_dir=results,
                     out_dir=paths.localisation_dir(results, args.dataset), max_videos=args.max_videos)


def cmd_pretrain_backbone(args) -> None:
    from amflow.stages.pretrain_backbone import pretrain_backbone

    p = _params(args)
    results = _results(args, p)
    pretrain_backbone(p, _pretrain_images(args, p), paths.backbone_dir(results), track=True,
                      results_dir=results)


def cmd_train(args) -> None:
    from amflow.stages.train import train

    p = _params(args)
    train(p, dataset=args.dataset, method=args.method, seed=args.seed, data_dir=args.data_dir,
          results_dir=_results(args, p), run_dir=args.run_dir, evaluate=args.evaluate)


def cmd_evaluate(args) -> None:
    from amflow.stages.evaluate import evaluate

    p = _params(args)
    _dataset_key(p, args.dataset)  # an unknown dataset: one line naming it
    evaluate(p, dataset=args.dataset, method=args.method, seed=args.seed, data_dir=args.data_dir,
             results_dir=_results(args, p), run_dir=args.run_dir)


def cmd_predict(args) -> int:
    from amflow.stages.predict import predict

    return predict(args.videos, video_list=args.list, run=args.run, model_uri=args.model_uri,
                   tracking_uri=args.tracking_uri, backbone=args.backbone, top_k=args.top_k,
                   fmt="json" if args.json else "csv" if args.csv else "text")


def cmd_tables(args) -> None:
    from amflow.stages.tables import write_tables

    p = _params(args)
    print("\n".join(map(str, write_tables(p, _results(args, p), which=args.which))))


def cmd_heatmaps(args) -> None:
    from amflow.stages.heatmaps import write_heatmaps

    p = _params(args)
    write_heatmaps(p, data_dir=args.data_dir, results_dir=_results(args, p))


def cmd_report(args) -> None:
    from amflow.stages.report import write_report

    p = _params(args)
    write_report(p, _results(args, p))


def cmd_timed(args) -> int:
    from amflow.stages.timed import timed

    return timed(args.wrapped, args.benchmark)


def cmd_readme_results(args) -> None:
    from amflow.stages.readme_results import readme_results

    p = _params(args)
    print(readme_results(p, _results(args, p), args.readme, args.log, args.no_timing, args.timing_only))


def cmd_sweep(args) -> None:
    from amflow.stages.sweep import run_sweep

    args.results_dir = _results(args, load_params(args.params))  # the sweep works inside the namespace
    run_sweep(args)


def cmd_dvc_yaml(args) -> None:
    from amflow.stages.dvc_yaml import hand_over, write_dvc_yaml

    if args.commit:
        hand_over(params_file=args.params)
        return
    write_dvc_yaml(args.output, check=args.check, params_file=args.params)


# --------------------------------------------------------------------------- parser
def version() -> str:
    """The installed package's version (pyproject.toml), else the source tree's."""
    try:
        return importlib.metadata.version("amflow")
    except importlib.metadata.PackageNotFoundError:
        from amflow import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amflow",
        description="AM Flow experiment pipeline. Each subcommand is one stage of the DAG "
                    "(see `snakemake --cores 8` for the whole chain).",
        epilog="`amflow COMMAND --help` gives a stage's inputs and outputs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print amflow's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable, help: str, description: str, dataset: bool = False):
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common(p, dataset=dataset)
        p.set_defaults(func=func)
        return p

    p = add("validate", cmd_validate, "check a params file",
            "Validate a params file against the schema and exit. A wrong key or type is reported with the file, "
            "the key and what was expected.")
    p.add_argument("--show", action="store_true",
                   help="print every value, the schema's defaults included (what the stages get), as YAML")
    add("prepare", cmd_prepare, "generate or download/verify a dataset",
        "Make data/<dataset>-<spec>/ ready, as its 'source:' says (the keys of each: `amflow validate --show`):\n"
        + "".join(f"  {name}: {source_summary(name)}\n" for name in SOURCE_SCHEMAS.names()) + "\n"
        "Inputs: the params file's datasets.<dataset> (and your files under its 'root').\n"
        "Outputs: data/<dataset>-<spec>/classes.txt, annotations/{train,val,test}.csv, dataset.json (written last).",
        dataset=True)
    add("pretrain-images", cmd_pretrain_images, "generate the single-image pretraining set",
        "Render the single-image set for backbone pretraining, labelled by single-image attributes only "
        "(shape, colour, position, orientation, size bins; never motion).\n\n"
        "Inputs: the params file's pretrain_images.\n"
        "Outputs: data/pretrain_images-<spec>/ (images and labels, info.json written last).")
    p = add("extract", cmd_extract, "decode videos into the sharded frame cache",
            "Decode every video of the dataset (decord; PyAV where decord is absent), resize to the short side "
            "in params, and write a sharded frame cache. Videos that fail to decode are listed in failures.csv "
            "and skipped.\n\nInputs: data/<dataset>-<spec>/ (amflow prepare).\n"
            "Outputs: data/frames/<dataset>-<spec>/ (shards, manifest.csv, failures.csv, "
            "summary.json written last).", dataset=True)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0 = one per core)")
    add("camera-motion", cmd_camera_motion, "classify camera motion and pick the AM flow variant",
        "Estimate global (camera) motion between frames, classify videos as static or moving camera, and "
        "decide the dataset's AM flow variant (static or aligned). Also caches the per-frame transforms that "
        "the aligned variant needs.\n\nInputs: data/frames/<dataset>-<spec>/ (amflow extract).\n"
        "Outputs: results/<name>/<dataset>/camera_motion.json, camera_motion.png, "
        "motion.npz.", dataset=True)
    add("ground-truth", cmd_ground_truth, "SynthMotion's motion ground truth, from the render plans",
        "Recompute, from the dataset's seed, the actor's coverage of every pixel of every frame and the true "
        "camera motion, without re-rendering or re-encoding a video (so an existing dataset gets them).\n\n"
        "Inputs: data/<dataset>-<spec>/ (amflow prepare, a SynthMotion dataset).\n"
        "Outputs: data/groundtruth/<dataset>-<spec hash>.npz.", dataset=True)
    p = add("localise", cmd_localise, "how well AM flow finds the moving actor, without training",
            "On the val clips, with the pretrained frozen backbone: for each AM flow variant (static, aligned "
            "with each alignment: grid, warp, warp_fill) and each block, the share of the scores on the actor's "
            "patches divided by their share of the area (1 = no information) and the ROC AUC of the scores "
            "against 'actor in the patch'; the same for a per-patch pixel difference with and without camera "
            "compensation. Then whether the variant the dataset uses (the camera-motion decision) localises at "
            "least as well as static, and whether any aligned variant beats static. Logged to MLflow."
            "\n\nInputs: data/frames/<dataset>-<spec>/, "
            "results/<name>/<dataset>/motion.npz, data/groundtruth/<dataset>-<spec>.npz, the backbone.\n"
            "Outputs: results/<name>/<dataset>/localisation/localisation.csv, "
            "localisation.png.", dataset=True)
    p.add_argument("--max-videos", type=int, default=None, help="use only the first N val videos (quick looks)")
    add("pretrain-backbone", cmd_pretrain_backbone, "pretrain the small ViT of the embedded default",
        "Train the embedded default's small ViT on the single-image attribute set, report per-attribute "
        "accuracy, and stop with an error if it did not learn.\n\nInputs: data/pretrain_images-<spec>/ "
        "(amflow pretrain-images).\nOutputs: results/<name>/backbone/backbone.safetensors, "
        "results/<name>/backbone/metrics.json.")
    run_folder = "results/<name>/<dataset>/<method>/seed<k>/ (or --run-dir)"
    for name, func, what, files in (
            ("train", cmd_train, "train one (method, seed) run",
             "Inputs: data/frames/<dataset>-<spec>/ (amflow extract), results/<name>/backbone/backbone.safetensors "
             "(backbone.weights: pretrain), results/<name>/<dataset>/camera_motion.json and motion.npz (amflow).\n"
             f"Outputs: {run_folder}: params.yaml, checkpoint.pt, train_log.csv, train.json (written last), "
             f"mlflow_run.json; with --evaluate also the evaluation's files in {paths.TRAINING_EVALUATION_DIR}/."),
            ("evaluate", cmd_evaluate, "evaluate a trained run on the test split",
             f"Inputs: {run_folder} (train.json, checkpoint.pt), data/frames/<dataset>-<spec>/.\n"
             "Outputs: metrics.json, scores.json, per_class.csv, predictions.csv, confusion.png, curves.png in the "
             f"run folder: copied from {paths.TRAINING_EVALUATION_DIR}/ when `amflow train --evaluate` made them "
             "from the same checkpoint with the same params, else evaluated.")):
        p = add(name, func, what, f"{what[0].upper()}{what[1:]} on a dataset.\n\n{files}", dataset=True)
        p.add_argument("--method", required=True, choices=methods.names(),
                       help="the method (model) of the run")
        p.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
        p.add_argument("--run-dir", type=Path, default=None, help="override the run folder")
        if name == "train":
            p.add_argument("--evaluate", action="store_true",
                           help=f"then evaluate the run in the same process, into {paths.TRAINING_EVALUATION_DIR}/ "
                                "of the run folder (`amflow evaluate` takes it from there)")
    p = sub.add_parser("predict", help="top-k classes of videos",
                       description="Print the top-k classes with probabilities for videos that decord (or PyAV) "
                                   "can read, with the model of a trained run: its run folder (--run) or its MLflow "
                                   "model (--model-uri). Videos are sampled like the evaluation's test views.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                              "  amflow predict video.mp4 --run results/default/synth_moving/amflow/seed0\n"
                              "  amflow predict a.mp4 b.mp4 --run results/default/synth_moving/amflow/seed0 --json\n"
                              "  amflow predict --list videos.txt --model-uri runs:/<run id>/model --csv")
    p.add_argument("videos", nargs="*", type=Path, metavar="VIDEO", help="video file(s) to classify")
    p.add_argument("--list", type=Path, default=None, metavar="FILE",
                   help="text file with one video path per line (relative to the file's folder; # comments)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="trained run folder (results/<name>/<dataset>/<method>/seed<k>)")
    source.add_argument("--model-uri", metavar="URI",
                        help="the run's MLflow model: runs:/<run id>/model or models:/<model id>")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store holding --model-uri (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
                        "in the current folder)")
    p.add_argument("--backbone", type=Path, default=None, metavar="FILE",
                   help="the frozen backbone file: where a run folder's is now (--run), or a local copy in place "
                        "of the MLflow model's backbone artefact (--model-uri)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="how many classes to print per video, at most the run's class count (default 5, or the "
                        "class count when smaller)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON: [{video, predictions: [{rank, label, "
                                                        "probability}]}]")
    fmt.add_argument("--csv", action="store_true", help="print CSV: video,rank,label,probability")
    p.set_defaults(func=cmd_predict)
    p = add("tables", cmd_tables, "build results/<name>/table1.csv or the ablation tables",
            "Read the runs' metrics.json and write results/<name>/table1.csv and its plots (plots/accuracy.png, "
            "plots/convergence.png) (--which table1), table1_first_seed.csv, table 1 of the first seed alone "
            "(--which table1_first_seed), or ablations.csv "
            "plus one ablation_<axis>.csv per ablation axis (--which ablations). Pure: the same inputs give "
            "the same bytes.\n\nInputs: every run's metrics.json (ablations: also table 1's tpa runs).\n"
            "Outputs: results/<name>/table1.csv and plots/, or results/<name>/ablations.csv and "
            "ablation_<axis>.csv.")
    p.add_argument("--which", choices=["table1", "table1_first_seed", "ablations"], default="table1",
                   help="table1 (default), table1_first_seed or ablations")
    add("heatmaps", cmd_heatmaps, "plot AM flow heat maps, static against aligned",
        "Render AM flow heat maps over the frames of a static-camera and a moving-camera test clip, static "
        "against aligned variant, with the trained amflow runs' backbones.\n\nInputs: the amflow runs' "
        "metrics.json, data/frames/<dataset>-<spec>/, results/<name>/<dataset>/motion.npz.\nOutputs: "
        "results/<name>/plots/amflow_heatmaps.png and amflow_heatmaps.gif.")
    add("report", cmd_report, "write results/<name>/report.md with tables and plots",
        "Generate results/<name>/report.md (every table, every plot, one paragraph per table) from the results."
        "\n\nInputs: results/<name>/table1.csv, ablations.csv, plots/, <dataset>/localisation/.\n"
        "Outputs: results/<name>/report.md.")
    p = add("readme-results", cmd_readme_results, "write the README's results and timing sections",
            "Replace the README's two generated sections (each between two marker lines): the results, with "
            "table 1's top-1 over seeds, the paired difference to tpa, the claims as the report states them "
            "and the ablation rows; and the timing, with the run's wall time, overhead share and time per stage "
            "from its Snakemake log and benchmark files (`make readme-results`).")
    p.add_argument("--readme", type=Path, default=Path("README.md"), help="the file to update (default README.md)")
    p.add_argument("--log", type=Path, nargs="+", default=None,
                   help="the Snakemake log of the run to time, or the logs of the same run repeated, oldest "
                        "first (default: the latest under .snakemake/log/)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--no-timing", action="store_true", help="rewrite the results section only, not the timing one")
    only.add_argument("--timing-only", action="store_true",
                      help="rewrite the timing section only (the results section, ablation rows included, stays)")
    p = sub.add_parser("sweep", help="Optuna sweep over the adapter's hyperparameters",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run an Optuna sweep (seeded TPE, median pruner on per-epoch validation "
                                   "accuracy) and export the best trial as a params file.\n\n"
                                   "Inputs: what `amflow train` reads for --dataset and --method, and --space.\n"
                                   "Outputs: results/<name>/sweeps/<dataset>/<method>/: study.db, trials/, best.yaml, "
                                   "plots, summary.json; the best trial's model in its MLflow run.")
    from amflow.sweep.args import add_sweep_arguments  # light: argparse only

    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)
    # The commands below take other arguments than add() gives; their declarations share argparse's shape only.
    p = sub.add_parser("dvc-yaml", help="generate a params file's DVC pipeline from the Snakemake workflow",
                       description="Write pipelines/<name>/dvc.yaml, the DVC pipeline of a params file, from the "
                                   "same stage definitions that the Snakemake rules use (one source of truth). "
                                   "--check fails if the file on disk differs; --commit hands a finished "
                                   "Snakemake run over to DVC (docs/dvc.md).")
    p.add_argument("--params", default="params/default.yaml",
                   help="the params file the DVC stages read and track (default params/default.yaml)")
    p.add_argument("--output", type=Path, default=None,
                   help="file to write or check (default pipelines/<name>/dvc.yaml)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    mode.add_argument("--commit", action="store_true",
                      help="write the pipeline, check that every training run in results/ was made with the "
                           "params file's values (else name the run and the keys, and record nothing), then "
                           "record the outputs in its dvc.lock (dvc commit -f)")
    p.set_defaults(func=cmd_dvc_yaml)
    p = sub.add_parser("timed", help="run a command and write its Snakemake-format benchmark file (DVC stages)",
                       description="Run CMD and, when it succeeds, write FILE with the columns of Snakemake's "
                                   "benchmark files (wall and CPU seconds, peak memory). The DVC stages run "
                                   "through it, so a `dvc repro` leaves the files Snakemake's `benchmark:` "
                                   "directives name.")
    p.add_argument("--benchmark", type=Path, required=True, metavar="FILE", help="the benchmark file to write")
    # dest "wrapped": "command" is the subcommand's own name (the closing CPU line reads it)
    p.add_argument("wrapped", nargs=argparse.REMAINDER, metavar="command",
                   help="-- then the command and its arguments")
    p.set_defaults(func=cmd_timed)
    return parser


# A results or data folder the stage may not write (permissions, a read-only mount): one line, not the
# traceback of whichever mkdir, lock or open met it first.
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (AmflowError, FileNotFoundError) as exc:
        # Expected failures carry the file and the fix in their message: no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE or exc.filename is None:
            raise
        print(f"error: {exc.filename}: cannot be written ({exc.strerror}); make its folder writable, or give "
              f"writable folders with --results-dir and --data-dir", file=sys.stderr)
        return 1
    if not rc:
        print(CPU_LINE.format(command=args.command, cpu=process_cpu_s()), file=sys.stderr)
    return rc or 0


def run() -> None:
    """The ``amflow`` command (and ``python -m amflow.cli``): :func:`main`, then, on success, the process
    ends without the interpreter's teardown. Freeing torch's, timm's and MLflow's objects one by one at
    exit costs a training job 1.3 to 2 CPU s (bench/bench_exit.py). On success
    every file the command wrote is closed and every tracked run ended, so nothing is lost: only stdout
    and stderr, still buffered, are flushed first. A failure exits the usual way."""
    rc = main()
    if rc:
        sys.exit(rc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    run()
