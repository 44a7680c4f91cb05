"""The params schema: one pydantic model validates every ``params/*.yaml``.

Snakemake's config, DVC's params and every ``amflow`` command read the same files through
:func:`load_params`, so a wrong key or type fails before any work starts, with an error that
names the file, the key and what was expected.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import re
import shlex
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from amflow import io
from amflow.paths import DATASET_NAME_PATTERN, dataset_name_problem

# Every enumeration once: the schema's fields, the CLI's choices, the models' checks and the workflow's
# wildcard constraints take their values from here.
Split = Literal["train", "val", "test"]
Method = Literal["frame", "aim", "st_adapter", "tpa", "amflow"]
CameraDecision = Literal["static", "aligned"]  # the camera stage's decision: the AM flow variants with scores
ModelVariant = Literal[CameraDecision, "none"]  # the variant a model is built with ('none': AM flow off = tpa)
AmFlowVariant = Literal["auto", "auto_per_video", ModelVariant]  # the params' choice, resolved before building
Tpu = Literal["transformer", "tcn", "lstm", "none"]
Alignment = Literal["grid", "warp", "warp_fill"]
Integration = Literal["gate", "attn_bias", "channels", "residual_gate", "pool"]
Control = Literal["none", "shuffled", "oracle", "footprint", "rank_matched", "uniform"]
MotionModel = Literal["similarity", "homography"]  # the camera-motion estimator's transform
Difficulty = Literal["easy", "standard", "clutter"]  # SynthMotion's scene styles (docs/design.md 3.1)

SPLITS = get_args(Split)
METHODS = get_args(Method)
CAMERA_DECISIONS = get_args(CameraDecision)
MODEL_VARIANTS = get_args(ModelVariant)
AM_FLOW_VARIANTS = get_args(AmFlowVariant)
TPUS = get_args(Tpu)
ALIGNMENTS = get_args(Alignment)
INTEGRATIONS = get_args(Integration)
CONTROLS = get_args(Control)
# The controls that read SynthMotion's ground truth (the actor's coverage of each pixel).
GROUND_TRUTH_CONTROLS = ("oracle", "footprint", "rank_matched")
MOTION_MODELS = get_args(MotionModel)
DIFFICULTIES = get_args(Difficulty)


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info) -> Any:
        # pydantic reads true/false as 1/0 where a number is expected: `epochs: true` must fail, not train 1 epoch.
        if _holds_bool(value) and not _accepts_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("true/false given where a number or a name is expected")
        return value


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_bool(v) for v in value.values())
    return False


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits a boolean (a nested section checks its own fields)."""
    if annotation is bool or annotation is Any or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return True
    return any(_accepts_bool(a) for a in get_args(annotation))


# --------------------------------------------------------------------------- datasets
class SynthSpec(Strict):
    """SynthMotion generator settings (docs/design.md 3.1). Fixed before any method is tuned."""

    camera: Literal["static", "moving"]
    difficulty: Difficulty = "easy"
    resolution: Literal[32, 64] = 32
    frames: int = Field(32, ge=8)
    speed_frames: int = Field(8, ge=2, le=64,
                              description="speeds (px per frame, docs/design.md 3.1) are per frame of a clip of this "
                                          "many frames; a clip of `frames` frames spreads the same motion over "
                                          "its frames, so the motion's amplitude does not depend on `frames`")
    fps: int = Field(25, ge=1)
    distractors: Optional[tuple[int, int]] = Field(
        None, description="inclusive range of the number of distractors per clip; default: the difficulty's "
                          "(easy 0, standard 0-2, clutter 2-3)")
    split_sizes: dict[Split, int] = {"train": 600, "val": 120, "test": 240}
    seed: int = 0
    workers: int = Field(0, ge=0, description="generator processes; 0 = one per core (does not change the output)")


    @field_validator("distractors")
    @classmethod
    def _range(cls, value):
        if value is not None and not 0 <= value[0] <= value[1]:
            raise ValueError(f"needs 0 <= first <= second (got {list(value)})")
        return value


