"""`amflow extract`: the sharded cache holds exactly the decoded frames; failures are listed, never fatal."""
from __future__ import annotations

import errno
import json
import os
import tempfile

import cv2
import numpy as np
import pandas as pd
import pytest

from video_files import write_mp4
from amflow.data import annotations as ann
from amflow.stages import extract as extract_mod
from amflow.data import frame_cache as fc
from amflow.stages.extract import OrderedMap, extract_frames
from amflow.data.frame_cache import FrameCache, write_cache
from amflow.data.frame_codec import decode_video_task
from amflow.data.video import read_video
from amflow.errors import AmflowError
from amflow.params_io import validate

LENGTHS = {"train": [30, 31, 29, 33, 30], "val": [30, 32], "test": [28, 30]}


def moving_texture(t: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h + t, w + t, 3)), (0, 0), 2)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.stack([base[i:i + h, i:i + w] for i in range(t)])


def make_params(name="toy", **cache):
    return validate({"name": "t", "datasets": {name: {"source": "list", "root": "/nowhere",
                                                      "annotations": {"train": "x"}, "short_side": 24, **cache}},
                     "table_datasets": [name], "backbone": {"weights": "random"}})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """5 train, 2 val, 2 test videos (48x64, 25 fps) + a truncated and a non-video file in train."""
    root = tmp_path_factory.mktemp("toy")
    (root / "videos").mkdir()
    seed = 0
    for split, lengths in LENGTHS.items():
        rows = []
        for i, n in enumerate(lengths):
            rel = f"videos/{split}_{i}.mp4"
            write_mp4(root / rel, moving_texture(n, 48, 64, seed))
            seed += 1
            rows.append({"video": rel, "label": i % 3, "label_name": f"c{i % 3}"})
        if split == "train":
            data = (root / "videos/train_0.mp4").read_bytes()
            (root / "videos/broken.mp4").write_bytes(data[: len(data) // 2])
            (root / "videos/notes.mp4").write_text("not a video\n" * 30)
            rows.insert(2, {"video": "videos/broken.mp4", "label": 0, "label_name": "c0"})
            rows.append({"video": "videos/notes.mp4", "label": 1, "label_name": "c1"})
        ann.write_annotations(root, split, pd.DataFrame(rows))
    ann.write_classes(root, ["c0", "c1", "c2"])
    return root


@pytest.fixture(scope="module")
def raw_cache(dataset, tmp_path_factory):
    frames_dir = tmp_path_factory.mktemp("out") / "frames"
    summary = extract_frames(make_params(shard_frames=100), "toy", dataset, frames_dir, workers=2)
    return frames_dir, summary


def test_outputs_and_counts(raw_cache):
    frames_dir, summary = raw_cache
    assert (frames_dir / "summary.json").exists()
    manifest = pd.read_csv(frames_dir / "manifest.csv")
    assert list(manifest.columns) == list(fc.MANIFEST_COLUMNS)
    assert manifest["split"].tolist() == ["train"] * 5 + ["val"] * 2 + ["test"] * 2
    assert manifest["num_frames"].tolist() == LENGTHS["train"] + LENGTHS["val"] + LENGTHS["test"]
    assert manifest["global_start"].tolist() == np.concatenate([[0], np.cumsum(manifest["num_frames"])[:-1]]).tolist()
    assert (manifest[["height", "width"]].to_numpy() == [24, 32]).all()
    assert np.allclose(manifest["fps"], 25.0)
    assert manifest["video_id"].tolist()[0] == "videos/train_0"
    failures = pd.read_csv(frames_dir / "failures.csv")
    assert sorted(failures["video"]) == ["videos/broken.mp4", "videos/notes.mp4"]
    assert set(failures["split"]) == {"train"} and failures["error"].str.len().min() > 10
    total = sum(map(sum, LENGTHS.values()))
    assert summary["splits"]["train"] == {"listed": 7, "decoded": 5, "failed": 2, "frames": sum(LENGTHS["train"])}
    assert summary["splits"]["val"]["failed"] == 0 and summary["videos"] == 9 and summary["failed"] == 2
    assert summary["frames"] == total == FrameCache(frames_dir).num_frames_total
    assert summary["bytes"] == total * 24 * 32 * 3
    assert json.loads((frames_dir / "summary.json").read_text()) == summary


def test_shards_split_as_configured(raw_cache):
    frames_dir, summary = raw_cache
    manifest = pd.read_csv(frames_dir / "manifest.csv")
    sizes = []
    for shard in range(summary["shards"]):
        index = np.load(frames_dir / fc.index_name(shard))
        sizes.append(len(index))
        assert os.path.getsize(frames_dir / fc.shard_name(shard)) == index[:, 1].sum()
        videos = manifest[manifest["shard"] == shard]
        assert videos["num_frames"].sum() == len(index)  # a video never straddles two shards
    assert max(sizes) <= 100 and summary["shards"] == 3 and sum(sizes) == summary["frames"]
    assert not list(frames_dir.glob("*/*"))  # a compact cache: flat shards, not one file per frame


def test_cache_returns_exactly_the_decoded_frames(raw_cache, dataset):
    frames_dir, _ = raw_cache
    cache = FrameCache(frames_dir)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for pos, row in cache.videos(split).iterrows():
            expected, _ = read_video(dataset / row["video"], short_side=24)
            idx = rng.integers(0, row["num_frames"], 6)
            np.testing.assert_array_equal(cache.read(pos, idx), expected[idx])
            np.testing.assert_array_equal(cache.read(row, [0]), expected[:1])
    with pytest.raises(IndexError):
        cache.read(0, [LENGTHS["train"][0]])


def test_jpeg_cache_is_close(dataset, tmp_path):
    frames_dir = tmp_path / "frames"
    summary = extract_frames(make_params(encoding="jpeg", jpeg_quality=95), "toy", dataset, frames_dir, workers=1)
    cache = FrameCache(frames_dir)
    assert summary["shards"] == 1 and summary["bytes"] < summary["frames"] * 24 * 32 * 3
    row = cache.videos("val").iloc[1]
    expected, _ = read_video(dataset / row["video"], short_side=24)
    got = cache.read(row, [0, 5, 31])
    assert got.shape == (3, 24, 32, 3)
    err = np.abs(got.astype(int) - expected[[0, 5, 31]]).mean()
    assert err < 4, err
    assert np.abs(got.astype(int) - expected[[31, 5, 0]]).mean() > 3 * err


def test_rerun_is_a_no_op_and_param_change_redoes(raw_cache, dataset, monkeypatch):
    frames_dir, summary = raw_cache
    before = {p.name: p.stat().st_mtime_ns for p in frames_dir.iterdir()}

    def must_not_decode(*a, **k):
        raise AssertionError("a complete cache was decoded again")

    monkeypatch.setattr(extract_mod, "OrderedMap", must_not_decode)
    again = extract_frames(make_params(shard_frames=100), "toy", dataset, frames_dir, workers=2)
    assert again == summary
    assert {p.name: p.stat().st_mtime_ns for p in frames_dir.iterdir()} == before
    scratch = frames_dir.parent / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(AssertionError, match="decoded again"):  # other params: the cache is redone
        extract_frames(make_params(shard_frames=200), "toy", dataset, frames_dir, workers=2)
    assert list(scratch.iterdir()) == []  # the workers' part folder is gone even after a failed start
    assert (frames_dir / "summary.json").exists()  # and the old cache is untouched


def test_interrupted_extraction_leaves_nothing_complete(dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_add = fc.ShardWriter.add

    def flaky_add(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressing Ctrl-C half-way
        return real_add(self, *args)

    monkeypatch.setattr(fc.ShardWriter, "add", flaky_add)
    scratch = tmp_path / "scratch"  # where the workers' part files go ($TMPDIR)
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    frames_dir = tmp_path / "out" / "frames"
    with pytest.raises(KeyboardInterrupt):
        extract_frames(make_params(), "toy", dataset, frames_dir, workers=2)
    assert not frames_dir.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary cache folder left...
    assert list(scratch.glob("amflow-*")) == []  # ...nor part files (pymp-* is multiprocessing's own)
    with pytest.raises(AmflowError, match="no complete frame cache"):
        FrameCache(frames_dir)


def test_a_split_where_everything_fails_is_an_error(tmp_path):
    (tmp_path / "v").mkdir()
    write_mp4(tmp_path / "v/ok.mp4", moving_texture(10, 32, 32, 0))
    (tmp_path / "v/bad.mp4").write_bytes(b"\x00" * 100)
    ann.write_annotations(tmp_path, "train", pd.DataFrame({"video": ["v/ok.mp4"], "label": [0], "label_name": ["a"]}))
    ann.write_annotations(tmp_path, "val", pd.DataFrame({"video": ["v/bad.mp4", "v/missing.mp4"], "label": [0, 0],
                                                         "label_name": ["a", "a"]}))
    with pytest.raises(AmflowError, match="split\\(s\\) val failed"):
        extract_frames(make_params(), "toy", tmp_path, tmp_path / "frames", workers=1)
    assert not (tmp_path / "frames").exists()


def test_max_videos_cap_and_determinism(dataset, tmp_path, raw_cache):
    params = make_params(shard_frames=100, max_videos={"train": 3})
    one = extract_frames(params, "toy", dataset, tmp_path / "a", workers=1)
    manifest = pd.read_csv(tmp_path / "a" / "manifest.csv")
    failures = pd.read_csv(tmp_path / "a" / "failures.csv")
    assert one["capped"]["train"]["listed"] == 7 and one["splits"]["train"]["listed"] == 3
    assert (manifest["split"] == "train").sum() + len(failures) == 3
    assert (manifest["split"] == "val").sum() == 2  # uncapped splits are whole
    # The same capped subset and byte-identical shards whatever the number of workers.
    extract_frames(params, "toy", dataset, tmp_path / "b", workers=3)
    for name in ("manifest.csv", "failures.csv", fc.shard_name(0), fc.index_name(0)):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_write_cache_round_trip_and_pickling(tmp_path):
    import pickle

    frames = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    write_cache(tmp_path / "f", [{"video_id": "a", "split": "train", "label": 2, "frames": frames},
                                 {"video_id": "b", "split": "val", "label": 0, "frames": frames[:3]}])
    cache = FrameCache(tmp_path / "f")
    np.testing.assert_array_equal(cache.read(0, [6, 1]), frames[[6, 1]])
    cache.read(1, [0])  # opens the shard map
    clone = pickle.loads(pickle.dumps(cache))  # what a spawn DataLoader worker receives
    assert clone.open_shards == 0 and len(pickle.dumps(cache)) < 20000
    np.testing.assert_array_equal(clone.read(1), frames[:3])
    assert cache.videos("val")["video_id"].tolist() == ["b"] and cache.num_frames_total == 10


def _crash_on_one(x: int) -> dict:
    if x == 1:
        os._exit(70)  # the worker process dies abruptly, as in a native-code crash (no core file)
    return {"value": x * x}


def test_ordered_map_survives_a_crashing_worker():
    # The crash comes early, with many items still to submit: whether the main process notices the
    # broken pool while waiting for a result or while submitting depends on timing (load), and both
    # must recover the same way.
    results = list(OrderedMap(_crash_on_one, list(range(40)), workers=2))
    assert [r.get("value") for r in results] == [x * x if x != 1 else None for x in range(40)]
    assert "crashed" in results[1]["error"]


def test_ordered_map_recovers_when_the_pool_breaks_during_submission(monkeypatch):
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    real_submit = ProcessPoolExecutor.submit
    calls = {"n": 0}

    def submit(self, fn, *args, **kwargs):  # a worker dies just as the 4th item is submitted
        calls["n"] += 1
        if calls["n"] == 4:
            raise BrokenProcessPool("a child process terminated abruptly")
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    results = list(OrderedMap(_crash_on_one, [0, 2, 3, 4, 5, 6, 7, 8], workers=2))
    assert [r["value"] for r in results] == [0, 4, 9, 16, 25, 36, 49, 64]


def test_worker_task_part_file_and_retry_start_afresh(dataset, tmp_path, monkeypatch):
    from amflow.data import video as video_mod

    path = str(dataset / "videos/val_1.mp4")
    in_memory = decode_video_task((path, 24, "raw", 90, "auto", None))
    to_file = decode_video_task((path, 24, "raw", 90, "auto", str(tmp_path / "part.bin")))
    assert (tmp_path / "part.bin").read_bytes() == in_memory["blob"].tobytes()
    assert to_file["lengths"].tolist() == in_memory["lengths"].tolist() == [24 * 32 * 3] * 32
    assert "error" in decode_video_task((str(dataset / "videos/notes.mp4"), 24, "raw", 90, "auto", None))

    real = video_mod._chunks_decord

    def fails_half_way(p, indices, short_side):
        fps, chunks = real(p, indices, short_side)

        def gen():
            yield next(chunks)  # one chunk gets written to the part file...
            raise RuntimeError("corrupt packet")  # ...then decord fails: PyAV redoes the whole video

        return fps, gen()

    monkeypatch.setattr(video_mod, "_chunks_decord", fails_half_way)
    retried = decode_video_task((path, 24, "raw", 90, "auto", str(tmp_path / "part2.bin")))
    assert "error" not in retried and retried["lengths"].sum() == (tmp_path / "part2.bin").stat().st_size
    assert (tmp_path / "part2.bin").read_bytes() == in_memory["blob"].tobytes()


def test_shard_append_without_sendfile(tmp_path, monkeypatch):
    part = tmp_path / "p.bin"
    data = np.arange(300, dtype=np.uint8)
    part.write_bytes(data.tobytes())

    def no_sendfile(*a):
        raise OSError("sendfile not supported between these files")

    writer = fc.ShardWriter(tmp_path, 100)
    writer.add(data[:30], np.full(3, 10), fc.record_checksums(data[:30], np.full(3, 10)))
    monkeypatch.setattr(os, "sendfile", no_sendfile)
    # (shard, first frame in it)
    assert writer.add(part, np.full(30, 10), fc.record_checksums(data, np.full(30, 10))) == (0, 3)
    assert writer.close() == 1
    assert (tmp_path / fc.shard_name(0)).read_bytes() == data[:30].tobytes() + data.tobytes()
    index = np.load(tmp_path / fc.index_name(0))
    assert index[:, 0].tolist() == list(range(0, 330, 10)) and (index[:, 1] == 10).all()
    with pytest.raises(ValueError, match="lengths say"):
        fc.ShardWriter(tmp_path, 100).add(part, np.full(29, 10), np.zeros(29, np.int64))


def test_extraction_decodes_widths_decord_gets_wrong(tmp_path):
    (tmp_path / "v").mkdir()
    frames = moving_texture(12, 64, 48, 4)  # 48 px wide: decord 0.6.0 fails (dmlc/decord#336)
    write_mp4(tmp_path / "v/narrow.mp4", frames)
    ann.write_annotations(tmp_path, "train", pd.DataFrame({"video": ["v/narrow.mp4"], "label": [0],
                                                           "label_name": ["a"]}))
    summary = extract_frames(make_params(short_side=48), "toy", tmp_path, tmp_path / "frames", workers=1)
    assert summary["failed"] == 0 and summary["frames"] == 12
    expected, _ = read_video(tmp_path / "v/narrow.mp4", backend="pyav")
    np.testing.assert_array_equal(FrameCache(tmp_path / "frames").read(0), expected)


def test_a_full_disk_while_writing_the_cache_keeps_the_previous_one(dataset, tmp_path, monkeypatch):
    frames_dir = tmp_path / "frames"
    extract_frames(make_params(shard_frames=200), "toy", dataset, frames_dir, workers=1)
    before = {p.name: p.read_bytes() for p in frames_dir.iterdir()}

    def disk_full(src, dst, nbytes):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fc, "_append_file", disk_full)
    with pytest.raises(AmflowError) as err:  # other params: the cache is rebuilt, and the disk fills up
        extract_frames(make_params(shard_frames=100), "toy", dataset, frames_dir, workers=1)
    assert str(frames_dir) in str(err.value) and "disk is full" in str(err.value)
    assert {p.name: p.read_bytes() for p in frames_dir.iterdir()} == before
    assert list(tmp_path.iterdir()) == [frames_dir]  # no temporary folder left


def test_a_full_scratch_disk_stops_the_extraction_instead_of_failing_every_video(dataset):
    # /dev/full: every write fails with ENOSPC, as on a full $TMPDIR holding the decoders' part files.
    task = (str(dataset / "videos/val_1.mp4"), 24, "raw", 90, "auto", "/dev/full")
    with pytest.raises(AmflowError, match="/dev/full: the disk is full .*val_1.mp4"):
        decode_video_task(task)


@pytest.mark.parametrize("damage", ["truncate", "extend", "index"])
def test_a_damaged_shard_is_named_with_how_to_rebuild_it(tmp_path, damage):
    frames = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    frames_dir = tmp_path / "frames" / "toy"
    write_cache(frames_dir, [{"video_id": "a", "split": "train", "label": 0, "frames": frames}])
    shard, index = frames_dir / fc.shard_name(0), frames_dir / fc.index_name(0)
    if damage == "truncate":  # a copy cut short
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "extend":  # bytes appended by something else
        shard.write_bytes(shard.read_bytes() + b"\0" * 10)
    else:
        index.write_bytes(b"not an index")
    with pytest.raises(AmflowError) as err:
        FrameCache(frames_dir).read(0)
    msg = str(err.value)
    assert msg.startswith(str(shard)) and "amflow extract --dataset toy" in msg and str(frames_dir) in msg


def test_a_damaged_jpeg_record_is_named_with_its_shard(tmp_path):
    frames = moving_texture(3, 16, 16, 0)
    write_cache(tmp_path / "toy", [{"video_id": "a", "split": "train", "label": 0, "frames": frames}], "jpeg")
    shard = tmp_path / "toy" / fc.shard_name(0)
    shard.write_bytes(b"\0" * shard.stat().st_size)  # same size, garbage content
    with pytest.raises(AmflowError, match=f"{shard}: .*video a .*does not match its checksum.*"
                                          f"amflow extract --dataset toy"):
        FrameCache(tmp_path / "toy").read(0)


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_a_flipped_bit_in_a_shard_of_the_right_size_is_named_with_how_to_rebuild_it(tmp_path, encoding):
    frames = moving_texture(4, 16, 16, 0)
    frames_dir = tmp_path / "frames" / "toy"
    write_cache(frames_dir, [{"video_id": "a", "split": "train", "label": 0, "frames": frames}], encoding)
    shard = frames_dir / fc.shard_name(0)
    data = bytearray(shard.read_bytes())
    index = np.load(frames_dir / fc.index_name(0))
    data[int(index[2, 0]) + 5] ^= 0x10  # one bit of frame 2
    shard.write_bytes(bytes(data))
    cache = FrameCache(frames_dir)
    assert len(cache.read(0, [0, 1, 3])) == 3  # the frames around it are intact
    with pytest.raises(AmflowError) as err:
        cache.read(0, [1, 2])
    msg = str(err.value)
    assert msg.startswith(f"{shard}: frame cache shard is damaged (frame 2 of video a (record 2) does not match "
                          f"its checksum"), msg
    assert f"delete {frames_dir} and rerun `amflow extract --dataset toy`" in msg and "\n" not in msg


def test_a_cache_without_checksums_is_refused_with_how_to_rebuild_it(tmp_path, dataset):
    frames_dir = tmp_path / "frames" / "toy"
    write_cache(frames_dir, [{"video_id": "a", "split": "train", "label": 0, "frames": moving_texture(2, 8, 8, 0)}])
    summary = json.loads((frames_dir / fc.SUMMARY).read_text())
    (frames_dir / fc.SUMMARY).write_text(json.dumps({**summary, "format_version": 1}))  # as an earlier amflow wrote it
    with pytest.raises(AmflowError) as err:
        FrameCache(frames_dir)
    msg = str(err.value)
    assert msg.startswith(f"{frames_dir}: frame cache of format 1") and "\n" not in msg
    assert f"delete {frames_dir} and rerun `amflow extract --dataset toy`" in msg
    # ... and the extraction itself sees it is not the cache these params ask for: it makes it again.
    assert extract_frames(make_params(), "toy", dataset, frames_dir, workers=1)["format_version"] == fc.FORMAT_VERSION


def test_paths_with_spaces_and_unicode(tmp_path):
    root = tmp_path / "my data" / "vidéos à voir"
    (root / "clips ü").mkdir(parents=True)
    frames = moving_texture(10, 32, 32, 5)
    write_mp4(root / "clips ü" / "clip 1 é.mp4", frames)
    ann.write_annotations(root, "train", pd.DataFrame({"video": ["clips ü/clip 1 é.mp4"], "label": [0],
                                                       "label_name": ["a b"]}))
    out = tmp_path / "my data" / "frames" / "toy"
    summary = extract_frames(make_params(short_side=32), "toy", root, out, workers=1)
    assert summary["failed"] == 0
    expected, _ = read_video(root / "clips ü" / "clip 1 é.mp4", backend="pyav")
    np.testing.assert_array_equal(FrameCache(out).read(0), expected)
    assert FrameCache(out).manifest.at[0, "video"] == "clips ü/clip 1 é.mp4"


def test_reading_more_shards_than_the_descriptor_limit(tmp_path):
    """A worker touching thousands of shards must not run out of descriptors (Errno 24): data maps are
    kept in a bounded LRU and the indexes are read whole, so the open files stay below the limit."""
    import resource

    rng = np.random.default_rng(0)
    videos = [{"video_id": f"v{i}", "split": "train", "label": i % 3,
               "frames": rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)} for i in range(3 * fc.MAX_OPEN_SHARDS)]
    write_cache(tmp_path / "f", videos, shard_frames=2)  # one shard per video
    cache = FrameCache(tmp_path / "f")
    assert cache.summary["shards"] == len(videos)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    low = in_use + fc.MAX_OPEN_SHARDS + 16  # room for the bounded maps, far below one per shard
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        for _ in range(2):  # every shard, twice: the LRU closes and reopens maps
            for i, v in enumerate(videos):
                np.testing.assert_array_equal(cache.read(i), v["frames"])
        assert cache.open_shards == fc.MAX_OPEN_SHARDS
        # What a DataLoader worker does first: lift the soft limit to the hard one.
        raised = fc.raise_open_file_limit()
        assert raised == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
