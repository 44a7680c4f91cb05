"""Dataset parsers and the prepare dispatcher: Kinetics CSV, SSv2 JSON, Toyota Smarthome names,
generic lists, the split policy, and the shipped params files. Fixtures are tiny files in tmp_path
(video files are a few bytes: nothing here decodes them)."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from amflow.stages.prepare import prepare_dataset
from amflow.data.sources import kinetics, smarthome, ssv2, video_list
from amflow.data.sources.base import holdout_val, subsample
from amflow.errors import AmflowError
from amflow.params_io import load_params, validate

REPO = Path(__file__).resolve().parents[2]


def make_params(name: str, spec: dict):
    return validate({"name": "test", "datasets": {name: spec}, "table_datasets": [name],
                     "backbone": {"weights": "random"}})


def read_split(out: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(out / "annotations" / f"{split}.csv", dtype={"ssv2_id": str})


def touch(path: Path, data: bytes = b"v") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- Kinetics CSV
def test_kinetics_clip_name_and_csv(tmp_path):
    assert kinetics.clip_name("--abc", 5, 15) == "--abc_000005_000015.mp4"
    assert kinetics.clip_name("x", "12.0", 22) == "x_000012_000022.mp4"
    csv = tmp_path / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                   "zumba,0001,0,10,train,0\n\"passing American football (in game)\",-X_y,3,13,train,1\n"
                   "abseiling,abc,1,11,train,0\n")
    table = kinetics.read_kinetics_csv(csv)
    assert list(table["youtube_id"]) == ["0001", "-X_y", "abc"]  # ids stay strings
    assert kinetics.class_names(table) == ["abseiling", "passing American football (in game)", "zumba"]


def test_kinetics_csv_without_labels_or_columns_is_a_clear_error(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n,abc,0,10,test\n")
    with pytest.raises(AmflowError, match="test_source: val"):
        kinetics.read_kinetics_csv(csv)
    csv.write_text("youtube_id,start\nabc,0\n")
    with pytest.raises(AmflowError, match=r"missing columns \['label', 'time_start', 'time_end'\]"):
        kinetics.read_kinetics_csv(csv)


def test_kinetics_test_source_test_needs_the_test_split():
    from amflow.params_io import ParamsError

    with pytest.raises(ParamsError, match="test_source: test needs 'test' in download.splits"):
        make_params("k", {"source": "kinetics400", "test_source": "test"})


# --------------------------------------------------------------------------- SSv2
SSV2_LABELS = {"Holding something next to something": "1", "Pushing something from left to right": "0",
               "Putting something, something and something on the table": "2"}


def ssv2_root(root: Path, layout: str = "mmaction", videos: bool = True, missing_ids=("13",)) -> Path:
    train = [{"id": "10", "label": "holding a cup next to a pen", "template": "Holding [something] next to [something]",
              "placeholders": ["a cup", "a pen"]},
             {"id": "11", "label": "pushing a box from left to right",
              "template": "Pushing [something] from left to right", "placeholders": ["a box"]},
             {"id": "12", "label": "holding a pen next to a cup", "template": "Holding [something] next to [something]",
              "placeholders": ["a pen", "a cup"]},
             {"id": "13", "label": "x", "template": "Pushing [something] from left to right", "placeholders": []}]
    val = [{"id": "20", "label": "putting a, b and c on the table",
            "template": "Putting [something], [something] and [something] on the table", "placeholders": []}]
    names = {"labels": SSV2_LABELS, "train": train, "validation": val}
    for key, content in names.items():
        path = (root / f"something-something-v2-{key}.json" if layout == "mmaction"
                else root / "labels" / f"{key}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    if videos:
        for vid in ("10", "11", "12", "13", "20"):
            if vid not in missing_ids:
                touch(root / "20bn-something-something-v2" / f"{vid}.webm", vid.encode())
    return root


def test_ssv2_templates_with_brackets_map_to_label_indices(tmp_path):
    root = ssv2_root(tmp_path / "ssv2")
    out = tmp_path / "data" / "ssv2"
    info = prepare_dataset(make_params("ssv2", {"source": "ssv2", "root": str(root), "val_fraction": 0.5}),
                           "ssv2", out)
    # Class order is the labels file's index order, not alphabetical.
    assert (out / "classes.txt").read_text().splitlines() == [
        "Pushing something from left to right", "Holding something next to something",
        "Putting something, something and something on the table"]
    train, val, test = (read_split(out, s) for s in ("train", "val", "test"))
    # test = the official validation set; val = a holdout of train (val_fraction 0.5 of 3 videos, but
    # every class keeps one training video: 1 goes to val).
    assert len(val) == 1 and set(val["ssv2_id"]).isdisjoint(train["ssv2_id"])
    both = pd.concat([train, val])
    assert dict(zip(both["ssv2_id"], both["label"])) == {"10": 1, "11": 0, "12": 1}
    assert both.set_index("ssv2_id").loc["10", "video"] == str(root.absolute() / "20bn-something-something-v2/10.webm")
    assert list(test["label"]) == [2] and list(test["ssv2_id"]) == ["20"]
    assert info["missing"] == {"train": 1, "val": 0, "test": 0} and info["test_from"] == "official validation split"
    missing = pd.read_csv(out / "missing.csv")
    assert list(missing["video"]) == [str(root.absolute() / "20bn-something-something-v2/13.webm")]


def test_ssv2_missing_files_are_listed_with_where_to_put_them(tmp_path):
    root = tmp_path / "ssv2"
    root.mkdir()
    (root / "something-something-v2-labels.json").write_text(json.dumps(SSV2_LABELS))
    with pytest.raises(AmflowError) as err:
        prepare_dataset(make_params("ssv2", {"source": "ssv2", "root": str(root)}), "ssv2", tmp_path / "out")
    msg = str(err.value)
    assert "something-something-v2-train.json" in msg and "something-something-v2-validation.json" in msg
    assert str(root / "something-something-v2-train.json") in msg
    assert "something-something-v2-labels.json" not in msg  # present: not listed
    assert "20bn-something-something-v2-00" in msg and "the videos" in msg
    assert ssv2.DOWNLOAD_PAGE in msg
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_ssv2_test_source_test_needs_test_files(tmp_path):
    root = ssv2_root(tmp_path / "ssv2")
    with pytest.raises(AmflowError) as err:
        ssv2.check_files(root, "test")
    assert "something-something-v2-test.json" in str(err.value)
    assert "something-something-v2-test-answers.csv" in str(err.value)
    assert "train.json" not in str(err.value)


def test_ssv2_archive_parts_are_joined_and_extracted_once(tmp_path):
    root = ssv2_root(tmp_path / "ssv2", layout="qualcomm", videos=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for vid in ("10", "11", "12", "13", "20"):
            data = vid.encode() * 300
            info = tarfile.TarInfo(f"20bn-something-something-v2/{vid}.webm")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    half = len(blob) // 2
    (root / "20bn-something-something-v2-00").write_bytes(blob[:half])  # a plain part
    with zipfile.ZipFile(root / "20bn-something-something-v2-01.zip", "w") as zf:  # a zipped part
        zf.writestr("20bn-something-something-v2-01", blob[half:])
    out = tmp_path / "out"
    params = make_params("ssv2", {"source": "ssv2", "root": str(root), "val_fraction": 0.25})
    info = prepare_dataset(params, "ssv2", out)
    assert info["counts"] == {"train": 3, "val": 1, "test": 1}
    assert (root / "20bn-something-something-v2" / "11.webm").read_bytes() == b"11" * 300
    assert not (root / ".amflow_extract.tmp").exists()
    # Second run: the videos folder exists, so the parts are not needed any more.
    (root / "20bn-something-something-v2-00").unlink()
    assert prepare_dataset(params, "ssv2", out)["counts"] == info["counts"]


def test_ssv2_unknown_template_names_the_entry(tmp_path):
    root = ssv2_root(tmp_path / "ssv2")
    bad = [{"id": "99", "template": "Juggling [something]", "label": "", "placeholders": []}]
    (root / "something-something-v2-validation.json").write_text(json.dumps(bad))
    with pytest.raises(AmflowError, match=r"validation\.json: entry 0 \(id 99\).*Juggling \[something\]"):
        prepare_dataset(make_params("ssv2", {"source": "ssv2", "root": str(root)}), "ssv2", tmp_path / "out")


# --------------------------------------------------------------------------- Toyota Smarthome
def smarthome_root(root: Path) -> Path:
    # (activity, subject, camera): cs train subjects include 3, 4; 2 and 8 are test subjects.
    clips = [("Cook.Cleandishes", 3, 1), ("Cook.Cleandishes", 4, 1), ("Cook.Cleandishes", 3, 2),
             ("Cook.Cleandishes", 4, 5), ("Walk", 3, 1), ("Walk", 4, 1), ("Walk", 8, 2), ("Walk", 8, 5),
             ("Drink.Frombottle", 2, 2), ("Drink.Frombottle", 2, 3), ("Walk", 2, 7), ("Walk", 3, 4)]
    for i, (act, p, c) in enumerate(clips):
        touch(root / "mp4" / f"{act}_p{p:02d}_r{i % 3:02d}_v{i:02d}_c{c:02d}.mp4")
    touch(root / "mp4" / "README_not_a_clip.mp4")
    return root


def test_smarthome_name_parsing():
    assert smarthome.parse_name("Cook.Cleandishes_p02_r00_v02_c03.mp4") == {
        "activity": "Cook.Cleandishes", "subject": 2, "repetition": 0, "view": 2, "camera": 3}
    assert smarthome.parse_name("Walk_p25_r01_v07_c06.mp4")["activity"] == "Walk"
    assert smarthome.parse_name("Walk_p25_c06.mp4") is None


def test_smarthome_cross_subject(tmp_path):
    root = smarthome_root(tmp_path / "sh")
    out = tmp_path / "out"
    params = make_params("sh", {"source": "smarthome", "root": str(root), "protocol": "cs"})
    info = prepare_dataset(params, "sh", out)
    train, val, test = (read_split(out, s) for s in ("train", "val", "test"))
    assert set(train["subject"]) | set(val["subject"]) <= smarthome.CS_TRAIN_SUBJECTS
    assert set(test["subject"]) == {2, 8}
    # Drink.Frombottle only appears for test subject 2: not a train class, so dropped from test.
    assert (out / "classes.txt").read_text().splitlines() == ["Cook.Cleandishes", "Walk"]
    assert info["dropped_class_not_in_train"] == {"test": 2}
    assert len(train) + len(val) == 7 and len(val) == 1 and len(test) == 3
    assert not set(train["video"]) & set(val["video"])
    assert info["unparsed_names"] == 1 and "holdout" in info["val_split"]
    # Deterministic: a second run gives the same val split.
    prepare_dataset(params, "sh", tmp_path / "out2")
    assert read_split(tmp_path / "out2", "val").equals(val)


@pytest.mark.parametrize("protocol, cams", [("cv1", {"train": {1}, "val": {5}, "test": {2}}),
                                            ("cv2", {"train": {1, 3, 4, 6, 7}, "val": {5}, "test": {2}})])
def test_smarthome_cross_view(tmp_path, protocol, cams):
    root = smarthome_root(tmp_path / "sh")
    out = tmp_path / "out"
    info = prepare_dataset(make_params("sh", {"source": "smarthome", "root": str(root), "protocol": protocol}),
                           "sh", out)
    for split, allowed in cams.items():
        assert set(read_split(out, split)["camera"]) <= allowed
    train = read_split(out, "train")
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == sorted(set(train["label_name"]))  # classes of the train cameras only
    if protocol == "cv1":
        assert len(train) == 4 and classes == ["Cook.Cleandishes", "Walk"]
        assert info["clips_outside_protocol"] == 3  # cameras 3, 4 and 7
        assert info["dropped_class_not_in_train"] == {"test": 1}
    else:
        assert len(train) == 7 and classes == ["Cook.Cleandishes", "Drink.Frombottle", "Walk"]
        assert info["clips_outside_protocol"] == 0
    assert info["val_split"] == "the dataset's own val split"
    assert "19 classes" in info["note"]


def test_smarthome_missing_root_says_where_to_get_it(tmp_path):
    params = make_params("sh", {"source": "smarthome", "root": str(tmp_path / "nowhere"), "protocol": "cs"})
    with pytest.raises(AmflowError, match=r"does not exist.*project\.inria\.fr/toyotasmarthome"):
        prepare_dataset(params, "sh", tmp_path / "out")


# --------------------------------------------------------------------------- generic lists
def test_list_txt_with_int_labels_and_a_missing_file(tmp_path):
    root = tmp_path / "mine"
    for name in ("a.mp4", "b c.mp4", "d.mp4", "t1.mp4"):
        touch(root / "clips" / name)
    (root / "train.txt").write_text("# comment\nclips/a.mp4 0\nclips/b c.mp4 2\nclips/gone.mp4 1\nclips/d.mp4 0\n")
    (root / "test.txt").write_text("clips/t1.mp4 2\n")
    out = tmp_path / "out"
    params = make_params("m", {"source": "list", "root": str(root), "val_fraction": 0.5,
                               "annotations": {"train": "train.txt", "test": "test.txt"}})
    info = prepare_dataset(params, "m", out)
    assert (out / "classes.txt").read_text().splitlines() == ["0", "1", "2"]  # indices kept as given
    everything = pd.concat([read_split(out, "train"), read_split(out, "val")])
    assert dict(zip(everything["video"].map(lambda v: Path(v).name), everything["label"])) == {
        "a.mp4": 0, "b c.mp4": 2, "d.mp4": 0}
    missing = pd.read_csv(out / "missing.csv")
    assert list(missing["split"]) == ["train"] and missing["video"][0].endswith("clips/gone.mp4")
    assert "train.txt:4" in missing["reason"][0]
    assert info["missing"] == {"train": 1, "val": 0, "test": 0}
    assert list(read_split(out, "test")["label"]) == [2]


def test_list_csv_with_class_names(tmp_path):
    root = tmp_path / "mine"
    for name in ("a.mp4", "b.mp4", "c.mp4", "v.mp4", "t.mp4"):
        touch(root / name)
    (root / "train.csv").write_text("path,label\na.mp4,playing guitar\nb.mp4,jumping\nc.mp4,playing guitar\n")
    (root / "val.csv").write_text("path,label\nv.mp4,jumping\n")
    (root / "test.csv").write_text("path,label\nt.mp4,zen\n")
    out = tmp_path / "out"
    prepare_dataset(make_params("m", {"source": "list", "root": str(root),
                                      "annotations": {"train": "train.csv", "val": "val.csv", "test": "test.csv"}}),
                    "m", out)
    assert (out / "classes.txt").read_text().splitlines() == ["jumping", "playing guitar", "zen"]
    train = read_split(out, "train")
    assert list(train["label"]) == [1, 0, 1] and list(train["label_name"])[0] == "playing guitar"
    assert list(read_split(out, "val")["label"]) == [0]


def test_list_classes_txt_maps_names_and_indices(tmp_path):
    root = tmp_path / "mine"
    for name in ("a.mp4", "b.mp4", "t.mp4"):
        touch(root / name)
    (root / "classes.txt").write_text("zebra\nant\n")
    (root / "train.txt").write_text("a.mp4 ant\nb.mp4 0\n")
    (root / "test.txt").write_text("t.mp4 1\n")
    lists = {s: video_list.read_list(root / f"{s}.txt") for s in ("train", "test")}
    classes, mapping = video_list.resolve_classes(root, lists)
    assert classes == ["zebra", "ant"] and mapping == {"ant": "ant", "0": "zebra", "1": "ant"}
    (root / "test.txt").write_text("t.mp4 7\n")
    lists["test"] = video_list.read_list(root / "test.txt")
    with pytest.raises(AmflowError, match=r"test\.txt:1: label '7'"):
        video_list.resolve_classes(root, lists)


def test_list_mixed_labels_without_classes_txt_is_an_error(tmp_path):
    root = tmp_path / "mine"
    (root).mkdir()
    (root / "train.txt").write_text("a.mp4 0\nb.mp4 jump\n")
    with pytest.raises(AmflowError, match=r"mix class indices \(e\.g\. .*train\.txt:1\).*classes\.txt"):
        video_list.resolve_classes(root, {"train": video_list.read_list(root / "train.txt")})


def test_a_video_in_two_splits_is_an_error(tmp_path):
    root = tmp_path / "mine"
    for name in ("a.mp4", "b.mp4"):
        touch(root / name)
    (root / "train.txt").write_text("a.mp4 0\nb.mp4 1\n")
    (root / "test.txt").write_text("b.mp4 1\n")
    params = make_params("m", {"source": "list", "root": str(root), "val_fraction": 0.5,
                               "annotations": {"train": "train.txt", "test": "test.txt"}})
    with pytest.raises(AmflowError, match=r"b\.mp4 is listed in train and in test"):
        prepare_dataset(params, "m", tmp_path / "out")


@pytest.mark.parametrize("alias", ["clips/../clips/t.mp4", "link.mp4"])
def test_a_test_video_listed_for_training_through_an_alias_or_a_symlink_is_an_error(tmp_path, alias):
    root = tmp_path / "mine"
    for name in ("a.mp4", "b.mp4", "t.mp4"):
        touch(root / "clips" / name)
    (root / "link.mp4").symlink_to(root / "clips" / "t.mp4")
    (root / "train.txt").write_text(f"clips/a.mp4 0\nclips/b.mp4 1\n{alias} 0\n")
    (root / "test.txt").write_text("clips/t.mp4 1\n")
    params = make_params("m", {"source": "list", "root": str(root), "val_fraction": 0.5,
                               "annotations": {"train": "train.txt", "test": "test.txt"}})
    with pytest.raises(AmflowError) as err:
        prepare_dataset(params, "m", tmp_path / "out")
    msg = str(err.value)
    assert "is listed in train and in test" in msg, msg
    assert f"{root / alias}" in msg and f"{root / 'clips/t.mp4'}" in msg and "\n" not in msg
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_list_needs_train_and_test(tmp_path):
    (tmp_path / "mine").mkdir()
    params = make_params("m", {"source": "list", "root": str(tmp_path / "mine"), "annotations": {"train": "t.txt"}})
    with pytest.raises(AmflowError, match=r"missing: \['test'\]"):
        prepare_dataset(params, "m", tmp_path / "out")


# --------------------------------------------------------------------------- split policy
def _table(n_per_class: dict[int, int]) -> pd.DataFrame:
    rows = [{"video": f"c{c}_{i}.mp4", "label": c, "label_name": str(c)}
            for c, n in n_per_class.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_holdout_val_is_stratified_deterministic_and_disjoint():
    table = _table({0: 20, 1: 10, 2: 1})
    train, val = holdout_val(table, 0.1, seed=0)
    assert val["label"].value_counts().to_dict() == {0: 2, 1: 1}  # the single-video class stays in train
    assert not set(train["video"]) & set(val["video"]) and len(train) + len(val) == 31
    # Same seed, shuffled input order: same split. Another seed: another split.
    again = holdout_val(table.sample(frac=1, random_state=3), 0.1, seed=0)[1]
    assert sorted(again["video"]) == sorted(val["video"])
    other = [sorted(holdout_val(table, 0.1, seed=s)[1]["video"]) for s in range(1, 6)]
    assert any(o != sorted(val["video"]) for o in other)


def test_subsample_keeps_order_and_is_seeded():
    table = _table({0: 50})
    a = subsample(table, 5, seed=0, split="train")
    assert len(a) == 5 and list(a["video"]) == sorted(a["video"], key=lambda v: int(v.split("_")[1][:-4]))
    assert a.equals(subsample(table, 5, seed=0, split="train"))
    assert not a.equals(subsample(table, 5, seed=1, split="train"))
    assert subsample(table, 100, seed=0, split="train") is table


def test_max_videos_is_applied_per_split(tmp_path):
    root = smarthome_root(tmp_path / "sh")
    params = make_params("sh", {"source": "smarthome", "root": str(root), "protocol": "cv2",
                                "max_videos": {"train": 3}})
    info = prepare_dataset(params, "sh", tmp_path / "out")
    assert info["counts"]["train"] == 3 and info["max_videos"] == {"train": 3}


def test_unknown_dataset_name_is_an_amflow_error(tmp_path):
    params = make_params("sh", {"source": "smarthome", "root": str(tmp_path), "protocol": "cs"})
    with pytest.raises(AmflowError, match="dataset 'nope' is not in params"):
        prepare_dataset(params, "nope", tmp_path / "out")


# --------------------------------------------------------------------------- shipped params files
def test_real_dataset_params_files_validate_with_the_paper_setting():
    expect = {"k400": ("kinetics400", "dense", 3, 1), "ssv2": ("ssv2", "segment", 1, 3),
              "smarthome": ("smarthome", "segment", 1, 3)}
    for name, (source, mode, clips, crops) in expect.items():
        p = load_params(REPO / "params" / f"{name}.yaml")
        assert list(p.datasets) == [name] and p.table_datasets == [name]
        assert p.datasets[name].source == source
        assert p.backbone.model == "vit_base_patch14_dinov2.lvd142m" and p.backbone.weights == "hub"
        assert p.backbone.kwargs == {"img_size": 224} and p.pretrain_images is None
        s = p.sampling_for(name)
        assert (s.mode, s.num_frames, s.crop_size, s.test_clips, s.test_crops) == (mode, 8, 224, clips, crops)
    assert load_params(REPO / "params" / "k400.yaml").sampling.stride == 8
    assert load_params(REPO / "params" / "ssv2.yaml").sampling.train_flip is False
    assert load_params(REPO / "params" / "smarthome.yaml").datasets["smarthome"].protocol == "cs"
    custom = load_params(REPO / "params" / "custom_list.yaml")
    assert custom.datasets["my_videos"].source == "list"


def test_every_source_the_schema_accepts_has_an_implementation():
    from amflow.data import sources
    from amflow.params import SOURCE_SCHEMAS

    accepted = set(SOURCE_SCHEMAS.names())
    assert accepted == {"synthmotion", "kinetics400", "ssv2", "smarthome", "list"}
    assert set(sources.SOURCES) == accepted
    assert all(sources.get(name).name == name and sources.get(name).schema is SOURCE_SCHEMAS.get(name)
               for name in accepted)
    with pytest.raises(AmflowError, match="unknown dataset source 'nope'"):
        sources.get("nope")
