"""Data-pipeline throughput: frame extraction against raw decord decoding, cached clips against decoding,
and what checking every frame's checksum adds to a read of the cache.

Generates its own videos (H.264, PyAV) in a temporary folder and prints figures; it never passes or
fails on time. Targets (docs/architecture.md, issue 3): extraction >= 80% of raw decoding speed per
core and scaling with cores; clip loading from the cache >= 3x on-the-fly decoding.

    .venv/bin/python bench/bench_data.py                  # 64 videos 64 px + 16 videos 224 px, 64 frames each
    .venv/bin/python bench/bench_data.py --small 16 --large 2 --repeats 1   # quick look

Raw decoding runs in an already started process pool (decode only, nothing returned). Extraction is
timed end to end (worker start-up, transfer, shard writing, manifest) and in steady state, from the
first finished video to the end: the per-core figure that matters on a real dataset, where start-up
is spread over hours.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_video(path: Path, frames: int, size: int, seed: int) -> None:
    import av
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random((size * 2, size * 2, 3)), (0, 0), max(1.0, size / 32))
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    step = rng.uniform(-1, 1, 2) * size / 64 * 2
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for t in range(frames):
            x, y = (np.array([size / 2, size / 2]) + step * t).astype(int) % size
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(base[y:y + size, x:x + size]),
                                                         format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_dataset(root: Path, count: int, size: int, frames: int, seed: int) -> list[Path]:
    import pandas as pd

    from amflow.data import annotations as ann

    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        rel = f"videos/{i:04d}.mp4"
        write_video(root / rel, frames, size, seed + i)
        rows.append({"video": rel, "label": i % 4, "label_name": f"c{i % 4}"})
    ann.write_annotations(root, "train", pd.DataFrame(rows))
    ann.write_classes(root, [f"c{i}" for i in range(4)])
    return [root / r["video"] for r in rows]


def params_for(short_side: int, encoding: str = "raw"):
    from amflow.params_io import validate

    return validate({"name": "bench", "table_datasets": ["d"], "backbone": {"weights": "random"},
                     "datasets": {"d": {"source": "list", "root": "/unused", "annotations": {"train": "x"},
                                        "short_side": short_side, "encoding": encoding}}})


def _decode_only(path: str) -> int:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    return len(vr.get_batch(list(range(len(vr)))).asnumpy())


def _noop(_):
    return 0


def raw_decode_fps(paths: list[Path], workers: int, repeats: int) -> float:
    """Best frames/s of decord get_batch(all frames), one reader per video, in a started pool."""
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_noop, range(workers * 2))
        pool.map(_decode_only, [str(paths[0])] * workers)  # imports decord in every worker
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            n = sum(pool.imap(_decode_only, [str(p) for p in paths], chunksize=1))
            best = max(best, n / (time.perf_counter() - t))
    return best


def extract_rates(dataset: Path, short_side: int, workers: int, repeats: int,
                  encoding: str = "raw") -> tuple[float, float]:
    """Best (end-to-end, steady-state) frames/s of ``extract_frames``.

    Steady state leaves out the time to the first finished video (worker start-up, first decode):
    frames of videos 2..N over the time from the first video's arrival to the end (writes included).
    """
    import contextlib
    import io
    import shutil

    from amflow.stages.extract import extract_frames

    e2e = steady = 0.0
    for _ in range(repeats):
        out = dataset / "frames"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            summary = extract_frames(params_for(short_side, encoding), "d", dataset, out, workers=workers)
        total = time.perf_counter() - t
        frames, videos = summary["frames"], summary["videos"]
        e2e = max(e2e, frames / total)
        steady = max(steady, frames * (videos - 1) / videos / max(total - summary["seconds_to_first_video"], 1e-9))
    return e2e, steady


def clip_rates(dataset: Path, paths: list[Path], crop: int, repeats: int) -> tuple[float, float]:
    """clips/s: ClipDataset from the cache vs the same sampling + augmentation decoding with decord."""
    import decord

    from amflow.data.clips import ClipDataset, sample_indices, train_view
    from amflow.params import SamplingSpec

    sampling = SamplingSpec(mode="segment", num_frames=8, crop_size=crop, train_scale=(0.5, 1.0))
    ds = ClipDataset(dataset / "frames", "train", sampling, train=True)

    def on_the_fly(i: int) -> np.ndarray:
        rng = np.random.default_rng([0, 0, i])
        vr = decord.VideoReader(str(paths[i]), ctx=decord.cpu(0), num_threads=1)
        idx = sample_indices(len(vr), sampling, True, rng)[0]
        frames = vr.get_batch(idx.tolist()).asnumpy()
        view, _ = train_view(frames, sampling, rng)
        return np.ascontiguousarray(view.transpose(0, 3, 1, 2))  # uint8, as ClipDataset ships it

    def once(fn) -> float:
        t = time.perf_counter()
        for i in range(len(ds)):
            fn(i)
        return len(ds) / (time.perf_counter() - t)

    cached = fly = 0.0
    for _ in range(repeats):  # interleaved, best of each
        cached, fly = max(cached, once(ds.__getitem__)), max(fly, once(on_the_fly))
    return cached, fly


def checksum_cost(frames_dir: Path, frames_per_clip: int, repeats: int) -> tuple[float, float]:
    """(seconds per clip of ``FrameCache.read``, seconds per clip of the CRC-32 of the same records alone):
    the check a read makes of every record it reads, against the whole read (checks included)."""
    from amflow.data import frame_cache as fc

    cache = fc.FrameCache(frames_dir)
    rng = np.random.default_rng(0)
    m = cache.manifest
    picks = [(row, np.sort(rng.choice(n, min(n, frames_per_clip), replace=False)))
             for row, n in enumerate(m["num_frames"])]
    shards = {s: (np.memmap(frames_dir / fc.shard_name(s), np.uint8, "r"), np.load(frames_dir / fc.index_name(s)))
              for s in sorted(set(m["shard"]))}
    records = [(shards[int(m.at[row, "shard"])], int(m.at[row, "first_frame"]) + idx) for row, idx in picks]

    def reads() -> float:
        t = time.perf_counter()
        for row, idx in picks:
            cache.read(row, idx)
        return time.perf_counter() - t

    def checksums() -> float:
        t = time.perf_counter()
        for (data, index), rows in records:
            for off, length, _ in index[rows]:
                zlib.crc32(data[off:off + length])
        return time.perf_counter() - t

    read = crc = float("inf")
    for _ in range(repeats):  # interleaved, best of each
        read, crc = min(read, reads()), min(crc, checksums())
    return read / len(picks), crc / len(picks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=64, help="videos at 64 px")
    ap.add_argument("--large", type=int, default=16, help="videos at 224 px")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for every figure")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    import cv2

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        groups = [("64px", 64, make_dataset(tmp / "small", args.small, 64, args.frames, 0), 56),
                  ("224px", 224, make_dataset(tmp / "large", args.large, 224, args.frames, 1000), 224)]
        print(f"generated {args.small} + {args.large} videos of {args.frames} frames in "
              f"{time.perf_counter() - t:.1f} s (cpu cores: {mp.cpu_count()})\n")

        print("Extraction (short side = native size, raw cache) against raw decord decoding, frames/s")
        print(f"{'videos':7} {'workers':>7} {'raw decode':>11} {'extract e2e':>12} {'e2e/raw':>8} "
              f"{'steady':>8} {'steady/raw':>10}")
        for w in args.workers:
            for name, size, paths, _ in groups:
                raw = e2e = steady = 0.0
                for _ in range(args.repeats):  # interleaved, best of each: the machine's load drifts
                    raw = max(raw, raw_decode_fps(paths, w, 1))
                    a, b = extract_rates(paths[0].parents[1], size, w, 1)
                    e2e, steady = max(e2e, a), max(steady, b)
                print(f"{name:7} {w:>7} {raw:>11.0f} {e2e:>12.0f} {e2e / raw:>8.0%} {steady:>8.0f} "
                      f"{steady / raw:>10.0%}")

        name, size, paths, _ = groups[1]
        w = max(args.workers)
        print(f"\nExtraction of the 224 px videos with resizing and JPEG, {w} workers, frames/s (e2e, steady)")
        for label, short, enc in (("short side 112, raw", 112, "raw"), ("short side 112, jpeg", 112, "jpeg"),
                                  ("short side 224, jpeg", 224, "jpeg")):
            e2e, steady = extract_rates(paths[0].parents[1], short, w, args.repeats, enc)
            print(f"  {label:22} {e2e:8.0f} {steady:8.0f}")

        print("\nClip loading, 8-frame segment clips + random resized crop, one process, clips/s")
        print(f"{'videos':7} {'cache':>8} {'on the fly':>11} {'speed-up':>9}")
        loads = {}
        for name, size, paths, crop in groups:
            extract_rates(paths[0].parents[1], size, max(args.workers), 1)
            cached, fly = clip_rates(paths[0].parents[1], paths, crop, args.repeats)
            loads[name] = 1 / cached
            print(f"{name:7} {cached:>8.0f} {fly:>11.0f} {cached / fly:>8.1f}x")

        print("\nFrame checksums: the CRC-32 a read checks for every frame record it reads, 8 frames per clip")
        print(f"{'cache':22} {'read us/clip':>12} {'crc us/clip':>11} {'of a read':>9} {'of a clip':>9}")
        for name, size, paths, _ in groups:
            for enc in ("raw", "jpeg"):
                dataset = paths[0].parents[1]
                extract_rates(dataset, size, max(args.workers), 1, enc)
                read, crc = checksum_cost(dataset / "frames", 8, args.repeats)
                clip = f"{crc / loads[name]:>9.1%}" if enc == "raw" else f"{'':>9}"  # clips were timed on raw
                print(f"{name + ', ' + enc:22} {read * 1e6:>12.0f} {crc * 1e6:>11.1f} {crc / read:>9.1%} {clip}")


if __name__ == "__main__":
    main()
