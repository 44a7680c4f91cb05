"""Training and evaluation throughput of every method through the real pipeline, side by side.

    python bench/bench_train.py                          # embedded default (params/default.yaml, synth_static)
    python bench/bench_train.py --frames-dir data/frames/synth_moving --dataset synth_moving --variant aligned
    python bench/bench_train.py --methods amflow --steps 20 --workers 2

Data: the dataset's prepared frame cache if it exists (``data/frames/<dataset>``, or ``--frames-dir``);
otherwise a small cache rendered by the SynthMotion generator at the dataset's size in a temporary
folder (with identity camera transforms, so the aligned variant runs too). Backbone: the pretrained
file when present, else random weights (speed does not depend on the values).

Per method, with the trainer's own DataLoader settings (global batch, workers, collate):
- ``loader``: clips/s of the DataLoader alone (decode, sample, crop; clips stay uint8);
- ``model``: clips/s of training steps on batches already in memory (forward, backward, AdamW);
- ``train``: clips/s of the real :class:`~amflow.train.trainer.Trainer` loop over ``--steps`` steps (no
  validation), i.e. what an epoch achieves; ``wait`` is the share of that loop spent waiting for the
  DataLoader (the trainer's own ``data_wait_frac``);
- ``eval``: test videos/s through :func:`~amflow.evaluate.evaluation.evaluate_model` with the params' test
  views (clips x crops), and view-clips/s.
For ``amflow``, where one training step's time goes: data wait, and inside the forward the explicit
attention of the blocks whose maps AM flow reads, the AM flow scores (and camera alignment), the
adapters (TPA), and the rest (frozen backbone blocks, embedding, head); then backward + optimizer.
The data loader is the bottleneck when ``loader`` clips/s is below ``model`` clips/s.

Timing: wall clock (data loader workers are separate processes), CUDA synchronised. On the shared
development machine the figures move with the neighbours' load (printed): compare methods within
one run. Figures only: nothing here passes or fails.
"""
from __future__ import annotations

import argparse
import contextlib
import io as _io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AMFLOW_TRACKING", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from amflow import paths  # noqa: E402
from amflow.params_io import load_params  # noqa: E402
from timing import Clock  # noqa: E402

METHODS = ("frame", "aim", "st_adapter", "tpa", "amflow")


# --------------------------------------------------------------------------- data
def synth_cache(params, dataset: str, out: Path, per_split: dict[str, int]) -> Path:
    """A small frame cache rendered by the SynthMotion generator, plus identity camera transforms."""
    from amflow.data.frame_cache import write_cache
    from amflow.data.sources.synthmotion import clip_rng, render_clip

    spec = params.dataset(dataset).synth
    if spec is None:
        raise SystemExit(f"{dataset} is not a SynthMotion dataset and has no frame cache: pass --frames-dir")
    videos = []
    for split, n in per_split.items():
        for i in range(n):
            label = i % 12
            frames, _ = render_clip(spec, label, clip_rng(spec.seed, split, i))
            videos.append({"video_id": f"{split}{i:04d}", "split": split, "label": label, "frames": frames})
    frames_dir = out / "frames"
    write_cache(frames_dir, videos)
    total = sum(len(v["frames"]) for v in videos)
    np.savez(out / "motion.npz", transforms=np.tile(np.eye(3, dtype=np.float32), (total, 1, 1)),
             valid=np.ones(total, bool), video_moving=np.zeros(len(videos), bool))
    return frames_dir