class PretrainImagesSpec(Strict):
    """The single-image set for backbone pretraining (attribute labels only, never motion)."""

    images: int = Field(30000, ge=100)
    val_images: int = Field(2000, ge=100)
    resolution: Literal[32, 64] = 32
    difficulty: Difficulty = "easy"
    seed: int = 1000
    workers: int = Field(0, ge=0, description="generator processes; 0 = one per core (does not change the output)")


class DownloadSpec(Strict):
    """How Kinetics-400 is fetched from the CVDF mirror (amflow/data/download.py, sources/kinetics.py)."""

    workers: int = Field(4, ge=1, description="parallel downloads")
    retries: int = Field(3, ge=0, description="retries per file after a failed or interrupted transfer")
    backoff_s: float = Field(2.0, ge=0, description="wait before retry k is backoff_s * 2**k seconds")
    timeout_s: float = Field(60.0, gt=0, description="connect/read timeout per request, seconds")
    base_url: str = "https://s3.amazonaws.com/kinetics/400"
    splits: list[Split] = ["train", "val"]
    max_archives: Optional[int] = Field(None, ge=1, description="download only the first N tarballs per split")
    replacement_url: Optional[str] = Field(
        "replacement_for_corrupted_k400.tgz",
        description="archive of re-encoded copies of corrupted K400 clips; relative to base_url or absolute; "
                    "null to skip")
    checksums: dict[str, str] = Field(
        default_factory=dict,
        description="optional 'md5:<hex>' or 'sha256:<hex>' per file, keyed by its path under base_url "
                    "(e.g. 'train/part_0.tar.gz') or by its full URL")
    keep_archives: bool = Field(False, description="keep tarballs after a verified extraction (else delete: "
                                                   "K400 is ~436 GB twice otherwise)")


class DatasetSpec(Strict):
    """Where a dataset comes from and how its frames are cached."""

    source: Literal["synthmotion", "kinetics400", "ssv2", "smarthome", "list"]
    synth: Optional[SynthSpec] = None
    root: Optional[str] = Field(None, description="folder holding the user's files (ssv2, smarthome, list); "
                                                   "kinetics400: download folder (default: the dataset folder)")
    annotations: Optional[dict[Split, str]] = Field(
        None, description="for source=list: one `path label` txt or csv per split")
    protocol: Optional[Literal["cs", "cv1", "cv2"]] = Field(None, description="Toyota Smarthome protocol")
    download: DownloadSpec = DownloadSpec()
    short_side: int = Field(32, ge=8, description="frames are resized so that the short side has this size")
    encoding: Literal["raw", "jpeg"] = Field("raw", description="frame cache encoding: raw uint8 or JPEG")
    jpeg_quality: int = Field(90, ge=10, le=100)
    shard_frames: int = Field(20000, ge=100, description="frames per cache shard")
    max_videos: Optional[dict[Split, int]] = Field(
        None, description="cap on videos per split (quick runs)")
    val_fraction: Optional[float] = Field(
        None, gt=0, lt=1,
        description="if set, 'val' is a seeded, class-stratified holdout of the train split (removed from train) "
                    "instead of the dataset's own val split; where the source has no val split of its own "
                    "(Smarthome CS, a list without a val file, K400/SSv2 with test_source: val) 0.1 when unset")
    split_seed: int = Field(0, description="seed of the val holdout and of the max_videos subsample")
    test_source: Literal["val", "test"] = Field(
        "val", description="kinetics400, ssv2: 'val' makes the official validation set our test split (what "
                           "published numbers use; our val is then held out of train, see val_fraction), 'test' "
                           "uses the official test labels as test and the official val as val")

    @model_validator(mode="after")
    def _source_needs(self):
        if self.source == "synthmotion" and self.synth is None:
            raise ValueError("source 'synthmotion' needs a 'synth' section")
        if self.source == "list" and not self.annotations:
            raise ValueError("source 'list' needs 'annotations' (one file per split)")
        if self.source in ("ssv2", "smarthome", "list") and not self.root:
            raise ValueError(f"source '{self.source}' needs 'root': the folder with your files")
        if self.source == "smarthome" and self.protocol is None:
            raise ValueError("source 'smarthome' needs 'protocol': cs, cv1 or cv2")
        if self.source == "kinetics400" and self.test_source == "test" and "test" not in self.download.splits:
            raise ValueError("test_source: test needs 'test' in download.splits")
        return self


