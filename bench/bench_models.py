"""Training-step time and memory of every method side by side, and the share of AM flow in the forward.

    python bench/bench_models.py                       # embedded default size (params/default.yaml)
    python bench/bench_models.py --size vitb --batch 1 # ViT-B/14 (DINOv2 shape, random init), 224 px

All methods share one backbone in one process and are timed in interleaved rounds. Per method: the time of a training step (forward + backward,
adapters and head in train mode, random labels, no optimiser), the time of the training forward alone,
the peak memory of a step above the resident model and batch (CUDA: the allocator's peak; CPU: the
peak of live tensor storage, tracked by a dispatch mode in a separate, untimed step), clip GFLOPs
(FlopCounterMode, 2 per multiply-add) and trainable parameters. For ``amflow``: the share of the
forward spent turning attention maps into AM flow scores (timed inside the model), and the forward
overhead over ``tpa`` (the same model without AM flow: attention maps + scores + gating). On CUDA,
bf16 autocast is on by default (``--no-amp`` for fp32), as in training.

Timing: on CPU, process CPU seconds (``time.process_time``), best of ``--repeats``: the development
machine is shared, and wall time there measures the neighbours' load more than the model. On CUDA,
wall time with synchronisation, best of ``--repeats``.
Targets to read the figures against: amflow step <= 1.3x aim step; AM flow <= 15% of the forward.
Figures only: nothing here passes or fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import weakref
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
# The one private torch import: torch has no public dispatch-mode base class (its public
# FlopCounterMode counts FLOPs only) and no CPU counterpart of torch.cuda.max_memory_allocated.
# torch is pinned in pyproject.toml; tests/test_bench_tools.py checks LiveTensorMemory with it.
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from amflow.models import build_model, clip_gflops  # noqa: E402
from amflow.models.backbone import build_backbone  # noqa: E402
from amflow.models.context import ClipContext  # noqa: E402
from amflow.models.video_model import VideoModel  # noqa: E402
from amflow.params import BackboneSpec  # noqa: E402
from amflow.params_io import load_params
from timing import Clock  # noqa: E402

# "aligned_<alignment>": the aligned variant with that model.am_flow.alignment ("aligned" alone: the default's).
METHODS = [("frame", "none"), ("aim", "none"), ("st_adapter", "none"), ("tpa", "none"),
           ("amflow", "static"), ("amflow", "aligned_grid"), ("amflow", "aligned_warp"),
           ("amflow", "aligned_warp_fill")]
SIZES = {
    # ViT-B/14 with the DINOv2 layout of the paper setting (random weights: speed does not depend on them)
    "vitb": dict(model="vit_base_patch14_dinov2", kwargs=dict(img_size=224), img=224),
}


def setting(size: str):
    params = load_params(ROOT / "params" / "default.yaml")
    if size == "default":
        spec = params.backbone.model_copy(update={"weights": "random"})
        img = int(spec.kwargs.get("img_size", params.sampling.crop_size))
    else:
        cfg = SIZES[size]
        spec = BackboneSpec(model=cfg["model"], kwargs=cfg["kwargs"], weights="random")
        img = cfg["img"]
    return spec, params.model, img


class AmFlowTimer:
    """Adds up the time spent computing AM flow: ``ClipContext.scores_from_map`` (maps -> scores) and
    ``VideoModel._warp_scores`` (pixel warp: the warp, the extra frozen pass and the scores).

    On CUDA the calls are bracketed by CUDA events, read after the forward: a synchronisation inside
    the forward would stall the queue and inflate both the share and the forward time."""

    TIMED = ((ClipContext, "scores_from_map"), (VideoModel, "_warp_scores"))

    def __init__(self, clock: Clock):
        self.clock, self.total = clock, 0.0
        self.cuda = clock.device.type == "cuda"
        self._events: list[tuple] = []
        self._orig = [getattr(owner, name) for owner, name in self.TIMED]

    def __enter__(self):
        for (owner, name), orig in zip(self.TIMED, self._orig):
            setattr(owner, name, self._timed(orig))
        return self

    def _timed(self, orig):
        def timed(*args, **kwargs):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = orig(*args, **kwargs)
                end.record()
                self._events.append((start, end))
                return out
            t0 = self.clock()
            out = orig(*args, **kwargs)
            self.total += self.clock() - t0
            return out

        return timed

    def __exit__(self, *exc):
        for (owner, name), orig in zip(self.TIMED, self._orig):
            setattr(owner, name, orig)
        if self._events:
            torch.cuda.synchronize(self.clock.device)
            self.total += sum(a.elapsed_time(b) for a, b in self._events) / 1000.0
            self._events.clear()


class LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the mode and still alive (a CPU memory_allocated)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            storage = t.untyped_storage()
            key = id(storage)
            if key not in self._seen:     # views share their base's storage
                self._seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def _tensors(out) -> list:
    """The tensors an operator returned: one, or a (nested) tuple or list of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


