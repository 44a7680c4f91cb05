"""Time to generate the embedded default's SynthMotion datasets (both configurations, the default
split sizes) with 1 and 2 worker processes; prints the figures (target: within 60 s on 2 cores).

    .venv/bin/python bench/bench_synthmotion.py [--params params/default.yaml] [--workers 1 2]

Also prints the per-clip rendering and encoding cost measured in this process, the data size, and
whether the outputs of the different worker counts are byte-identical (they must be).
"""
from __future__ import annotations

import argparse
import filecmp
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from amflow.data.sources import synthmotion as sm
    from amflow.params_io import load_params

    params = load_params(args.params)
    names = [n for n, d in params.datasets.items() if d.source == "synthmotion"]
    print(f"cores: {len(os.sched_getaffinity(0))}; datasets: {', '.join(names)}")

    # Per-clip cost in this process (render vs encode), on 24 clips of each dataset.
    for name in names:
        spec = params.datasets[name].synth
        t_render = t_encode = 0.0
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(24):
                t0 = time.perf_counter()
                frames, _ = sm.render_clip(spec, i % len(sm.CLASSES), sm.clip_rng(spec.seed, "train", i))
                t1 = time.perf_counter()
                sm.encode_mp4(frames, Path(tmp) / "x.mp4", spec.fps)
                t_encode += time.perf_counter() - t1
                t_render += t1 - t0
        print(f"{name}: render {t_render / 24 * 1e3:.1f} ms/clip, encode {t_encode / 24 * 1e3:.1f} ms/clip "
              f"({spec.frames} frames, {spec.resolution} px, {spec.difficulty}, camera {spec.camera})")

    with tempfile.TemporaryDirectory() as root:
        outs = {}
        for workers in args.workers:
            total = 0.0
            videos = 0
            for name in names:
                p = params.model_copy(deep=True)
                p.datasets[name].synth.workers = workers
                out = Path(root) / f"w{workers}" / name
                t0 = time.perf_counter()
                info = sm.generate_dataset(p, name, out)
                dt = time.perf_counter() - t0
                total += dt
                n = sum(info["counts"].values())
                videos += n
                print(f"workers={workers} {name}: {n} videos in {dt:.1f} s ({n / dt:.1f} videos/s), "
                      f"{_size_mb(out):.1f} MB, actor partly out of frame in "
                      f"{np.mean(list(info['actor_clipped_share'].values())):.0%} of clips")
            outs[workers] = Path(root) / f"w{workers}"
            print(f"workers={workers}: both datasets ({videos} videos) in {total:.1f} s "
                  f"[target: <= 60 s on 2 cores]")
        ref = args.workers[0]
        for w in args.workers[1:]:
            print(f"workers={w} output byte-identical to workers={ref}: {_same_tree(outs[ref], outs[w])}")


if __name__ == "__main__":
    main()
