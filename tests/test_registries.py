"""Methods, AM flow integrations and dataset sources are registered parts: a new one is a module that
registers it, and everything that lists them (the schema, the CLI, the workflow, the model factory)
finds it. Here a toy of each is added in a temporary registration and built."""
import dataclasses
import os
from typing import Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch
import yaml
from pydantic import Field
from torch import nn

from amflow import methods
from amflow.data import annotations, sources
from amflow.stages.prepare import prepare_dataset
from amflow.data.sources.base import PreparedDataset, Source
from amflow.errors import AmflowError
from amflow.import_graph import imported, modules
from amflow.models import build_backbone, build_model
from amflow.models.config import AdapterConfig, AmFlowConfig, BackboneConfig, ModelConfig, plain
from amflow.models.integrations import INTEGRATIONS, Integration
from amflow.models.methods import METHOD_MODELS, MethodModel
from amflow.params import INTEGRATIONS as SCHEMA_INTEGRATIONS, DatasetBase, ModelSpec, source_added
from amflow.params_io import ParamsError, load_params
from conftest import ROOT

torch.set_num_threads(1)

S, T, B, CLASSES = 32, 4, 2, 3
BACKBONE = BackboneConfig(model="vit_tiny_patch16_224", weights="random", weights_file=None,
                          kwargs=dict(img_size=S, patch_size=8, embed_dim=32, depth=2, num_heads=2))


def plain_model_config(**am_flow) -> ModelConfig:
    """The default model settings as plain values (no params schema), with ``am_flow`` changed."""
    config = plain(ModelConfig, ModelSpec())
    return dataclasses.replace(config, am_flow=dataclasses.replace(config.am_flow, **am_flow))


def backbone() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(BACKBONE)


# --------------------------------------------------------------------------- a toy method
class FrameShift(nn.Module):
    """A toy adapter: every token gets a learned per-frame offset before the frozen block."""

    def __init__(self, dim: int, num_frames: int):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(num_frames, dim))

    def forward(self, blk: nn.Module, x: torch.Tensor, ctx, index: int) -> torch.Tensor:
        shifted = x.view(-1, ctx.frames, *x.shape[1:]) + self.offset[None, :, None, :]
        return blk(shifted.flatten(0, 1))


def test_a_toy_method_is_validated_planned_and_built():
    toy = methods.Method("frameshift", camera_motion=True)
    with methods.METHODS.added(toy.name, toy), METHOD_MODELS.added(
            toy.name, MethodModel(lambda dim, adapter, frames, flow, last: FrameShift(dim, frames))):
        params = load_params(ROOT / "params" / "tiny.yaml", {"methods": ["tpa", "frameshift"]})
        assert params.methods == ["tpa", "frameshift"]
        assert "frameshift" in methods.comparison_order("amflow", {"tpa", "frameshift"})
        model = build_model("frameshift", backbone(), CLASSES, T, plain_model_config(), "none")
        assert sorted(model.block_adapters) == ["0", "1"]
        assert all(isinstance(m, FrameShift) for m in model.block_adapters.values())
        video = torch.randn(B, T, 3, S, S)
        before = model(video)
        assert before.shape == (B, CLASSES)
        with torch.no_grad():
            model.block_adapters["0"].offset[1].normal_()
        assert not torch.allclose(model(video), before)  # the registered blocks are the ones that run
    with pytest.raises(ParamsError, match="unknown method.*frameshift"):
        load_params(ROOT / "params" / "tiny.yaml", {"methods": ["frameshift"]})
    with pytest.raises(AmflowError, match="unknown method 'frameshift'"):
        build_model("frameshift", backbone(), CLASSES, T, plain_model_config(), "none")


def test_every_declared_method_has_a_model_and_the_reverse():
    assert sorted(METHOD_MODELS.names()) == sorted(methods.names())


# --------------------------------------------------------------------------- a toy integration
class MeanScoreBias(Integration):
    """A toy integration: the TPU's output gets ``w`` times each token's score (zero at start)."""

    def add_parameters(self, adapter, tpu, tpu_name, bottleneck, tpu_heads):
        adapter.score_toy = nn.Parameter(torch.zeros(bottleneck))

    def after_tpu(self, adapter, z, scores, ctx):
        from amflow.models.integrations.base import with_prefix

        return z + with_prefix(scores[..., None].to(z.dtype) * adapter.score_toy, ctx.num_prefix, 0.0)