# --------------------------------------------------------------------------- where the forward's time goes
class ForwardTimers:
    """Adds up, inside the model's forward, the time of AM flow and of the adapters (monkeypatched timers)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.totals = {"attention maps": 0.0, "am flow": 0.0, "adapters": 0.0}
        self._saved = []

    def _wrap(self, owner, name: str, key, when=None):
        orig = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            if when is not None and not when(*args, **kwargs):
                return orig(*args, **kwargs)
            t0 = timers.clock()
            out = orig(*args, **kwargs)
            timers.totals[key] += timers.clock() - t0
            return out

        self._saved.append((owner, name, orig))
        setattr(owner, name, timed)

    def __enter__(self):
        import amflow.models.adapters as adapters
        import amflow.models.context as context
        import amflow.models.video_model as video_model

        # explicit (unfused) attention of the blocks whose maps feed AM flow
        self._wrap(adapters, "attention_branch", "attention maps",
                   when=lambda *a, **k: bool(k.get("need_map", a[3] if len(a) > 3 else False)))
        self._wrap(context.ClipContext, "scores_from_map", "am flow")
        self._wrap(video_model, "patch_alignment", "am flow")
        self._wrap(adapters.TemporalProcessingAdapter, "forward", "adapters")
        return self

    def __exit__(self, *exc):
        for owner, name, orig in reversed(self._saved):
            setattr(owner, name, orig)


# --------------------------------------------------------------------------- one method
def measure(method: str, args, params, dataset: str, frames_dir: Path, motion: Path, weights) -> dict:
    from amflow.data.clips import ClipDataset
    from amflow.evaluate.evaluation import evaluate_model
    from amflow.models import clip_gflops
    from amflow.train.distributed import DistContext, resolve_device
    from amflow.models.inference import autocast, collate_clips
    from amflow.runs import build_run_model
    from amflow.train.schedule import param_groups
    from amflow.train.trainer import Trainer

    device = resolve_device(args.device)
    clock = Clock(device)
    sampling = params.sampling_for(dataset)
    spec = params.train.model_copy(update={"epochs": 1, "num_workers": args.workers, "warmup_epochs": 0.0})
    variant = args.variant if method == "amflow" else "none"
    use_motion = motion if variant == "aligned" else None
    batch, steps = spec.batch_size, args.steps
    train_set = ClipDataset(frames_dir, "train", sampling, train=True, motion=use_motion)
    n_train = min(len(train_set), batch * (steps + 1))
    if n_train < batch * 2:
        raise SystemExit(f"the train split has {len(train_set)} clips: need at least {2 * batch} (2 batches)")
    normalise = train_set.normalise  # clips arrive as uint8 and are normalised on the device
    train_set = Subset(train_set, range(n_train))
    train_set.set_epoch = lambda e: None  # Subset hides ClipDataset.set_epoch; the order does not matter here
    model = build_run_model(params, dataset, method, 12, variant, weights, seed=0).to(device)
    counts = model.param_counts()
    gflops = clip_gflops(model, sampling.num_frames, sampling.crop_size)
    amp = bool(spec.amp and device.type == "cuda")
    row = {"method": method if variant == "none" else f"amflow/{variant}", "trainable": counts["trainable"],
           "gflops": gflops}

    # 1. the DataLoader alone
    loader = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        collate_fn=collate_clips)
    t0, clips, it = clock(), 0, iter(loader)
    batches = []
    for b in it:
        batches.append(b)
        clips += len(b["label"])
    row["loader"] = clips / (clock() - t0)

    # 2. training steps on batches in memory
    opt = torch.optim.AdamW(param_groups(model, spec.weight_decay), lr=spec.lr)
    model.train()

    def step(b, timers: bool = False):
        video, tr, y = normalise(b["video"].to(device)), b["transforms"].to(device), b["label"].to(device)
        t_a = clock()
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(video, tr).float(), y)
        t_b = clock()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t_b - t_a, clock() - t_b

    step(batches[0])  # warm-up
    fwd, bwd = [], []
    for b in batches[1:]:
        f, g = step(b)
        fwd.append(f)
        bwd.append(g)
    row["model"] = batch * len(fwd) / (sum(fwd) + sum(bwd))
    row["forward_s"], row["backward_s"] = float(np.median(fwd)), float(np.median(bwd))

    # 3. the real training loop (fresh model state does not matter for speed)
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stderr(_io.StringIO()):
        trainer = Trainer(model, train_set, None, spec, seed=0, run_dir=Path(run_dir),
                          ctx=DistContext(device=device), progress=False, normalise=normalise)
        res = trainer.fit()
    row["train"] = res.history[0]["clips_per_s"]
    row["wait"] = res.history[0]["data_wait_frac"]

    # 4. evaluation with the test views
    test_set = ClipDataset(frames_dir, "test", sampling, train=False, motion=use_motion)
    n_test = min(len(test_set), args.eval_videos)
    views = sampling.test_clips * sampling.test_crops
    t0 = clock()
    evaluate_model(model, Subset(test_set, range(n_test)), device=device, amp=amp,
                   batch_size=max(1, batch // views), num_workers=args.workers, progress=False,
                   normalise=normalise)
    el = clock() - t0
    row["eval_videos"], row["eval_clips"], row["views"] = n_test / el, n_test * views / el, views

    # 5. where a training step's forward goes (amflow)
    if method == "amflow":
        model.train()
        totals = {"attention maps": 0.0, "am flow": 0.0, "adapters": 0.0}
        fwd_total = 0.0
        for b in batches[1:]:
            with ForwardTimers(clock) as timers:
                f, _ = step(b)
            fwd_total += f
            for k, v in timers.totals.items():
                totals[k] += v
        n = len(batches) - 1
        row["breakdown"] = {"data wait": row["wait"] * (batch / row["train"]) if row["train"] else float("nan"),
                            **{k: v / n for k, v in totals.items()},
                            "backbone+head (rest of forward)": (fwd_total - sum(totals.values())) / n,
                            "backward+optimizer": float(np.mean(bwd))}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params" / "default.yaml"))
    ap.add_argument("--dataset", default="synth_static")
    ap.add_argument("--frames-dir", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "results")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--variant", choices=["static", "aligned"], default="static", help="AM flow variant for amflow")
    ap.add_argument("--steps", type=int, default=6, help="training steps timed per method")
    ap.add_argument("--eval-videos", type=int, default=48)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: params train.num_workers)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: params train.threads or torch's)")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda (default: params train.device)")
    args = ap.parse_args()

    params = load_params(args.params)
    args.workers = params.train.num_workers if args.workers is None else args.workers
    args.device = args.device or params.train.device
    threads = args.threads if args.threads is not None else params.train.threads
    if threads:
        torch.set_num_threads(threads)
    from amflow.train.distributed import resolve_device

    device = resolve_device(args.device)
    tmp = None
    frames_dir = args.frames_dir or paths.frames_dir(args.data_dir, args.dataset)
    motion = paths.motion_file(args.data_dir, args.dataset)
    if not (frames_dir / "summary.json").exists():
        tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        batch = params.train.batch_size
        t0 = time.perf_counter()
        frames_dir = synth_cache(params, args.dataset, Path(tmp.name),
                                 {"train": batch * (args.steps + 1), "test": args.eval_videos})
        motion = Path(tmp.name) / "motion.npz"
        print(f"data: no frame cache for {args.dataset}; rendered {batch * (args.steps + 1)} train and "
              f"{args.eval_videos} test SynthMotion clips in {time.perf_counter() - t0:.1f}s")
    else:
        print(f"data: {frames_dir}")
    weights = None
    if params.backbone.weights == "pretrain":
        f = paths.backbone_file(args.results_dir)
        weights = f if f.exists() else None
        if weights is None:
            params = params.model_copy(update={"backbone": params.backbone.model_copy(update={"weights": "random"})})
            print("backbone: pretrained file absent, random weights (same speed)")
    sampling = params.sampling_for(args.dataset)
    print(f"device {device}, torch threads {torch.get_num_threads()}, workers {args.workers}, "
          f"global batch {params.train.batch_size}, {sampling.num_frames} frames x {sampling.crop_size}px, "
          f"test views {sampling.test_clips}x{sampling.test_crops}, load avg {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")

    rows = []
    for method in args.methods:
        t0 = time.perf_counter()
        rows.append(measure(method, args, params, args.dataset, frames_dir, motion, weights))
        print(f"  measured {rows[-1]['method']} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

    print(f"\n{'method':<16}{'trainable':>10}{'GFLOPs':>8}{'loader':>9}{'model':>9}{'train':>9}{'wait':>7}"
          f"{'eval vid/s':>11}{'eval clip/s':>12}   (clips/s unless noted)")
    for r in rows:
        print(f"{r['method']:<16}{r['trainable']:>10,}{r['gflops']:>8.3f}{r['loader']:>9.1f}{r['model']:>9.1f}"
              f"{r['train']:>9.1f}{r['wait']:>7.0%}{r['eval_videos']:>11.1f}{r['eval_clips']:>12.1f}")
    for r in rows:
        if "breakdown" in r:
            total = sum(v for v in r["breakdown"].values() if v == v)
            print(f"\n{r['method']}: one training step of {params.train.batch_size} clips, {total * 1e3:.0f} ms")
            for k, v in r["breakdown"].items():
                print(f"  {k:<34}{v * 1e3:>8.1f} ms {v / total:>6.1%}")
    slow = [r["method"] for r in rows if r["loader"] < r["model"]]
    print("\ndata loader is the bottleneck for: " + (", ".join(slow) if slow else "none (model compute dominates)"))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
