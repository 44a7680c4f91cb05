"""ClipDataset: frame sampling, views, determinism, and camera transforms carried into clip pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from amflow.data import transforms_geometry as geo
from amflow.data.clips import ClipDataset, dense_indices, sample_indices, segment_indices
from amflow.data.frame_cache import write_cache
from amflow.errors import AmflowError
from amflow.params import SamplingSpec


def texture(h: int, w: int, seed: int = 0, sigma: float = 2.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((h, w, 3)), (0, 0), sigma)
    return cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def denorm(video: torch.Tensor, sampling: SamplingSpec) -> np.ndarray:
    """[T,3,S,S] uint8 clip -> float [T,S,S,3] in 0..255."""
    return video.numpy().transpose(0, 2, 3, 1).astype(np.float64)


# --------------------------------------------------------------------------- indices
def test_segment_indices_test_mode():
    assert segment_indices(10, 4, train=False).tolist() == [[1, 3, 6, 8]]
    assert segment_indices(32, 8, train=False).tolist() == [[2, 6, 10, 14, 18, 22, 26, 30]]
    assert segment_indices(4, 8, train=False).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]  # short video
    assert segment_indices(1, 3, train=False).tolist() == [[0, 0, 0]]
    two = segment_indices(32, 4, train=False, clips=2)  # positions 1/4 and 3/4 of each segment
    assert two.tolist() == [[2, 10, 18, 26], [6, 14, 22, 30]]


def test_dense_indices_test_mode():
    assert dense_indices(100, 8, 4, train=False).tolist() == [list(range(35, 64, 4))]
    assert dense_indices(100, 8, 4, train=False, clips=3)[:, 0].tolist() == [11, 35, 59]
    assert dense_indices(10, 8, 2, train=False).tolist() == [[0, 2, 4, 6, 8, 0, 2, 4]]  # loops
    assert dense_indices(29, 8, 4, train=False).tolist() == [list(range(0, 29, 4))]  # exactly one span


@pytest.mark.parametrize("mode", ["segment", "dense"])
def test_train_indices_stay_in_range_and_vary(mode):
    rng = np.random.default_rng(0)
    sampling = SamplingSpec(mode=mode, num_frames=8, stride=3)
    for n in [1, 2, 7, 8, 9, 22, 23, 24, 100, 301]:
        draws = np.concatenate([sample_indices(n, sampling, True, rng) for _ in range(50)])
        assert draws.shape == (50, 8) and draws.min() >= 0 and draws.max() < n
        if mode == "segment" and n >= 8:
            assert (np.diff(draws, axis=1) > 0).all()  # one frame from each segment, in order
            edges = np.floor(np.linspace(0, n, 9)).astype(int)
            assert ((draws >= edges[:-1]) & (draws < edges[1:])).all()
        if mode == "dense" and n >= 22:
            assert (np.diff(draws, axis=1) == 3).all()
        if n >= 24:
            assert len({tuple(d) for d in draws}) > 1  # training is random


# --------------------------------------------------------------------------- dataset basics
@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """Train: 4 videos of 12 to 40 frames (48x64, frame k is a texture with value offset k);
    val: one static video (every frame the same image)."""
    d = tmp_path_factory.mktemp("clips") / "frames"
    videos = []
    for i, n in enumerate([12, 20, 33, 40]):
        base = texture(48, 64, seed=i).astype(int)
        frames = np.stack([np.clip(base + 3 * k - 60, 0, 255) for k in range(n)]).astype(np.uint8)
        videos.append({"video_id": f"v{i}", "split": "train", "label": i, "frames": frames})
    videos.append({"video_id": "still", "split": "val", "label": 7,
                   "frames": np.repeat(texture(48, 64, seed=9)[None], 16, axis=0)})
    write_cache(d, videos)
    return d


def test_item_shapes_single_and_multi_view(toy_cache):
    s = SamplingSpec(num_frames=6, crop_size=24, test_clips=2, test_crops=3)
    train = ClipDataset(toy_cache, "train", s, train=True)
    item = train[2]
    assert len(train) == 4 and train.num_views == 1
    assert item["video"].shape == (6, 3, 24, 24) and item["video"].dtype == torch.uint8  # normalised on the device
    assert item["transforms"].shape == (5, 3, 3) and item["label"] == 2 and item["index"] == 2
    assert torch.equal(item["transforms"], torch.eye(3).expand(5, 3, 3))  # no motion file: identity
    test = ClipDataset(toy_cache, "train", s, train=False)
    item = test[1]
    assert test.num_views == 6
    assert item["video"].shape == (6, 6, 3, 24, 24) and item["transforms"].shape == (6, 5, 3, 3)
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=2)))
    assert batch["video"].shape == (2, 6, 6, 3, 24, 24) and batch["label"].tolist() == [0, 1]


def test_test_views_are_the_expected_crops(toy_cache):
    s = SamplingSpec(num_frames=4, crop_size=24, test_crops=3, mean=(0, 0, 0), std=(1, 1, 1))
    ds = ClipDataset(toy_cache, "val", s, train=False)
    frame = ds.cache.read(ds.positions[0], [0])[0]
    resized = cv2.resize(frame, (32, 24), interpolation=cv2.INTER_AREA)  # short side 48 -> 24
    views = ds[0]["video"]  # [3, T, 3, 24, 24]
    for v, x0 in enumerate([0, 4, 8]):  # left, centre, right along the long side
        got = views[v, 0].numpy().transpose(1, 2, 0)
        np.testing.assert_array_equal(got, resized[:, x0:x0 + 24])


def test_normalisation(tmp_path):
    grey = np.full((5, 16, 16, 3), (51, 102, 204), np.uint8)
    write_cache(tmp_path / "f", [{"video_id": "g", "split": "test", "label": 0, "frames": grey}])
    s = SamplingSpec(num_frames=2, crop_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    ds = ClipDataset(tmp_path / "f", "test", s, train=False)
    clip = ds[0]["video"]
    assert clip.dtype == torch.uint8 and clip[:, :, 3, 3].tolist() == [[51, 102, 204]] * 2
    video = ds.normalise(clip[None])[0]  # what the trainer does on the device, after the batch arrives
    expected = (np.array([0.2, 0.4, 0.8]) - [0.1, 0.2, 0.3]) / [0.5, 0.5, 0.25]
    assert video.dtype == torch.float32
    np.testing.assert_allclose(video[:, :, 3, 3].numpy(), np.tile(expected, (2, 1)), atol=1e-6)
    assert ds.normalise(video) is video  # float input is already model input


def test_augmentation_is_the_same_for_every_frame(toy_cache):
    s = SamplingSpec(num_frames=8, crop_size=20, train_scale=(0.2, 0.6), train_flip=True)
    ds = ClipDataset(toy_cache, "val", s, train=True)  # a static video: every frame the same image
    outputs = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        video = ds[0]["video"]
        for t in range(1, 8):
            assert torch.equal(video[t], video[0])
        outputs.append(video[0])
    assert len({o.numpy().tobytes() for o in outputs}) == 6  # but a different crop in each epoch


def test_deterministic_given_seed_epoch_index(toy_cache):
    s = SamplingSpec(mode="dense", num_frames=4, stride=2, crop_size=16, train_flip=True)
    a = ClipDataset(toy_cache, "train", s, train=True, seed=5)
    b = ClipDataset(toy_cache, "train", s, train=True, seed=5)
    c = ClipDataset(toy_cache, "train", s, train=True, seed=6)
    for ds in (a, b, c):
        ds.set_epoch(3)
    assert torch.equal(a[3]["video"], b[3]["video"])
    assert not torch.equal(a[3]["video"], c[3]["video"])
    b.set_epoch(4)
    assert not torch.equal(a[3]["video"], b[3]["video"])
    # The worker count of the DataLoader changes nothing.
    serial = [x["video"] for x in torch.utils.data.DataLoader(a, batch_size=1, num_workers=0)]
    parallel = [x["video"] for x in torch.utils.data.DataLoader(a, batch_size=1, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel)) and len(serial) == 4


def test_empty_split_and_bad_motion_file(toy_cache, tmp_path):
    s = SamplingSpec()
    with pytest.raises(AmflowError, match="no videos for split 'test'"):
        ClipDataset(toy_cache, "test", s, train=False)
    np.savez(tmp_path / "motion.npz", transforms=np.tile(np.eye(3, dtype=np.float32), (7, 1, 1)),
             valid=np.ones(7, bool), video_moving=np.ones(5, bool))
    with pytest.raises(AmflowError, match="rerun `amflow camera-motion`"):
        ClipDataset(toy_cache, "train", s, train=True, motion=tmp_path / "motion.npz")
    with pytest.raises(AmflowError, match="not found"):
        ClipDataset(toy_cache, "train", s, train=True, motion=tmp_path / "nope.npz")


# --------------------------------------------------------------------------- geometry
def test_compose_between_products_inverses_and_invalid_pairs():
    rng = np.random.default_rng(1)
    hs = np.stack([geo.translation_matrix(*rng.normal(size=2)) @ np.diag([1.01, 0.99, 1]) for _ in range(6)])
    valid = np.array([True, True, False, True, True, False])
    fwd = geo.compose_between(hs, valid, [0, 2, 5])
    np.testing.assert_allclose(fwd[0], hs[1] @ hs[0])
    np.testing.assert_allclose(fwd[1], hs[4] @ hs[3])  # the invalid pair 2->3 counts as identity
    back = geo.compose_between(hs, valid, [5, 0])  # a looped clip jumps back: the inverse
    np.testing.assert_allclose(back[0] @ hs[4] @ hs[3] @ hs[1] @ hs[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(geo.compose_between(hs, valid, [4, 4])[0], np.eye(3))


def test_crop_resize_matrix_matches_cv2_resize():
    img = texture(30, 40, seed=3).astype(np.float32)
    out = cv2.resize(img[5:25, 8:32], (48, 40), interpolation=cv2.INTER_LINEAR)
    c = geo.crop_resize_matrix(8, 5, 24, 20, 48, 40)
    same = cv2.warpAffine(img, c[:2], (48, 40), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(out - same)[2:-2, 2:-2].max() < 0.5


def _synthetic_motion(tmp_path, world_to_frame, n=24, h=48, w=64, split="train"):
    """Frames rendered from one big texture by world->frame maps; ground-truth transforms in motion.npz.

    With split != "train", a 7-frame decoy video with wild transforms comes first in the cache, so
    that reading another video's (or split's) rows of motion.npz shows up as a failure.
    """
    base = texture(160, 200, seed=11, sigma=3.0)
    frames = np.stack([cv2.warpAffine(base, m[:2], (w, h), flags=cv2.INTER_LINEAR) for m in world_to_frame])
    transforms = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    for t in range(n - 1):  # point at M_t w in frame t is at M_{t+1} w in frame t+1
        transforms[t] = world_to_frame[t + 1] @ np.linalg.inv(world_to_frame[t])
    videos = [{"video_id": "m", "split": split, "label": 0, "frames": frames}]
    if split != "train":
        videos.insert(0, {"video_id": "decoy", "split": "train", "label": 1, "frames": frames[:7]})
        decoy = np.tile(geo.translation_matrix(9, -7).astype(np.float32) @ np.diag([1.2, 0.8, 1]), (7, 1, 1))
        transforms = np.concatenate([decoy, transforms])
    frames_dir = tmp_path / "frames"
    write_cache(frames_dir, videos)
    np.savez(frames_dir / "motion.npz", transforms=transforms, valid=np.ones(len(transforms), bool),
             video_moving=np.ones(len(videos), bool))
    return frames_dir


def _warp_errors(video: np.ndarray, transforms: np.ndarray, margin: int = 2):
    """Mean |warp(frame t, H_t) - frame t+1| over pixels seen in both, and the same with H = identity."""
    s = video.shape[1]
    errs, base = [], []
    for t in range(len(transforms)):
        h = transforms[t].astype(np.float64)
        warped = cv2.warpPerspective(video[t].astype(np.float32), h, (s, s), flags=cv2.INTER_LINEAR)
        seen = cv2.warpPerspective(np.ones((s, s), np.float32), h, (s, s), flags=cv2.INTER_LINEAR)
        mask = cv2.erode((seen > 0.999).astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
        mask[:margin], mask[-margin:], mask[:, :margin], mask[:, -margin:] = False, False, False, False
        assert mask.mean() > 0.2, "too little overlap to check"
        errs.append(np.abs(warped - video[t + 1])[mask].mean())
        base.append(np.abs(video[t] - video[t + 1])[mask].mean())
    return np.array(errs), np.array(base)


def _check_clip_transforms(frames_dir, sampling, train, epochs=3, split="train"):
    ds = ClipDataset(frames_dir, split, sampling, train=train, motion=frames_dir / "motion.npz")
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        item = ds[0]
        videos, hs = item["video"], item["transforms"].numpy()
        if videos.ndim == 4:
            videos, hs = videos[None], hs[None]
        for v in range(len(videos)):
            err, base = _warp_errors(denorm(videos[v], sampling), hs[v])
            assert err.max() < 4.0 and base.mean() > 4 * err.mean(), (err, base)
    # The same clips with the camera-transform file ignored: the check really looks at the transforms.
    ds_static = ClipDataset(frames_dir, split, sampling, train=train, motion=None)
    assert torch.equal(ds_static[0]["transforms"][..., 0, 0], torch.ones_like(ds_static[0]["transforms"][..., 0, 0]))


def test_clip_transforms_translation(tmp_path):
    n = 24
    steps = np.array([[1.6, -0.7], [2.3, 0.4], [-1.2, 1.1]])[np.arange(n) % 3]
    pos = np.cumsum(steps, axis=0) - steps[0]
    maps = np.stack([geo.translation_matrix(-60 + px, -50 + py) for px, py in pos])
    frames_dir = _synthetic_motion(tmp_path, maps, n=n)
    train = SamplingSpec(num_frames=6, crop_size=40, train_scale=(0.25, 0.6), train_flip=True)
    _check_clip_transforms(frames_dir, train, train=True, epochs=4)
    test = SamplingSpec(num_frames=5, crop_size=24, test_crops=3, test_clips=2)
    _check_clip_transforms(frames_dir, test, train=False, epochs=1)
    # Dense sampling that loops on this short video: the jump back (20 -> 0) needs the inverse transform.
    looped = SamplingSpec(mode="dense", num_frames=8, stride=4, crop_size=32)
    assert dense_indices(n, 8, 4, train=False).tolist() == [[0, 4, 8, 12, 16, 20, 0, 4]]
    _check_clip_transforms(frames_dir, looped, train=False, epochs=1)
    _check_clip_transforms(frames_dir, looped, train=True, epochs=2)


def test_clip_transforms_zoom_and_rotation(tmp_path):
    n = 16
    centre = np.array([100.0, 80.0])
    maps = []
    for t in range(n):
        scale, angle = 1.0 + 0.025 * t, 0.6 * t  # zooming in and turning slowly
        rot = cv2.getRotationMatrix2D(tuple(centre), angle, scale)  # about the world centre
        m = np.vstack([rot, [0, 0, 1]])
        maps.append(geo.translation_matrix(32 - centre[0] + 0.3 * t, 24 - centre[1] - 0.2 * t) @ m)
    frames_dir = _synthetic_motion(tmp_path, np.stack(maps), n=n, split="val")  # after a decoy train video
    train = SamplingSpec(num_frames=5, crop_size=36, train_scale=(0.3, 0.7), train_flip=True)
    _check_clip_transforms(frames_dir, train, train=True, epochs=4, split="val")
    seg_test = SamplingSpec(num_frames=4, crop_size=24, test_crops=3)
    _check_clip_transforms(frames_dir, seg_test, train=False, epochs=1, split="val")


def test_identity_for_static_videos(tmp_path):
    maps = np.stack([geo.translation_matrix(-60 + 2 * t, -50) for t in range(10)])
    frames_dir = _synthetic_motion(tmp_path, maps, n=10)
    s = SamplingSpec(num_frames=4, crop_size=24)
    moving = ClipDataset(frames_dir, "train", s, train=False, motion=frames_dir / "motion.npz",
                         identity_for_static=True)[0]["transforms"]
    assert not torch.allclose(moving, torch.eye(3).expand(3, 3, 3))
    with np.load(frames_dir / "motion.npz") as z:
        np.savez(frames_dir / "motion.npz", transforms=z["transforms"], valid=z["valid"],
                 video_moving=np.zeros(1, bool))
    static = ClipDataset(frames_dir, "train", s, train=False, motion=frames_dir / "motion.npz",
                         identity_for_static=True)[0]["transforms"]
    assert torch.equal(static, torch.eye(3).expand(3, 3, 3))
    kept = ClipDataset(frames_dir, "train", s, train=False, motion=frames_dir / "motion.npz")[0]["transforms"]
    assert torch.allclose(kept, moving)  # without the flag, every video keeps its transforms


def test_view_maps_match_the_pixels(toy_cache):
    """The 3x3 map C returned with each view really sends cached-frame pixels to view pixels."""
    from amflow.data.clips import test_views, train_view

    frames = ClipDataset(toy_cache, "val", SamplingSpec(), train=False).cache.read(4, [0, 1])
    rng = np.random.default_rng(0)
    upscaling = SamplingSpec(crop_size=40, train_scale=(0.2, 0.5), train_flip=True)
    checks = [train_view(frames, upscaling, rng) for _ in range(8)]
    checks += test_views(frames, SamplingSpec(crop_size=24, test_crops=3))  # exact factor 2: area == bilinear
    for view, c in checks:
        s = view.shape[1]
        expected = cv2.warpAffine(frames[0].astype(np.float32), c[:2], (s, s), flags=cv2.INTER_LINEAR)
        assert np.abs(expected - view[0])[1:-1, 1:-1].max() <= 2.0


def test_motion_file_is_memory_mapped_not_copied(tmp_path):
    """The per-frame camera table is paged in from the file (shared by all loader workers), and a
    dataset pickled into a spawned worker carries no copy of it."""
    import pickle

    from amflow import io

    rng = np.random.default_rng(0)
    arrays = {"transforms": rng.normal(size=(50, 3, 3)).astype(np.float32), "valid": rng.random(50) > 0.3,
              "video_moving": np.array([True, False]), "video_id": np.array(["a", "bb"]), "model": np.array("affine")}
    np.savez(tmp_path / "m.npz", **arrays)  # what the camera-motion stage writes (uncompressed)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    for name in ("m.npz", "c.npz"):
        z = io.mmap_npz(tmp_path / name)
        assert set(z) == set(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(z[key], value)
        assert isinstance(z["transforms"], np.memmap) == (name == "m.npz")
    assert isinstance(io.mmap_npz(tmp_path / "m.npz")["valid"], np.memmap)

    frames = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    write_cache(tmp_path / "f", [{"video_id": f"v{i}", "split": "train", "label": i, "frames": frames}
                                 for i in range(5)])
    transforms = np.tile(np.eye(3, dtype=np.float32), (50, 1, 1))
    transforms[:, 0, 2] = np.arange(50)  # a translation per frame, so the composed maps tell frames apart
    np.savez(tmp_path / "motion.npz", transforms=transforms, valid=np.ones(50, bool), video_moving=np.ones(5, bool))
    s = SamplingSpec(num_frames=4, crop_size=16, test_clips=1)
    ds = ClipDataset(tmp_path / "f", "train", s, train=False, motion=tmp_path / "motion.npz")
    assert isinstance(ds._transforms, np.memmap)
    blob = pickle.dumps(ds)
    assert len(blob) < 20000  # no copy of the table
    clone = pickle.loads(blob)
    for i in range(5):
        assert torch.equal(clone[i]["transforms"], ds[i]["transforms"])
    assert not torch.equal(ds[0]["transforms"], ds[0]["transforms"] * 0)


# --------------------------------------------------------------------------- ground truth for the oracle
def _synth_cache_with_ground_truth(tmp_path, frames_size: int = 32):
    """Three rendered SynthMotion clips in a frame cache and their ground truth file."""
    from amflow.data.sources import synthmotion as sm
    from amflow.params import SynthSpec

    spec = SynthSpec(camera="moving", frames=12, split_sizes={"train": 0, "val": 3, "test": 0})
    videos, names, cover, moves = [], [], [], []
    for i in range(3):
        plan = sm.sample_plan(spec, i * 4, sm.clip_rng(0, "val", i))
        frames, info = sm.render_plan(plan)
        if frames_size != 32:
            frames = np.stack([cv2.resize(f, (frames_size, frames_size), interpolation=cv2.INTER_LINEAR)
                               for f in frames])
        name = f"videos/val/val_{i:05d}.mp4"
        videos.append({"video_id": name[:-4], "video": name, "split": "val", "label": i, "frames": frames})
        names.append(name)
        cover.append(np.rint(info["mask"] * 255).astype(np.uint8))
        moves.append(info["frame_to_next"].astype(np.float32))
    write_cache(tmp_path / "frames", videos)
    gt = tmp_path / "gt.npz"
    empty = {f"{s}_{k}": np.zeros((0,)) for s in ("train", "test") for k in ("video", "actor_coverage", "frame_to_next")}
    sm.write_npz(gt, val_video=np.array(names), val_actor_coverage=np.stack(cover),
                 val_frame_to_next=np.stack(moves), **empty)
    return tmp_path / "frames", gt, np.stack(cover).astype(np.float32) / 255


def test_coverage_travels_with_the_test_views(tmp_path):
    frames_dir, gt, cover = _synth_cache_with_ground_truth(tmp_path)
    sampling = SamplingSpec(num_frames=4, crop_size=32)
    plain = ClipDataset(frames_dir, "val", sampling, train=False)
    truth = ClipDataset(frames_dir, "val", sampling, train=False, ground_truth=gt)
    for i in range(3):
        a, b = plain[i], truth[i]
        assert "coverage" not in a and torch.equal(a["video"], b["video"])   # frames untouched
        idx = sample_indices(12, sampling, train=False)[0]
        torch.testing.assert_close(b["coverage"], torch.from_numpy(cover[i][idx]))
    three = ClipDataset(frames_dir, "val", sampling.model_copy(update={"test_crops": 3, "test_clips": 2}),
                        train=False, ground_truth=gt)[0]
    assert three["coverage"].shape == (6, 4, 32, 32) and three["video"].shape == (6, 4, 3, 32, 32)


def test_coverage_is_cropped_resized_and_flipped_with_the_training_view(tmp_path):
    from amflow.data.clips import random_resized_crop_box

    frames_dir, gt, cover = _synth_cache_with_ground_truth(tmp_path)
    sampling = SamplingSpec(num_frames=4, crop_size=24, train_scale=(0.3, 0.6), train_flip=True)
    plain = ClipDataset(frames_dir, "val", sampling, train=True, seed=3)
    truth = ClipDataset(frames_dir, "val", sampling, train=True, seed=3, ground_truth=gt)
    for i in range(3):
        a, b = plain[i], truth[i]
        assert torch.equal(a["video"], b["video"])
        # Replay the item's random draws: frame indices, crop box, flip.
        rng = np.random.default_rng([3, 0, i])
        idx = sample_indices(12, sampling, train=True, rng=rng)[0]
        x0, y0, cw, ch = random_resized_crop_box(32, 32, sampling.train_scale, rng)
        flip = rng.random() < 0.5
        interp = cv2.INTER_AREA if cw >= 24 and ch >= 24 else cv2.INTER_LINEAR   # as for the frames
        expected = np.stack([cv2.resize(c[y0:y0 + ch, x0:x0 + cw], (24, 24), interpolation=interp)
                             for c in cover[i][idx]])
        if flip:
            expected = expected[:, :, ::-1]
        np.testing.assert_allclose(b["coverage"].numpy(), expected, atol=3 / 255)   # uint8 resampling


def test_ground_truth_at_another_frame_size_and_the_oracle_sees_it(tmp_path):
    from amflow.models import build_backbone, build_model
    from amflow.models.am_flow import coverage_scores
    from amflow.params import AmFlowSpec, BackboneSpec, ModelSpec
    from amflow.models.inference import clip_probs, collate_clips

    frames_dir, gt, cover = _synth_cache_with_ground_truth(tmp_path, frames_size=48)
    sampling = SamplingSpec(num_frames=4, crop_size=32)
    ds = ClipDataset(frames_dir, "val", sampling, train=False, ground_truth=gt)
    batch = collate_clips([ds[i] for i in range(3)])
    assert batch["coverage"].shape == (3, 4, 32, 32)
    idx = sample_indices(12, sampling, train=False)[0]
    area = cover[:, idx].sum(axis=(2, 3)) * (32 / 32) ** 2          # 48 -> 32 px keeps the area share
    np.testing.assert_allclose(batch["coverage"].sum(dim=(2, 3)).numpy(), area, rtol=0.05, atol=0.5)
    torch.manual_seed(0)
    bb = build_backbone(BackboneSpec(model="vit_tiny_patch16_224", weights="random",
                                     kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)))
    model = build_model("amflow", bb, 3, 4, ModelSpec(am_flow=AmFlowSpec(control="oracle")), "static").eval()
    with torch.no_grad():   # trained-looking adapters; the head keeps its small init (probabilities not saturated)
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith("head"):
                p.normal_(0, 0.2)
    record = {}
    video = ds.normalise(batch["video"])
    model.features(video, record=record, coverage=batch["coverage"])
    expected = coverage_scores(batch["coverage"].flatten(0, 1), (8, 8), "mean")
    assert all(torch.equal(s, expected) for s in record.values())
    with torch.no_grad():
        cpu = torch.device("cpu")
        probs = clip_probs(model, batch["video"], batch["transforms"], cpu, False, ds.normalise, batch["coverage"])
        moved = clip_probs(model, batch["video"], batch["transforms"], cpu, False, ds.normalise,
                           batch["coverage"].flip(-1))
        same = clip_probs(model, batch["video"], batch["transforms"], cpu, False, ds.normalise, batch["coverage"])
    # The scores come from the coverage the loader gave: the same coverage, the same output; moved, not.
    assert torch.equal(probs, same) and (probs - moved).abs().max() > 1e-6
