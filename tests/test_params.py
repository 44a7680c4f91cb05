"""The params schema: every shipped file validates; bad files fail with the file, key and expectation."""
from pathlib import Path

import pytest
import yaml

from amflow.params import ParamsError, load_params, parse_override, set_dotted

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "params").glob("*.yaml") if p.name != "sweep.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_params_validate(path):
    p = load_params(path)
    assert p.table_datasets and all(d in p.datasets for d in p.table_datasets)


def _write(tmp_path, data) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _default() -> dict:
    return yaml.safe_load((ROOT / "params/default.yaml").read_text())


def test_unknown_key_names_file_and_key(tmp_path):
    data = _default()
    data["train"]["learning_rate"] = 0.1
    path = _write(tmp_path, data)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg and "train.learning_rate" in msg and "unknown key" in msg


def test_wrong_type_names_key_and_expectation(tmp_path):
    data = _default()
    data["train"]["epochs"] = "many"
    data["datasets"]["synth_static"]["synth"]["resolution"] = 48
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    msg = str(err.value)
    assert "train.epochs" in msg and "integer" in msg
    assert "datasets.synth_static.synth.resolution" in msg and "32" in msg


def test_cross_field_checks(tmp_path):
    data = _default()
    data["table_datasets"] = ["k400"]
    with pytest.raises(ParamsError, match="table_datasets names 'k400'"):
        load_params(_write(tmp_path, data))


def test_extends_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {ROOT / 'params/default.yaml'}\nname: child\ntrain: {{epochs: 3}}\n")
    p = load_params(child, overrides=set_dotted({}, *parse_override("model.adapter.bottleneck=16")))
    parent = load_params(ROOT / "params/default.yaml")
    assert p.name == "child" and p.train.epochs == 3 and p.train.lr == parent.train.lr  # inherited
    assert p.model.adapter.bottleneck == 16


def test_override_parsing():
    assert parse_override("model.adapter.blocks=[4, 5]") == ("model.adapter.blocks", [4, 5])
    assert parse_override("train.amp=false") == ("train.amp", False)
    with pytest.raises(ParamsError):
        parse_override("no-equals-sign")


def test_new_am_flow_values_are_ablation_axes_and_the_default_runs_none_of_them():
    from amflow.workflow_plan import ablation_runs

    default = load_params(ROOT / "params" / "default.yaml")
    assert not {r.axis for r in ablation_runs(default)} & {"alignment", "integration", "control"}
    assert (default.model.am_flow.alignment, default.model.am_flow.integration,
            default.model.am_flow.control) == ("grid", "gate", "none")
    p = load_params(ROOT / "params" / "default.yaml", {"ablations": {
        "alignments": ["warp"], "integrations": ["attn_bias", "channels"], "controls": ["shuffled", "oracle"]}})
    runs = [r for r in ablation_runs(p) if r.axis in ("alignment", "integration", "control")]
    assert [(r.axis, r.value) for r in runs] == [("alignment", "warp"), ("integration", "attn_bias"),
                                                 ("integration", "channels"), ("control", "shuffled"),
                                                 ("control", "oracle")]
    for r in runs:   # each run's overrides give valid params with that value
        overrides: dict = {}
        for key, value in r.overrides.items():
            set_dotted(overrides, key, value)
        spec = load_params(ROOT / "params" / "default.yaml", overrides).model.am_flow
        assert r.value in (spec.alignment, spec.integration, spec.control)
    assert runs[0].overrides["model.am_flow.variant"] == "aligned"
    with pytest.raises(ParamsError, match="model.am_flow.integration"):
        load_params(ROOT / "params" / "default.yaml", {"model": {"am_flow": {"integration": "add"}}})