def test_a_toy_integration_is_built_into_the_adapters_and_changes_the_output():
    video = torch.randn(B, T, 3, S, S)
    with INTEGRATIONS.added("mean_bias", MeanScoreBias()):
        torch.manual_seed(1)
        model = build_model("amflow", backbone(), CLASSES, T, plain_model_config(integration="mean_bias"), "static")
        torch.manual_seed(1)
        tpa = build_model("tpa", backbone(), CLASSES, T, plain_model_config(), "none")
        assert set(model.integration_norms()) == {f"block_adapters.{i}.adapter.score_toy" for i in "01"}
        # Zero at start and no random draw: the untrained model is tpa, parameter for parameter.
        model.eval(), tpa.eval()
        torch.testing.assert_close(model(video), tpa(video))
        with torch.no_grad():
            for i in "01":
                model.block_adapters[i].adapter.up.weight.normal_()
                tpa.block_adapters[i].adapter.up.weight.copy_(model.block_adapters[i].adapter.up.weight)
            torch.testing.assert_close(model(video), tpa(video))
            model.block_adapters["0"].adapter.score_toy.fill_(1.0)  # block 1 changes no token the head reads
        assert not torch.allclose(model(video), tpa(video))
    with pytest.raises(AmflowError, match="unknown AM flow integration 'mean_bias'"):
        build_model("amflow", backbone(), CLASSES, T, plain_model_config(integration="mean_bias"), "static")


def test_the_registered_integrations_are_the_schemas():
    assert INTEGRATIONS.names() == SCHEMA_INTEGRATIONS


# --------------------------------------------------------------------------- a toy source
class CountingDataset(DatasetBase):
    """Toy clips, counted (a test's source)."""

    source: Literal["counting"]
    classes: int = Field(2, ge=2, description="number of classes")


def build_counting(spec: CountingDataset, dataset_name: str, out_dir):
    rows = {split: pd.DataFrame({"video": [f"{split}_{i}.mp4" for i in range(spec.classes)],
                                 "label": list(range(spec.classes)),
                                 "label_name": [f"c{i}" for i in range(spec.classes)]})
            for split in ("train", "val", "test")}
    return PreparedDataset(classes=[f"c{i}" for i in range(spec.classes)], splits=rows)


def test_a_toy_source_validates_in_a_params_file_and_prepares(tmp_path):
    path = tmp_path / "counting.yaml"
    path.write_text(yaml.safe_dump({"extends": str(ROOT / "params" / "tiny.yaml"), "name": "counting",
                                    "datasets": {"counted": {"source": "counting", "classes": 3}},
                                    "table_datasets": ["counted"]}))
    with source_added(CountingDataset), sources.SOURCES.added("counting", Source(CountingDataset, build_counting)):
        params = load_params(path)
        spec = params.datasets["counted"]
        assert isinstance(spec, CountingDataset) and spec.classes == 3
        info = prepare_dataset(params, "counted", tmp_path / "data")
        assert info["source"] == "counting" and info["counts"] == {"train": 3, "val": 3, "test": 3}
        assert annotations.read_classes(tmp_path / "data") == ["c0", "c1", "c2"]
        with pytest.raises(ParamsError, match=r"datasets\.counted\.clases: unknown key \(did you mean "
                                              r"'datasets\.counted\.classes'"):
            load_params(path, {"datasets": {"counted": {"clases": 4}}})
    with pytest.raises(ParamsError, match="datasets.counted: 'source' must be one of synthmotion, kinetics400"):
        load_params(path)


def test_another_sources_key_at_its_old_default_is_dropped_any_other_value_refused():
    """Resolved params files state every dataset key of the one layout all sources shared (see
    amflow.params.DatasetBase._flat_layout); a value that means something is refused, naming the key."""
    base = ROOT / "params" / "tiny.yaml"
    keep = load_params(base, {"datasets": {"synth_static": {"protocol": None, "test_source": "val",
                                                            "download": {"workers": 4}}}})
    assert keep.datasets["synth_static"] == load_params(base).datasets["synth_static"]
    with pytest.raises(ParamsError, match="datasets.synth_static: Value error, 'protocol' does not apply to "
                                          "source 'synthmotion'"):
        load_params(base, {"datasets": {"synth_static": {"protocol": "cs"}}})


# --------------------------------------------------------------------------- plain arguments
def test_the_models_import_no_params_schema():
    """amflow.models takes plain values: of amflow.params it may use the enumerations (names in
    capitals) only, never a section of the schema."""
    import ast

    mods = modules(ROOT)
    users = {name for name, path in mods.items()
             if name.startswith("amflow.models") and "amflow.params" in imported(path, set(mods))}
    for name in users:
        tree = ast.parse(mods[name].read_text())
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module == "amflow.params" for a in node.names]
        assert names and all(n.isupper() for n in names), (name, names)


def test_a_model_from_plain_values_equals_one_from_the_params_sections():
    spec = ModelSpec.model_validate({"adapter": {"tpu": "tcn", "bottleneck": 16},
                                     "am_flow": {"integration": "channels", "control": "shuffled"}})
    config = ModelConfig(adapter=AdapterConfig(**spec.adapter.model_dump()),
                         am_flow=AmFlowConfig(**spec.am_flow.model_dump()))
    video = torch.randn(B, T, 3, S, S)
    outs = []
    for settings in (spec, config):
        torch.manual_seed(0)
        model = build_model("amflow", backbone(), CLASSES, T, settings, "static").eval()
        torch.manual_seed(2)  # the shuffled control draws its permutation
        outs.append((model.state_dict(), model(video)))
    assert outs[0][0].keys() == outs[1][0].keys()
    assert all(torch.equal(outs[0][0][k], outs[1][0][k]) for k in outs[0][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)