class Bench:
    """One method's model, batch and measurements."""

    def __init__(self, method: str, variant: str, backbone, model_spec, img: int, args):
        self.name = method if variant == "none" else f"{method}/{variant}"
        self.device = torch.device(args.device)
        self.amp = bool(args.amp) and self.device.type == "cuda"
        if variant.startswith("aligned_"):
            flow = model_spec.am_flow.model_copy(update={"alignment": variant.removeprefix("aligned_")})
            model_spec, variant = model_spec.model_copy(update={"am_flow": flow}), "aligned"
        torch.manual_seed(0)
        self.model = build_model(method, backbone, 12, args.frames, model_spec, variant).to(self.device)
        self.gflops = clip_gflops(self.model, args.frames, img)
        self.model.train()
        self.video = torch.randn(args.batch, args.frames, 3, img, img, device=self.device)
        self.transforms = torch.eye(3, device=self.device).repeat(args.batch, args.frames - 1, 1, 1)
        self.transforms[..., 0, 2] = 2.0  # a small pan, so the aligned variant does real resampling
        self.labels = torch.randint(0, 12, (args.batch,), device=self.device)
        self.step_s, self.forward_s, self.flow_s = [], [], []

    def forward(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(self.video, self.transforms)
        return torch.nn.functional.cross_entropy(logits.float(), self.labels)

    def step(self) -> None:
        self.model.zero_grad(set_to_none=True)
        self.forward().backward()

    def time_round(self, clock: "Clock") -> None:
        t0 = clock()
        self.step()
        self.step_s.append(clock() - t0)
        with AmFlowTimer(clock) as timer:
            t0 = clock()
            self.forward()
            self.forward_s.append(clock() - t0)
        self.flow_s.append(timer.total)

    def peak_mib(self) -> float:
        """Peak memory of one training step above the resident model and batch."""
        self.model.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            resident = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            return (torch.cuda.max_memory_allocated(self.device) - resident) / 2**20
        with LiveTensorMemory() as mem:
            self.step()
        return mem.peak / 2**20

    def row(self) -> dict:
        best = min(range(len(self.forward_s)), key=lambda i: self.forward_s[i])
        return {"method": self.name, "step_s": min(self.step_s), "forward_s": self.forward_s[best],
                "peak_mib": self.peak_mib(), "gflops": self.gflops,
                "trainable": self.model.param_counts()["trainable"],
                "am_flow_share": self.flow_s[best] / self.forward_s[best]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["default", "vitb"], default="default")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default: 8, vitb: 1)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the dev machine is shared)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast, as training uses it (default: on for CUDA; CPU: no effect)")
    ap.add_argument("--methods", nargs="+", default=[f"{m}:{v}" for m, v in METHODS],
                    help="method:variant pairs to run (default: all)")
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 1 if args.size == "vitb" else 8
    if args.amp is None:
        args.amp = args.device.startswith("cuda")
    torch.set_num_threads(args.threads)

    spec, model_spec, img = setting(args.size)
    backbone = build_backbone(spec).to(args.device)
    benches = [Bench(*pair.split(":"), backbone, model_spec, img, args) for pair in args.methods]
    clock = Clock(torch.device(args.device), cpu_time=time.process_time)  # see Timing above
    for b in benches:
        for _ in range(args.warmup):
            b.step()
    # Rounds interleave the methods, so a change in the machine's load hits all of them alike.
    for _ in range(args.repeats):
        for b in benches:
            b.time_round(clock)
    rows = [b.row() for b in benches]

    print(f"\nbackbone {spec.model} {spec.kwargs}, {img} px, {args.frames} frames, batch {args.batch}, "
          f"device {args.device}, threads {args.threads}, amp {args.amp}, best of {args.repeats}"
          f"{' (CPU seconds)' if args.device == 'cpu' else ''}")
    by = {r["method"]: r for r in rows}
    aim = by.get("aim")
    tpa = by.get("tpa")
    print(f"{'method':<26}{'step s':>9}{'vs aim':>8}{'fwd s':>9}{'peak MiB':>10}{'GFLOPs':>9}"
          f"{'trainable':>11}{'AMflow %fwd':>13}{'fwd vs tpa':>12}")
    for r in rows:
        vs_aim = f"{r['step_s'] / aim['step_s']:.2f}x" if aim else "-"
        is_flow = r["method"].startswith("amflow")
        share = f"{100 * r['am_flow_share']:.1f}" if is_flow else "-"
        over = f"{100 * (r['forward_s'] / tpa['forward_s'] - 1):+.1f}%" if (is_flow and tpa) else "-"
        print(f"{r['method']:<26}{r['step_s']:>9.4f}{vs_aim:>8}{r['forward_s']:>9.4f}{r['peak_mib']:>10.1f}"
              f"{r['gflops']:>9.3f}{r['trainable']:>11,}{share:>13}{over:>12}")
    print("targets: amflow step <= 1.3x aim; AM flow <= 15% of the forward")


if __name__ == "__main__":
    main()
