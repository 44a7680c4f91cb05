"""The params schema: every shipped file validates; bad files fail with the file, key and expectation."""
from pathlib import Path

import pytest
import yaml

from amflow.params_io import ParamsError, load_params, parse_override, read_yaml, resolve_raw, set_dotted

ROOT = Path(__file__).resolve().parents[1]
# paper.yaml is a base the real-data files extend, not a run of its own (it has no datasets).
SHIPPED = sorted(p for p in (ROOT / "params").glob("*.yaml") if p.name not in ("sweep.yaml", "paper.yaml"))


SYNTH = ["synth_static", "synth_moving"]
# file -> (table datasets, datasets) as each shipped file states them
CLUTTER = ["clutter_static", "clutter_moving"]
SHIPPED_DATASETS = {"custom_list.yaml": (["my_videos"], ["my_videos"]), "default.yaml": (SYNTH, SYNTH),
                    "clutter.yaml": (CLUTTER, SYNTH + CLUTTER),
                    "default_1seed.yaml": (SYNTH, SYNTH), "k400.yaml": (["k400"], ["k400"]),
                    "smarthome.yaml": (["smarthome"], ["smarthome"]), "ssv2.yaml": (["ssv2"], ["ssv2"]),
                    "synth_full.yaml": (SYNTH, SYNTH), "tiny.yaml": (SYNTH, SYNTH)}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_params_validate(path):
    p = load_params(path)
    assert (p.table_datasets, list(p.datasets)) == SHIPPED_DATASETS[path.name]


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


