"""The params schema: one pydantic model validates every ``params/*.yaml`` (read by
:mod:`amflow.params_io`, which follows ``extends:`` and names the file and key of every mistake).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_serializer, model_validator

from amflow import methods as method_registry
from amflow.paths import DATASET_NAME_PATTERN, dataset_name_problem
from amflow.registry import Registry

# Every enumeration once: the schema's fields, the CLI's choices, the models' checks and the workflow's
# wildcard constraints take their values from here (the methods from their registry, amflow.methods).
Split = Literal["train", "val", "test"]
CameraDecision = Literal["static", "aligned"]  # the camera stage's decision: the AM flow variants with scores
ModelVariant = Literal[CameraDecision, "none"]  # the variant a model is built with ('none': AM flow off = tpa)
AmFlowVariant = Literal["auto", "auto_per_video", ModelVariant]  # the params' choice, resolved before building
Tpu = Literal["transformer", "tcn", "lstm", "none"]
Alignment = Literal["grid", "warp", "warp_fill"]
Integration = Literal["gate", "attn_bias", "channels", "residual_gate", "pool"]
Control = Literal["none", "shuffled", "oracle", "footprint", "rank_matched", "uniform"]
MotionModel = Literal["similarity", "homography"]  # the camera-motion estimator's transform
Difficulty = Literal["easy", "standard", "clutter"]  # SynthMotion's scene styles (docs/design.md 3.1)
TestSource = Literal["val", "test"]

SPLITS = get_args(Split)
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


TEST_SOURCE_HELP = ("'val' makes the official validation set our test split (what published numbers use; our val "
                    "is then held out of train, see val_fraction), 'test' uses the official test labels as test "
                    "and the official val as val")


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


class DatasetBase(Strict):
    """What every dataset states, whatever its source: how its frames are cached and its splits drawn.
    Each source has its own schema (a subclass with ``source: Literal[<name>]`` and its own fields),
    registered with :func:`register_source`; a dataset is validated by the schema its ``source:`` names."""

    source: str
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

    @model_validator(mode="before")
    @classmethod
    def _other_sources_fields(cls, data: Any) -> Any:
        # Another source's field at the value every dataset had before each source got its schema (as the
        # resolved params files hold them, see _flat_layout) says nothing: drop it; any other value is an error.
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, default in _OTHER_SOURCES_DEFAULTS.items():
            if key in out and key not in cls.model_fields:
                if _same_value(out[key], default):
                    del out[key]
                else:
                    raise ValueError(f"'{key}' does not apply to source '{data.get('source')}' (its keys: "
                                     f"{', '.join(cls.model_fields)}); remove it")
        return out

    @model_serializer(mode="wrap")
    def _flat_layout(self, handler, info) -> dict:
        # Dumped in the one layout every dataset had before each source got its own schema: another
        # source's field at the value it then had. The data key (amflow.paths.dataset_key), a run's digest
        # and the params MLflow logs hash this dump, so they stay what they were.
        own = handler(self)
        if not isinstance(own, dict):
            return own
        absent = {k: (v.model_dump(mode=info.mode) if isinstance(v, BaseModel) else v)
                  for k, v in _OTHER_SOURCES_DEFAULTS.items() if k not in own}
        flat = {k: own[k] if k in own else absent[k] for k in _FLAT_ORDER if k in own or k in absent}
        return {**flat, **{k: v for k, v in own.items() if k not in flat}}


class SynthMotionDataset(DatasetBase):
    """SynthMotion, generated (H.264 mp4 + annotations; amflow.data.sources.synthmotion)."""

    source: Literal["synthmotion"]
    synth: SynthSpec


class Kinetics400Dataset(DatasetBase):
    """Kinetics-400, downloaded from the CVDF mirror, resumable and verified (amflow.data.sources.kinetics)."""

    source: Literal["kinetics400"]
    root: Optional[str] = Field(None, description="download folder (default: the dataset folder)")
    download: DownloadSpec = DownloadSpec()
    test_source: TestSource = Field("val", description=TEST_SOURCE_HELP)

    @model_validator(mode="after")
    def _test_downloaded(self):
        if self.test_source == "test" and "test" not in self.download.splits:
            raise ValueError("test_source: test needs 'test' in download.splits")
        return self


class Ssv2Dataset(DatasetBase):
    """Something-Something v2, verified in the folder 'root' names (amflow.data.sources.ssv2)."""

    source: Literal["ssv2"]
    root: str = Field(..., description="the folder with your files: the label JSONs and the videos")
    test_source: TestSource = Field("val", description=TEST_SOURCE_HELP)


class SmarthomeDataset(DatasetBase):
    """Toyota Smarthome, verified in the folder 'root' names (amflow.data.sources.smarthome)."""

    source: Literal["smarthome"]
    root: str = Field(..., description="the folder with the unpacked mp4 clips")
    protocol: Literal["cs", "cv1", "cv2"] = Field(..., description="Toyota Smarthome protocol")


class ListDataset(DatasetBase):
    """Your videos, listed per split in 'annotations' files under 'root' (amflow.data.sources.video_list)."""

    source: Literal["list"]
    root: str = Field(..., description="the folder the lists' paths are relative to; classes.txt may sit there")
    annotations: dict[Split, str] = Field(..., min_length=1, description="one `path label` txt or csv per split")


# Every field a source's schema adds, with the value a dataset of another source had in the one layout
# all datasets shared before, in that layout's order (_flat_layout).
_OTHER_SOURCES_DEFAULTS: dict[str, Any] = {"synth": None, "root": None, "annotations": None, "protocol": None,
                                           "download": DownloadSpec(), "test_source": "val"}
_FLAT_ORDER = ("source", "synth", "root", "annotations", "protocol", "download", *DatasetBase.model_fields.keys(),
               "test_source")


def _same_value(given: Any, default: Any) -> bool:
    if isinstance(default, BaseModel):
        try:
            return type(default).model_validate(given) == default
        except ValidationError:
            return False
    return given == default


SOURCE_SCHEMAS: Registry[type[DatasetBase]] = Registry("dataset source")


def register_source(schema: type[DatasetBase]) -> type[DatasetBase]:
    """Register a source's schema under its ``source:`` value and rebuild :class:`Params` with it."""
    SOURCE_SCHEMAS.register(source_name(schema), schema)
    _rebuild_params()
    return schema


