"""The MLflow model of a trained run: a pyfunc that gives videos' top-k classes.

Training logs it into its MLflow run as ``model`` (load it with ``runs:/<run_id>/model`` or as the
MLflow 3 logged model ``models:/<model_id>``). It carries what :class:`~amflow.evaluate.predict.Predictor`
needs and nothing heavier:

- artefact ``params``: the run's resolved ``params.yaml``;
- artefact ``weights``: ``weights.pt``, the trainable weights (adapters, head), the class names, the
  resolved AM flow variant and the frozen backbone's checksum (no optimizer state);
- model config ``backbone_uri`` / ``backbone_sha256``: the frozen backbone file (the pipeline's pretrained
  one, or ``backbone.weights: file``), as an MLflow artefact logged once per content
  (:func:`amflow.tracking.backbone_artifact`: every run of a params file shares it, and a paper-size
  backbone is 340 MB), downloaded from the same store when the model is loaded and checked against
  its hash; the model holds no path of the machine that trained it;
- a signature: input a ``video`` column of paths; output one row per (video, rank) with ``video``,
  ``rank`` (1 = most probable), ``label``, ``probability``; param ``top_k`` (default 5, or the
  class count when smaller).

The model is stored as code (:mod:`amflow.evaluate.mlflow_entry`), not as a pickle. It needs the
``amflow`` package and its pinned dependencies (the model's requirements) where it is loaded, and the
tracking store it was logged to (copied or served elsewhere, its runs and artefacts together). A local
backbone file can stand in for the artefact: ``mlflow.pyfunc.load_model(uri, model_config={"backbone_file":
PATH})``, or ``amflow predict --model-uri URI --backbone PATH`` (models logged before the artefact
existed need it).
"""
from __future__ import annotations

import importlib.metadata
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import mlflow.artifacts
import mlflow.pyfunc
import pandas as pd
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from amflow import tracking
from amflow.errors import AmflowError
from amflow.evaluate.predict import DEFAULT_TOP_K, Predictor
from amflow.params_io import load_params
from amflow.train import checkpoint as ckpt

NAME = "model"
ENTRY = Path(__file__).with_name("mlflow_entry.py")
WEIGHTS = "weights.pt"
WEIGHT_KEYS = ("model", "meta", "frozen_fingerprint", "epoch")
OUTPUT_COLUMNS = ["video", "rank", "label", "probability"]


def signature(num_classes: int) -> ModelSignature:
    """Input a ``video`` column; output (video, rank, label, probability) rows; param ``top_k``
    (default 5, or the class count when smaller)."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", "video")]),
        outputs=Schema([ColSpec("string", "video"), ColSpec("long", "rank"), ColSpec("string", "label"),
                        ColSpec("double", "probability")]),
        params=ParamSchema([ParamSpec("top_k", "long", min(DEFAULT_TOP_K, num_classes))]),
    )


def frozen_backbone_file(params) -> Optional[Path]:
    """The file a run's frozen backbone was read from, when it has one: pretrained by the pipeline
    (``None`` here: the run's paths know it) or ``backbone.weights: file``."""
    return Path(params.backbone.weights_file) if params.backbone.weights == "file" else None


def _backbone_file(params, config: dict, folder: Path) -> Optional[Path]:
    """The frozen backbone for the model: a local file given in ``backbone_file``, else the artefact
    ``backbone_uri`` downloaded into ``folder`` and checked against ``backbone_sha256``."""
    if params.backbone.weights not in ("pretrain", "file"):
        return None
    given = config.get("backbone_file")
    if given and Path(given).is_file():
        return Path(given)
    fix = "give a local copy with --backbone PATH (model_config={'backbone_file': PATH} in mlflow.pyfunc.load_model)"
    if given or not config.get("backbone_uri"):
        raise AmflowError(f"the model's frozen backbone file {given} is not on this machine (sha256 "
                          f"{config.get('backbone_sha256')}); {fix}")
    uri = config["backbone_uri"]
    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except (MlflowException, OSError) as exc:
        raise AmflowError(f"the model's frozen backbone {uri} cannot be read from the MLflow store "
                          f"{mlflow.get_tracking_uri()} ({tracking.describe(exc)}); {fix}") from None
    if tracking.file_sha256(path) != config.get("backbone_sha256"):
        raise AmflowError(f"the model's frozen backbone {uri} does not have the sha256 the model recorded "
                          f"({config.get('backbone_sha256')}); the store was changed: {fix}")
    return path


class VideoClassifier(mlflow.pyfunc.PythonModel):
    """Rebuilds the run's model from the artefacts at load time; predicts a table of video paths."""

    def load_context(self, context) -> None:
        params = load_params(context.artifacts["params"])
        with tempfile.TemporaryDirectory() as tmp:  # the backbone is read into the model while loading
            backbone = _backbone_file(params, context.model_config or {}, Path(tmp))
            self.predictor = Predictor.from_model_files(Path(context.artifacts["params"]),
                                                        Path(context.artifacts["weights"]), backbone)

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict] = None) -> pd.DataFrame:
        top_k = (params or {}).get("top_k")
        rows = [(str(video), rank, label, prob)
                for video in model_input["video"]
                for rank, (label, prob) in enumerate(self.predictor.predict(video, top_k), start=1)]
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def requirements() -> list[str]:
    """The pins of the installed amflow package (pyproject.toml), without the optional extras."""
    try:
        reqs = importlib.metadata.requires("amflow") or []
    except importlib.metadata.PackageNotFoundError:
        return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__}"]
    return [r for r in reqs if "extra ==" not in r]