# --------------------------------------------------------------------------- misuse: one clear line each
def _child(tmp_path, text: str, name: str = "child.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"extends: {ROOT / 'params/tiny.yaml'}\n{text}")
    return path


@pytest.mark.parametrize("name", [".", "", "..", "a/b", "backbone", "Plots", "ablations", "sweeps"])
def test_a_dataset_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    data = resolve_raw(ROOT / "params/tiny.yaml")
    data["datasets"][name] = data["datasets"]["synth_static"]
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    msg = str(err.value)
    assert str(tmp_path / "bad.yaml") in msg and f"dataset name {name!r}" in msg
    assert "(got {" not in msg  # not the whole datasets section echoed back, cut short


def test_the_reserved_names_are_the_folders_beside_the_dataset_folders(tmp_path):
    """Only a folder that the layout writes beside a dataset's results folder is reserved; the names of
    folders elsewhere (under data/ a dataset's folders carry their spec hash) stay free."""
    from amflow import paths

    root = tmp_path / "results" / "tiny"
    beside = {p.relative_to(root).parts[0] for p in (
        paths.backbone_file(root), paths.ablation_run_dir(root, "tpu", "tcn", "d", 0), paths.sweep_dir(root, "d", "m"),
        paths.plots_dir(root) / paths.HEATMAPS_PNG)}
    assert set(paths.RESERVED_NAMES) == beside
    for name in ("frames", "motion", "pretrain_images", "groundtruth"):
        assert paths.dataset_name_problem(name) is None, name


EDGE_CASES = {
    "extends cycle": (lambda t: (_child(t, "", "a.yaml").write_text("extends: b.yaml\n"),
                                 (t / "b.yaml").write_text("extends: a.yaml\n"), t / "a.yaml")[-1],
                      "extends"),
    "duplicate key": (lambda t: _child(t, "train: {epochs: 3}\nname: x\ntrain: {lr: 0.1}\n"), "'train' is given twice"),
    "python tag": (lambda t: _child(t, "name: !!python/object/apply:os.getcwd []\n"), "remove the tag"),
    "folder": (lambda t: t, "is a folder"),
    "not UTF-8": (lambda t: (_child(t, "name: x\n").write_bytes(b"name: caf\xe9\n"), t / "child.yaml")[-1],
                  "not UTF-8"),
    "empty": (lambda t: ((t / "e.yaml").write_text(""), t / "e.yaml")[-1], "the params file is empty"),
    "comments only": (lambda t: ((t / "e.yaml").write_text("# to do\n"), t / "e.yaml")[-1], "the params file is empty"),
    "missing extends target": (lambda t: ((t / "c.yaml").write_text("extends: gone.yaml\nname: x\n"), t / "c.yaml")[-1],
                               "'extends: gone.yaml' names"),
    "not valid YAML": (lambda t: _child(t, "train: {epochs: [1}\n"), "line 2: not valid YAML"),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_params_file_misuse_gets_one_line_naming_the_file(tmp_path, case, capsys):
    from amflow.cli import main

    make, expected = EDGE_CASES[case]
    path = make(tmp_path)
    assert main(["validate", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}") and expected in err, err


@pytest.mark.parametrize("key, value, reported", [
    ("train.epochs", True, "train.epochs"), ("train.lr", False, "train.lr"), ("seeds", [0, True], "seeds"),
    ("datasets.synth_static.synth.split_sizes.train", True, "datasets.synth_static.synth.split_sizes")])
def test_a_boolean_where_a_number_is_expected_is_an_error(tmp_path, key, value, reported):
    data = resolve_raw(ROOT / "params/tiny.yaml")
    set_dotted(data, key, value)
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    assert f"  - {reported}: " in str(err.value) and "true/false" in str(err.value)
    # ... while real booleans and free-form values still are booleans
    p = load_params(ROOT / "params/tiny.yaml", {"train": {"amp": False}, "backbone": {"kwargs": {"qkv_bias": True}}})
    assert p.train.amp is False and p.backbone.kwargs["qkv_bias"] is True


def test_a_set_value_that_is_not_yaml_gets_one_line_naming_it(capsys):
    from amflow.cli import main

    assert main(["validate", "--params", str(ROOT / "params/tiny.yaml"), "--set", "train.epochs=[1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --set 'train.epochs=[1': the value is not valid YAML"), err


# --------------------------------------------------------------------------- Snakemake's config
def resolved(command_line: dict):
    from amflow.params_io import resolve_workflow_config, validate

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
    from amflow.params_io import write_resolved

    default = load_params(ROOT / "params/default.yaml")
    a = write_resolved(default, tmp_path)
    assert write_resolved(load_params(ROOT / "params/default.yaml"), tmp_path) == a
    b = write_resolved(resolved({"train": {"epochs": 1}}), tmp_path)
    assert a != b and a.name.startswith("default-")
    assert load_params(a) == default and load_params(b).train.epochs == 1


def test_data_keys_share_equal_specs_and_separate_different_ones():
    from amflow import paths

    default = load_params(ROOT / "params/default.yaml")
    seeds = load_params(ROOT / "params/default_1seed.yaml")
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


@pytest.mark.parametrize("name", ["..", "a/b", "", "../../etc"])
def test_a_params_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    data = resolve_raw(ROOT / "params/tiny.yaml")
    data["name"] = name
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    assert "name" in str(err.value) and "results/<name>" in str(err.value)


def test_new_am_flow_values_are_ablation_axes_and_the_default_runs_none_of_them():
    from amflow.workflow_plan import ablation_runs

    default = load_params(ROOT / "params" / "default.yaml")
    assert not {r.axis for r in ablation_runs(default)} & {"alignment", "integration", "control"}
    assert (default.model.am_flow.alignment, default.model.am_flow.integration,
            default.model.am_flow.control) == ("grid", "gate", "none")
    p = load_params(ROOT / "params" / "default.yaml", {"seeds": [0], "ablations": {
        "alignments": ["warp", "warp_fill"], "integrations": ["attn_bias", "channels"],
        "controls": ["shuffled", "oracle"]}})
    runs = [r for r in ablation_runs(p) if r.axis in ("alignment", "integration", "control")]
    assert [(r.axis, r.value) for r in runs] == [("alignment", "warp"), ("alignment", "warp_fill"),
                                                 ("integration", "attn_bias"),
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


# --------------------------------------------------------------------------- one place for every default
# The paper setting's frame size per real-data file (docs/design.md 3.2): the short side each caches.
REAL_DATA_SHORT_SIDE = {"k400.yaml": 256, "ssv2.yaml": 240, "smarthome.yaml": 256, "custom_list.yaml": 256}


def test_every_shipped_real_data_file_is_checked_below():
    real = {p.name for p in SHIPPED if any(d.source != "synthmotion" for d in load_params(p).datasets.values())}
    assert real == set(REAL_DATA_SHORT_SIDE)


@pytest.mark.parametrize("name", REAL_DATA_SHORT_SIDE)
def test_a_real_data_file_states_its_frame_size_and_backbone(name):
    # The schema's defaults are the CPU toy run's (32 px frames and crops, a 4-block ViT, the 32 px
    # camera-motion threshold): a real-data file states every such value, itself or in the paper base it
    # extends, and never inherits the toy one. resolve_raw is the files' own text, without the schema.
    stated = resolve_raw(ROOT / "params" / name)
    assert read_yaml(ROOT / "params" / name)["extends"] == "paper.yaml"
    [spec] = stated["datasets"].values()
    assert spec["short_side"] == REAL_DATA_SHORT_SIDE[name]
    assert stated["sampling"]["crop_size"] == 224 and stated["sampling"]["train_scale"] == [0.25, 1.0]
    assert stated["backbone"] == {"model": "vit_base_patch14_dinov2.lvd142m", "kwargs": {"img_size": 224},
                                  "weights": "hub"}
    assert stated["camera_motion"]["moving_threshold"] == 0.01
    assert stated["model"]["adapter"]["bottleneck"] == 192 and stated["train"]["lr"] == 0.0003
    assert load_params(ROOT / "params" / name).pretrain_images is None  # nothing pretrained by the pipeline


def test_the_synthmotion_files_are_the_default_changed():
    default = load_params(ROOT / "params/default.yaml")
    for name in ("tiny.yaml", "synth_full.yaml", "default_1seed.yaml"):
        assert read_yaml(ROOT / "params" / name)["extends"] == "default.yaml"
    # What the default leaves to the schema is the toy run: 32 px SynthMotion, the 4-block ViT.
    assert default.backbone.kwargs == {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
    assert default.sampling.crop_size == 32 and default.camera_motion.moving_threshold == 0.005
    assert {d.short_side for d in default.datasets.values()} == {32}
    full = load_params(ROOT / "params/synth_full.yaml")
    assert full.datasets["synth_moving"].synth.camera == "moving" and full.datasets["synth_moving"].synth.seed == 1


def test_another_backbone_without_its_kwargs_is_refused(tmp_path):
    # The default kwargs shrink the default ViT to 32 px: they must never reach another model silently.
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {ROOT / 'params/default.yaml'}\nbackbone: {{model: vit_small_patch16_224}}\n")
    with pytest.raises(ParamsError) as err:
        load_params(child)
    assert str(child) in str(err.value) and "  - backbone: " in str(err.value) and "'kwargs'" in str(err.value)
    assert load_params(child, {"backbone": {"kwargs": {}}}).backbone.kwargs == {}


def test_validate_show_prints_every_value_of_a_file(capsys):
    # `amflow validate --show`: the schema's defaults filled in, e.g. the ablation grid no file states.
    from amflow.cli import main

    assert main(["validate", "--params", str(ROOT / "params/k400.yaml"), "--show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["ablations"]["tpus"] == ["transformer", "tcn", "lstm", "none"]
    assert shown["ablations"]["variants"] == ["none", "static", "aligned", "auto"]
    assert shown["datasets"]["k400"]["short_side"] == 256 and shown["train"]["epochs"] == 15
    assert load_params(ROOT / "params/k400.yaml").model_dump(mode="json") == shown


def test_an_unknown_key_gets_the_known_key_it_is_closest_to(capsys, monkeypatch):
    """`amflow validate --params params/tiny.yaml --set <typo>=1`, as typed: the error names --set (not the
    file, which is valid), the key, and the key of the schema it is closest to (none when none is close)."""
    from amflow.cli import main

    monkeypatch.chdir(ROOT)
    for typo, meant in [("train.epochz", "train.epochs"), ("trian.epochs", "train"),
                        ("datasets.synth_moving.synth.framez", "datasets.synth_moving.synth.frames"),
                        ("ablations.grid.variantz", "ablations.grid.variants"), ("train.xyzzy", None)]:
        assert main(["validate", "--params", "params/tiny.yaml", "--set", f"{typo}=1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --set {typo}=1 (on params/tiny.yaml): invalid params"), err
        assert (f"did you mean '{meant}'?" in err) if meant else ("did you mean" not in err), err


# Every dataset's data key (its folders under data/), as the code before each source had its own schema
# computed them (with the working folder "/", since a list dataset's key hashes the absolute paths of its
# lists): the schema's layout may change, these may not, or every user's data are made again.
SHIPPED_KEYS = {
    "clutter.yaml:clutter_moving": "clutter_moving-23734ad3",
    "clutter.yaml:clutter_static": "clutter_static-f95eb884",
    "clutter.yaml:synth_moving": "synth_moving-8d583cd0",
    "clutter.yaml:synth_static": "synth_static-85c0909b",
    "custom_list.yaml:my_videos": "my_videos-473cb632",
    "default.yaml:synth_moving": "synth_moving-8d583cd0",
    "default.yaml:synth_static": "synth_static-85c0909b",
    "default_1seed.yaml:synth_moving": "synth_moving-8d583cd0",
    "default_1seed.yaml:synth_static": "synth_static-85c0909b",
    "k400.yaml:k400": "k400-7205f58f",
    "smarthome.yaml:smarthome": "smarthome-37b3d390",
    "ssv2.yaml:ssv2": "ssv2-e651d760",
    "synth_full.yaml:synth_moving": "synth_moving-032e5828",
    "synth_full.yaml:synth_static": "synth_static-f3f2b66c",
    "tiny.yaml:synth_moving": "synth_moving-bbe91e9c",
    "tiny.yaml:synth_static": "synth_static-d6a100e2",
}


def test_every_shipped_dataset_keeps_its_data_key(monkeypatch):
    from amflow.paths import dataset_key

    files = {f.name: f for f in (ROOT / "params").glob("*.yaml")}
    found = {}
    monkeypatch.chdir("/")
    for name, path in sorted(files.items()):
        if name in ("sweep.yaml", "paper.yaml"):  # a sweep's space; the base the real-data files extend
            continue
        p = load_params(path)
        found.update({f"{name}:{d}": dataset_key(p, d) for d in p.datasets})
    assert found == SHIPPED_KEYS


def test_planning_lists_the_ablation_runs_once_and_sizes_the_backbone_without_building_its_weights(monkeypatch):
    """Snakemake looks an ablation run up for every wildcard: the runs are listed once per params, and a
    backbone whose kwargs leave out its depth is measured once, on the meta device (no weights)."""
    import timm
    import torch

    from amflow import workflow_plan

    p = load_params(ROOT / "params" / "k400.yaml")  # vit_base (12 blocks), kwargs without depth
    listed, built = [], []
    real_runs, real_create = workflow_plan.ablation_runs, timm.create_model
    monkeypatch.setattr(workflow_plan, "ablation_runs", lambda params: listed.append(1) or real_runs(params))

    def create(*args, **kwargs):
        model = real_create(*args, **kwargs)
        built.append(next(model.parameters()).device)
        return model

    monkeypatch.setattr(timm, "create_model", create)
    workflow_plan._timm_depth.cache_clear()
    monkeypatch.setattr(workflow_plan, "_ABLATION_INDEX", {})
    runs = real_runs(p)
    assert {r.overrides["model.adapter.blocks"][0] for r in runs if r.axis == "blocks"} == \
        {12 - n for n in p.ablations.num_blocks}
    for r in runs * 3:
        assert workflow_plan.find_ablation(p, r.axis, r.value, r.dataset, r.seed) == r
    assert len(listed) == 1 and built == [torch.device("meta")]