class SamplingSpec(Strict):
    """Clip sampling (docs/design.md 3.3): segment-based (SSv2 style) or dense with stride (K400 style)."""

    mode: Literal["segment", "dense"] = "segment"
    num_frames: int = Field(8, ge=2)
    stride: int = Field(1, ge=1, description="frame interval for dense sampling")
    crop_size: int = Field(32, ge=8)
    train_scale: tuple[float, float] = Field((0.8, 1.0), description="random-resized-crop area range")
    train_flip: bool = Field(False, description="horizontal flip; off where left/right is the label")
    test_clips: int = Field(1, ge=1)
    test_crops: Literal[1, 3] = 1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- camera motion
class CameraMotionSpec(Strict):
    """Camera-motion classification (docs/design.md 2.5)."""

    sample_videos: int = Field(60, ge=1)
    pairs_per_video: int = Field(8, ge=1)
    seed: int = 0
    moving_threshold: float = Field(0.005, gt=0,
                                    description="median background displacement per frame pair, "
                                                "as a fraction of the frame diagonal, above which a video is "
                                                "'moving'; measured on 32 px easy SynthMotion clips: static "
                                                "<= 0.004, moving >= 0.0066 (params/paper.yaml: 0.01 for real "
                                                "footage)")
    dataset_moving_share: float = Field(0.5, ge=0, le=1,
                                        description="share of moving videos above which the dataset uses 'aligned'")
    model: MotionModel = "similarity"
    min_inlier_ratio: float = Field(0.3, ge=0, le=1,
                                    description="RANSAC inliers / textured grid points below which a frame pair is invalid")
    min_ncc: float = Field(0.5, ge=-1, le=1,
                           description="photometric check: median block NCC of the warped frame against the next "
                                       "one below which a pair is invalid (scene cuts)")
    max_side: int = Field(160, ge=16, description="frames with a longer side are downscaled before estimation")
    sample_split: Literal["train", "all"] = Field(
        "train", description="split the classification sample is drawn from ('train': no val/test frames "
                             "influence the variant decision)")
    workers: int = Field(0, ge=0, description="processes computing the transforms of all videos; 0 = one per core")


# --------------------------------------------------------------------------- model
class BackboneSpec(Strict):
    """The frozen ViT. The defaults are the embedded default's: a 4-block, 96-wide ViT with 8 px patches on
    32 px frames (a 4 x 4 patch grid), sized for a CPU run on two cores and pretrained by the pipeline."""

    model: str = Field("vit_tiny_patch16_224", description="timm model name")
    kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3},
        description="extra timm.create_model arguments ({} for the model's own); state them with `model`")
    weights: Literal["pretrain", "hub", "file", "random"] = "pretrain"
    weights_file: Optional[str] = None

    @model_validator(mode="after")
    def _file(self):
        if self.weights == "file" and not self.weights_file:
            raise ValueError("weights: file needs weights_file")
        if self.model != type(self).model_fields["model"].default and "kwargs" not in self.model_fields_set:
            # The default kwargs size the default model down to 32 px: never apply them to another model.
            raise ValueError(f"model {self.model!r} needs its own 'kwargs' next to it ({{}} for the model's "
                             f"own settings): the default kwargs shrink the default model to 32 px")
        return self