@contextmanager
def source_added(schema: type[DatasetBase]) -> Iterator[type[DatasetBase]]:
    """``schema`` registered for the duration of a ``with`` block (tests, a source tried out)."""
    try:
        with SOURCE_SCHEMAS.added(source_name(schema), schema):
            _rebuild_params()
            yield schema
    finally:
        _rebuild_params()


def _source_of(value: Any) -> Any:
    return value.get("source") if isinstance(value, dict) else getattr(value, "source", None)


def source_summary(name: str) -> str:
    """The first line of the source's schema's docstring (the CLI's help)."""
    return (SOURCE_SCHEMAS.get(name).__doc__ or "").strip().splitlines()[0]


def source_name(schema: type[DatasetBase]) -> str:
    [name] = get_args(schema.model_fields["source"].annotation)
    return name


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
    datasets: dict[str, "DatasetSpec"] = Field(..., description="one entry per dataset; its 'source:' picks "
                                                                  "its schema (SOURCE_SCHEMAS)")
    table_datasets: list[str] = Field(..., description="datasets that table1 reports")
    methods: list[str] = Field(default_factory=lambda: list(method_registry.names()),
                               description="methods of table 1 (amflow.methods: frame, aim, st_adapter, tpa, amflow)")
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

    @field_validator("methods")
    @classmethod
    def _registered_methods(cls, names: list[str]) -> list[str]:
        unknown = [m for m in names if m not in method_registry.METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(method_registry.names())}")
        return names

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

    def dataset(self, name: str) -> DatasetBase:
        if name not in self.datasets:
            raise KeyError(f"dataset '{name}' is not in params '{self.name}' (known: {', '.join(self.datasets)})")
        return self.datasets[name]


def _rebuild_params() -> None:
    """Complete :class:`Params` with the union of the registered sources' schemas, told apart by ``source``."""
    global DatasetSpec
    # A callable discriminator: Strict's before-validator runs on every field, `source` included.
    tagged = tuple(Annotated[SOURCE_SCHEMAS.get(n), Tag(n)] for n in SOURCE_SCHEMAS.names())
    DatasetSpec = Annotated[Union[tagged], Discriminator(  # noqa: UP007 (a runtime tuple)
        _source_of, custom_error_type="unknown_source",
        custom_error_message=f"'source' must be one of {', '.join(SOURCE_SCHEMAS.names())}")]
    # The field's type is replaced and the validator rebuilt (pydantic keeps a resolved annotation).
    Params.__pydantic_fields__["datasets"].annotation = dict[str, DatasetSpec]
    Params.model_rebuild(force=True)


for _schema in (SynthMotionDataset, Kinetics400Dataset, Ssv2Dataset, SmarthomeDataset, ListDataset):
    SOURCE_SCHEMAS.register(source_name(_schema), _schema)
_rebuild_params()
