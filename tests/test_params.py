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


# --------------------------------------------------------------------------- Snakemake's config
def resolved(command_line: dict):
    from amflow.params import resolve_workflow_config, validate

    return validate(resolve_workflow_config(command_line, ROOT / "params/default.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_file_given_to_snakemake_is_that_file(path):
    # What Snakemake's --configfile gives the workflow: the file's own keys, `extends:` unresolved.
    assert resolved(yaml.safe_load(path.read_text())) == load_params(path)


def test_config_overrides_merge_over_the_default():
    p = resolved({"train": {"epochs": 1}, "seeds": [0, 1]})
    default = load_params(ROOT / "params/default.yaml")
    assert p.train.epochs == 1 and p.seeds == [0, 1]
    assert p.train.lr == default.train.lr and p.datasets == default.datasets and p.name == default.name


def test_written_params_are_named_by_their_content(tmp_path):
    from amflow.params import write_resolved

    default = load_params(ROOT / "params/default.yaml")
    a = write_resolved(default, tmp_path)
    assert write_resolved(load_params(ROOT / "params/default.yaml"), tmp_path) == a
    b = write_resolved(resolved({"train": {"epochs": 1}}), tmp_path)
    assert a != b and a.name.startswith("default-")
    assert load_params(a) == default and load_params(b).train.epochs == 1


def test_data_keys_share_equal_specs_and_separate_different_ones():
    from amflow import paths

    default = load_params(ROOT / "params/default.yaml")
    seeds = load_params(ROOT / "params/default_seeds.yaml")
    tiny = load_params(ROOT / "params/tiny.yaml")
    for d in default.datasets:
        assert paths.dataset_key(default, d) == paths.dataset_key(seeds, d)
        assert paths.dataset_key(default, d) != paths.dataset_key(tiny, d)
        assert paths.dataset_key(default, d).startswith(f"{d}-")
    assert paths.pretrain_images_dir("data", default) != paths.pretrain_images_dir("data", tiny)
    # Key order in the file does not matter: the hash is of the values.
    spec = default.datasets["synth_static"].model_dump(mode="json")
    reordered = type(default.datasets["synth_static"]).model_validate(dict(reversed(list(spec.items()))))
    assert paths.spec_hash(reordered) == paths.spec_hash(default.datasets["synth_static"])