class PretrainSpec(Strict):
    """Backbone pretraining on the single-image set (embedded default only)."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    min_gain_over_chance: float = Field(0.1, ge=0, description="mean attribute accuracy must beat chance by this "
                                                                "(0 disables the check: quick runs on tiny sets)")
    seed: int = 0


class AdapterSpec(Strict):
    bottleneck: int = Field(32, ge=1)
    position: Literal["parallel_mlp", "after_attn"] = "parallel_mlp"
    blocks: Union[Literal["all"], list[int]] = "all"
    tpu: Tpu = "transformer"
    tcn_kernel: int = Field(3, ge=1)
    tcn_dilations: list[int] = [1, 2]
    drop_path: float = Field(0.0, ge=0, lt=1)
    scale: float = Field(1.0, gt=0)
    tpu_heads: int = Field(4, ge=1, description="attention heads of the 'transformer' TPU; must divide bottleneck")
    st_kernel: tuple[int, int, int] = Field(
        (3, 1, 1), description="ST-Adapter depthwise Conv3d kernel over (T, h, w); odd sizes (centred)")


class AmFlowSpec(Strict):
    variant: AmFlowVariant = "auto"
    temperature: float = Field(2.0, gt=0, description="softmax temperature, in units of the mean |A_t - A_t+1|")
    source: Union[Literal["same"], int] = Field("same", description="'same' block or a fixed block index")
    normalise: Literal["mean", "max", "none"] = "mean"
    aligned_floor: float = Field(
        0.25, ge=0, le=1,
        description="aligned variant: the temperature's reference scale is at least this fraction of the "
                    "uncompensated mean |A_t - A_t+1|, so the small residual a pure camera motion leaves "
                    "(positional embeddings, borders, sub-patch resampling) is not blown up into a peaked "
                    "map; 0 = purely relative; identity transforms give the static result whatever its value")
    noise_floor: float = Field(
        0.0, ge=0, description="the temperature's reference scale is at least this multiple of the backbone's "
                               "noise level in the block: the mean |A_t - A_t+1| of still clips (a val clip's "
                               "first frame held for every frame, with `still_noise` sensor noise and the "
                               "project's H.264 settings), measured when training starts and kept in the "
                               "checkpoint; then frames that differ by noise only give near-uniform scores. "
                               "0 = off (the scale is purely relative)")
    still_noise: float = Field(
        0.0235, ge=0, le=1, description="standard deviation of the sensor noise on each frame of the still clips "
                                        "that calibrate `noise_floor`, in [0, 1] intensity units (SynthMotion "
                                        "draws 3/255 for easy and 6/255 = 0.0235 for standard and clutter)")
    alignment: Alignment = Field(
        "grid", description="aligned variant: 'grid' resamples frame t+1's attention map on the patch grid "
                            "(cheap; exact for whole-patch camera motion only); 'warp' warps frame t+1 into "
                            "frame t in pixel space and runs the frozen backbone on it (sub-patch motion; "
                            "the scores then come from the frozen backbone's maps), leaving out every patch "
                            "the warp does not fully cover; 'warp_fill' is 'warp' keeping every patch: the "
                            "strip frame t+1 does not cover holds frame t's own pixels, so it shows no change")
    integration: Integration = Field(
        "gate", description="how the scores enter the adapter: 'gate' multiplies the bottleneck patch tokens "
                            "before the TPU; 'attn_bias' adds a learned per-head multiple of the attended "
                            "frame's score to the transformer TPU's attention logits; 'channels' adds "
                            "zero-initialised bottleneck channels fed from the score, its change over time "
                            "and its 3x3 neighbourhood; 'residual_gate' scales the TPU's output by "
                            "1 + w * (score - 1) with a learned w; 'pool' adds to the logits a zero-initialised "
                            "linear map of the score-weighted mean of the last adapted block's patch tokens "
                            "(after the final norm), a path to the prediction that no norm can erase. All but "
                            "'gate' start at zero (= tpa)")
    control: Control = Field(
        "none", description="controls: 'shuffled' permutes each frame's scores across patches (same "
                            "values, no location); 'oracle' replaces them by the ground-truth actor "
                            "coverage of each patch in each frame, normalised like the scores (SynthMotion "
                            "only; it carries the actor's trajectory); 'footprint' by the actor's coverage "
                            "averaged over the clip, one map for every frame (where, not how it moves); "
                            "'rank_matched' gives each frame's own AM flow values to the patches in the order "
                            "of the actor's coverage (same values, perfect ranking); 'uniform' by 1 everywhere "
                            "(the integration without location)")


class ModelSpec(Strict):
    adapter: AdapterSpec = AdapterSpec()
    am_flow: AmFlowSpec = AmFlowSpec()


# --------------------------------------------------------------------------- training
class TrainSpec(Strict):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1, description="global batch (all processes together)")
    accum_steps: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    num_workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0, description="torch threads per process; 0 = leave torch's default")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrackingSpec(Strict):
    uri: Optional[str] = Field(None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment_prefix: str = "amflow"


class AblationsSpec(Strict):
    """The ablation grid (`snakemake ablations`): one run per value and seed, each changing one key of the
    params. The default grid (22 runs per seed, docs/method.md) is written here, once."""

    dataset_pairs: list[str] = Field(["synth_static", "synth_moving"],
                                     description="datasets on which every value of `variants` runs")
    variants: list[Literal[ModelVariant, "auto"]] = Field(["none", "static", "aligned", "auto"],
                                                          description="model.am_flow.variant values")
    tpus: list[Tpu] = Field(list(TPUS), description="model.adapter.tpu values")
    source_layers: list[Union[Literal["same"], int]] = Field(["same", 0], description="model.am_flow.source values")
    num_blocks: list[int] = Field([2, 4], description="adapters in the last n blocks only (model.adapter.blocks)")
    frames: list[int] = Field([4, 8], description="sampling.num_frames values")
    alignments: list[Alignment] = Field(
        default_factory=list, description="aligned AM flow's alignment methods (variant forced to aligned)")
    integrations: list[Integration] = Field(
        default_factory=list, description="ways the scores enter the adapter")
    controls: list[Control] = Field(
        default_factory=list, description="score controls ('oracle', 'footprint' and 'rank_matched' need "
                                          "SynthMotion's ground truth)")
    dataset: str = Field("synth_moving", description="dataset for the single-axis ablations")
    tpu_with_tpa: bool = Field(True, description="also run each TPU of 'tpus' with tpa (axis tpu_tpa), so "
                               "that every TPU compares AM flow with the same adapter without it")
    grid: Optional["AblationGridSpec"] = Field(
        None, description="AM flow settings crossed with each other on several datasets (axis grid)")


class AblationGridSpec(Strict):
    """AM flow's fair test on several datasets (``amflow`` runs, axis ``grid``, value
    ``<variant>-<integration>-<control>``), compared with table 1's ``tpa`` runs of the same seeds: every
    integration with each of ``variants`` (no control), and every control of ``controls`` with every
    integration, at the dataset's own variant (``auto``: the camera-motion stage's decision)."""
    variants: list[Literal[CameraDecision, "auto"]] = list(CAMERA_DECISIONS)
    integrations: list[Integration] = list(INTEGRATIONS)
    controls: list[Control] = list(CONTROLS)
    datasets: list[str] = ["synth_static", "synth_moving"]


AblationsSpec.model_rebuild()


class Params(Strict):
    """A whole params file."""

    name: str = Field(..., description="configuration name, used in run names")
    datasets: dict[str, DatasetSpec]
    table_datasets: list[str] = Field(..., description="datasets that table1 reports")
    methods: list[Method] = list(METHODS)
    seeds: list[int] = [0]
    pretrain_images: Optional[PretrainImagesSpec] = None
    sampling: SamplingSpec = SamplingSpec()
    sampling_overrides: dict[str, SamplingSpec] = Field(default_factory=dict, description="per-dataset sampling")
    camera_motion: CameraMotionSpec = CameraMotionSpec()
    backbone: BackboneSpec = BackboneSpec()
    pretrain: PretrainSpec = PretrainSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    tracking: TrackingSpec = TrackingSpec()
    ablations: AblationsSpec = AblationsSpec()

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        # The name becomes results/<name> and logs/<name>: the same rule as a dataset's name.
        if not re.fullmatch(DATASET_NAME_PATTERN, name):
            raise ValueError(f"{name!r} is not allowed: use letters, digits, '_' and '-', starting with a letter "
                             f"or digit (it becomes the folder results/<name>)")
        return name

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, datasets: dict) -> dict:
        # A name becomes a folder (data/<name>, data/frames/<name>, results/<name>): check it before it does.
        problems = [p for p in map(dataset_name_problem, datasets) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return datasets

    @model_validator(mode="after")
    def _consistent(self):
        for name in self.table_datasets:
            if name not in self.datasets:
                raise ValueError(f"table_datasets names '{name}', which is not under 'datasets'")
        for name in self.sampling_overrides:
            if name not in self.datasets:
                raise ValueError(f"sampling_overrides names '{name}', which is not under 'datasets'")
        if self.backbone.weights == "pretrain" and self.pretrain_images is None:
            raise ValueError("backbone.weights: pretrain needs a 'pretrain_images' section")
        return self

    def sampling_for(self, dataset: str) -> SamplingSpec:
        return self.sampling_overrides.get(dataset, self.sampling)

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise KeyError(f"dataset '{name}' is not in params '{self.name}' (known: {', '.join(self.datasets)})")
        return self.datasets[name]


class ParamsError(ValueError):
    """A params file that does not validate; the message names the file and every bad key."""


def _section(annotation: Any) -> Any:
    """A field's type without Optional/Union around it: the section (a model) or mapping it holds."""
    if get_origin(annotation) is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return annotation
    inner = [_section(a) for a in get_args(annotation)]
    return next((a for a in inner if a is not None), None)