def log_run_model(tracker, *, params_yaml: Path, checkpoint: Path, backbone: Optional[Path]) -> Optional[str]:
    """Log the run's model into ``tracker``'s run as :data:`NAME`; returns the model URI (None when off)."""
    if tracker.run_id is None:
        return None
    done = logged_model(tracker)
    if done is not None:  # a rerun after a failed final logging: the final weights are already there
        return f"models:/{done}"
    state = ckpt.load_checkpoint(checkpoint)
    params = load_params(params_yaml)
    backbone = backbone or frozen_backbone_file(params)
    config = {}
    if backbone is not None:
        config = tracking.backbone_artifact(tracker.client, tracker.uri, params.tracking.experiment_prefix, backbone)
        # The key a local copy is given in at load time: MLflow overrides only the keys a model has.
        config["backbone_file"] = ""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow asks for an input example; one would be a video file path, which only exists here.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        weights = Path(tmp) / WEIGHTS
        torch.save({k: state[k] for k in WEIGHT_KEYS if k in state}, weights)
        info = tracker.log_model(
            mlflow.pyfunc, NAME, python_model=str(ENTRY),
            artifacts={"params": str(params_yaml), "weights": str(weights)},
            signature=signature(len(state["meta"]["compat"]["classes"])),
            model_config=config, pip_requirements=requirements(), step=int(state["epoch"]),
            metadata={"classes": list(state["meta"]["compat"]["classes"])})
    return f"runs:/{tracker.run_id}/{NAME}" if info is not None else None


def logged_model(tracker) -> Optional[str]:
    """The id of the model :func:`log_run_model` logged into this run, if it completed."""
    client = tracker.client
    for output in client.get_run(tracker.run_id).outputs.model_outputs:
        model = client.get_logged_model(output.model_id)
        if model.name == NAME and model.status == LoggedModelStatus.READY:
            return model.model_id
    return None


def load_predictor(model_uri: str, backbone: Optional[Path] = None, tracking_uri: Optional[str] = None) -> Predictor:
    """The :class:`Predictor` inside the MLflow model at ``model_uri`` (``runs:/...``, ``models:/...``)."""
    uri = tracking_uri or tracking.resolve_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise AmflowError(f"--model-uri {model_uri}: there is no MLflow store at {uri}; give the store the run was "
                          f"tracked in with --tracking-uri or MLFLOW_TRACKING_URI")
    tracking.check_reachable(uri)
    config = {"backbone_file": str(Path(backbone).resolve())} if backbone else None
    try:
        with tracking.using_store(uri):
            model = mlflow.pyfunc.load_model(model_uri, model_config=config)
    except (MlflowException, OSError) as exc:
        raise AmflowError(f"--model-uri {model_uri}: cannot load the MLflow model from {uri} "
                          f"({tracking.describe(exc)}); give runs:/<run id>/model or models:/<model id> of a "
                          f"training run, and the store it is in with --tracking-uri or MLFLOW_TRACKING_URI") from None
    return model.unwrap_python_model().predictor