def _known_keys(loc: tuple) -> list[str]:
    """The keys the schema allows where ``loc`` (a validation error's location) ends: the field names of
    the section that holds it (a mapping such as ``datasets`` is looked through to its values)."""
    node: Any = Params
    for part in loc[:-1]:
        node = _section(node)
        if get_origin(node) is dict:
            node = get_args(node)[1]
        elif node is not None and part in node.model_fields:
            node = node.model_fields[part].annotation
        else:
            return []
    node = _section(node)
    return list(node.model_fields) if node is not None and get_origin(node) is not dict else []


def _format_errors(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid params ({err.error_count()} problem(s)):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), _known_keys(e["loc"]), n=1)
            hint = f"did you mean '{'.'.join([*map(str, e['loc'][:-1]), close[0]])}'? " if close else ""
            msg = f"unknown key ({hint}check the spelling; `amflow validate --show` lists every known key)"
        got = e.get("input")
        # A whole section echoed back, cut at 60 characters, says nothing the key does not.
        got_s = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r:.60})"
        lines.append(f"  - {key}: {msg}{got_s}")
    return "\n".join(lines)


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last one silently: a second ``train:`` section would replace the first whole.
    """


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first != key_node.start_mark.line + 1:
            raise _DuplicateKey(
                None, None, f"key '{key}' is given twice (lines {first} and {key_node.start_mark.line + 1}): "
                            f"merge the two into one", key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    if not path.is_file():
        raise ParamsError(f"{path}: is a folder, not a params file; pass a YAML file such as params/default.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
                          f"save the file as UTF-8") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot be read ({exc.strerror}); check the file's permissions") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ParamsError(_yaml_error(path, exc)) from None
    if data is None:
        raise ParamsError(f"{path}: the params file is empty; state `extends: <a params file>` and the values that "
                          f"differ from it, or every section (params/default.yaml shows them)")
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: the file, the line and what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, _DuplicateKey):
        return f"{where}: {problem}"
    if "could not determine a constructor for the tag" in problem:
        tag = problem.rsplit(" ", 1)[-1]
        return (f"{where}: the tag {tag} is not allowed (params hold plain numbers, strings, lists and "
                f"mappings only); remove the tag")
    return f"{where}: not valid YAML ({problem}); fix the file"


def resolve_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a params file, following ``extends: other.yaml`` (relative to the file) recursively."""
    path = Path(path)
    key = path.resolve()
    if key in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(key):], key))
        raise ParamsError(f"{path}: 'extends' goes round in a circle ({cycle}); remove one of these 'extends:' lines")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is not None:
        data = deep_merge(_extended(str(path), path.parent, parent, (*_chain, key)), data)
    return data


def _extended(extender: str, folder: Path, parent: Any, chain: tuple[Path, ...] = ()) -> dict:
    """The params that ``extends: parent`` (said by ``extender``) names, relative to ``folder``."""
    if not isinstance(parent, str):
        raise ParamsError(f"{extender}: 'extends' must be the path of one params file (got {parent!r})")
    target = folder / parent
    if not target.exists():
        raise ParamsError(f"{extender}: 'extends: {parent}' names {target}, which does not exist; fix the path "
                          f"(it is relative to {folder.absolute()})")
    return resolve_raw(target, chain)


def validate(data: dict, source: str = "<params>") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_errors(source, err)) from None


def load_params(path: str | Path, overrides: Optional[dict] = None, overrides_source: str = "the overrides") -> Params:
    """Load and validate a params file (with ``extends``), optionally deep-merging ``overrides``.

    A mistake is blamed on where it is: when the file is valid alone, the errors name
    ``overrides_source`` (``--set train.epochz=1``) and the file they apply to."""
    data = resolve_raw(path)
    if not overrides:
        return validate(data, str(path))
    try:
        return Params.model_validate(deep_merge(data, overrides))
    except ValidationError as err:
        try:
            Params.model_validate(data)
            source = f"{overrides_source} (on {path})"
        except ValidationError:
            source = f"{path} (with {overrides_source})"
        raise ParamsError(_format_errors(source, err)) from None


def set_dotted(data: dict, dotted: str, value: Any) -> dict:
    """Set ``a.b.c`` in a nested dict (used for command-line overrides and sweeps)."""
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ParamsError(f"cannot set '{dotted}': '{k}' is not a mapping")
    node[keys[-1]] = value
    return data


def set_source(items: list[str]) -> str:
    """How an error names the command line's ``--set KEY=VALUE`` items (as the user typed them)."""
    return " ".join(f"--set {shlex.quote(item)}" for item in items)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value parsed as YAML (so numbers, lists and booleans work)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}' must look like key.path=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"--set '{text}': the value is not valid YAML ({problem}); write it as YAML, e.g. "
                          f"--set train.epochs=2 or --set 'model.adapter.blocks=[4, 5]'") from None


def resolve_workflow_config(command_line: dict, default: str | Path, source: str = "the command line's config") -> dict:
    """The params of a Snakemake run, from what its command line gave (``--configfile`` and ``--config``,
    which Snakemake has merged) and the workflow's default params file.

    What the command line gave extends the file its ``extends:`` names (relative to the default's folder:
    Snakemake does not tell the workflow where a config file was), as ``params/tiny.yaml`` extends
    ``default.yaml``. Without ``extends:``, it is complete when it has ``datasets``: it is used as it is;
    otherwise it extends the default: overrides such as ``--config 'train={epochs: 1}'``.
    Mappings merge key by key, as Snakemake merges config files. ``source`` names what the command line
    gave, for the errors.
    """
    data = copy.deepcopy(command_line)
    parent = data.pop("extends", None)
    if parent is not None:
        base = _extended(source, Path(default).parent, parent)
    elif "datasets" in data:
        base = {}
    else:
        base = resolve_raw(default)
    return deep_merge(base, data)


def resolved_text(params: Params) -> str:
    """``params`` as a complete params file: every value, the schema's defaults included."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)


def write_resolved(params: Params, folder: str | Path) -> Path:
    """Write ``params`` as a complete params file named by its content (``<name>-<hash>.yaml``), so that
    workflow jobs read exactly the values the workflow validated; the same values give the same file."""
    text = resolved_text(params)
    path = Path(folder) / f"{params.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.exists() or path.read_text() != text:
        io.write_text(path, text)
    return path
