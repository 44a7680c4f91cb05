"""``make gpu-check``: verify a GPU machine in one command (sized for at most 8 minutes on one GPU).

    python bench/gpu_check.py                          # what `make gpu-check` runs: CUDA, paper size
    python bench/gpu_check.py --skip synth             # leave out the synth_full training
    python bench/gpu_check.py --device cpu --size tiny # the CPU path (tests): a small ViT, 2 gloo processes

Checks, in order, each recorded in ``results/gpu_check.json`` and summarised in ``results/gpu_check.md``:

1. ``cuda``: CUDA is visible; device name, memory, torch and driver versions. Without CUDA (and
   ``--device cuda``) the script says so in one line and exits 2, before anything else.
2. ``bf16``: for every method at the paper size (DINOv2 ViT-B/14, 224 px, 8 frames, the adapters of
   ``params/k400.yaml``), one step's loss and trainable gradients under bf16 autocast against fp32
   from the same weights and batch: relative loss difference <= :data:`BF16_LOSS_RTOL` and gradient
   cosine similarity >= :data:`BF16_GRAD_COS`; then ``--steps`` bf16 AdamW steps with finite losses.
3. ``speed``: per method, training-step throughput (clips/s), the peak memory of a step, the
   ``amflow``/``aim`` step-time ratio and AM flow's share of the forward (``bench/bench_models.py``'s
   measurements, bf16 on CUDA).
4. ``ddp``: ``torchrun --nproc_per_node <visible GPUs>`` trains ``tpa`` through the real trainer for a
   few steps on seeded random clips; its per-epoch losses must match one process at the same global
   batch within :data:`DDP_LOSS_RTOL` (fp32; TF32 off). Skipped with one GPU (NCCL takes one process
   per device); on CPU two gloo processes.
5. ``synth``: ``params/synth_full.yaml`` with fewer videos, pretraining images and epochs
   (``--synth-epochs``) trained for ``tpa`` and ``amflow`` through Snakemake in a work folder
   (``results/gpu_check/work``); their validation curves.

Exit status: 0 when every check that ran passed, 1 otherwise, 2 without CUDA.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from amflow import io, paths  # noqa: E402
from amflow.models import build_backbone, build_model  # noqa: E402
from amflow.params import BackboneSpec  # noqa: E402
from amflow.params_io import load_params
from amflow.train.distributed import cuda_facts, nvidia_driver_version  # noqa: E402

METHODS = [("frame", "none"), ("aim", "none"), ("st_adapter", "none"), ("tpa", "none"), ("amflow", "static"),
           ("amflow", "aligned")]
PARTS = ("bf16", "speed", "ddp", "synth")
BF16_LOSS_RTOL = 0.02   # bf16 keeps 8 mantissa bits: ~0.4% per rounding, a few percent through 12 blocks
BF16_GRAD_COS = 0.98
DDP_LOSS_RTOL = 1e-3    # fp32; only the summation order differs between 1 and N processes
SIZES = {
    # name: (backbone spec, model spec from this params file, image size, frames)
    "vitb": (dict(model="vit_base_patch14_dinov2", kwargs=dict(img_size=224), weights="random"),
             "params/k400.yaml", 224, 8),
    "tiny": (None, "params/default.yaml", None, 8),
}


# --------------------------------------------------------------------------- set-up
def setting(size: str):
    """(backbone spec, model spec, image size, frames) of ``size``."""
    spec, params_file, img, frames = SIZES[size]
    params = load_params(ROOT / params_file)
    if spec is None:  # the embedded default's small ViT, randomly initialised
        bspec = params.backbone.model_copy(update={"weights": "random"})
        img = int(bspec.kwargs.get("img_size", params.sampling.crop_size))
    else:
        bspec = BackboneSpec(**spec)
    return bspec, params.model, img, frames


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "driver": nvidia_driver_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", visible_gpus=torch.cuda.device_count())
    return info


def make_model(method: str, variant: str, backbone, model_spec, frames: int, device: torch.device):
    torch.manual_seed(0)
    return build_model(method, backbone, 400, frames, model_spec, variant).to(device)


def clip_batch(batch: int, frames: int, img: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, 3, img, img, generator=gen)
    transforms = torch.eye(3).repeat(batch, frames - 1, 1, 1)
    transforms[..., 0, 2] = 2.0  # a small pan: the aligned variant resamples for real
    labels = torch.randint(0, 400, (batch,), generator=gen)
    return video.to(device), transforms.to(device), labels.to(device)


# --------------------------------------------------------------------------- 2. bf16 against fp32
def loss_and_grads(model, video, transforms, labels, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(video, transforms)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    loss.backward()
    loss = loss.detach()
    grads = torch.cat([p.grad.detach().float().flatten() for p in model.parameters()
                       if p.requires_grad and p.grad is not None])
    return float(loss), grads


def check_bf16(backbone, model_spec, img, frames, batch, steps, device) -> dict:
    rows = []
    for method, variant in METHODS:
        model = make_model(method, variant, backbone, model_spec, frames, device).train()
        video, transforms, labels = clip_batch(batch, frames, img, device)
        loss32, g32 = loss_and_grads(model, video, transforms, labels, bf16=False)
        loss16, g16 = loss_and_grads(model, video, transforms, labels, bf16=True)
        cos = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
        rel = abs(loss16 - loss32) / max(abs(loss32), 1e-12)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
        losses = []
        for _ in range(steps):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(video, transforms)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        ok = rel <= BF16_LOSS_RTOL and cos >= BF16_GRAD_COS and all(math.isfinite(v) for v in losses)
        rows.append({"method": method if variant == "none" else f"amflow/{variant}", "loss_fp32": loss32,
                     "loss_bf16": loss16, "loss_rel_diff": rel, "grad_cosine": cos, "bf16_step_losses": losses,
                     "ok": ok})
        del model
    return {"ok": all(r["ok"] for r in rows), "loss_rtol": BF16_LOSS_RTOL, "grad_cos_min": BF16_GRAD_COS,
            "batch": batch, "methods": rows}


# --------------------------------------------------------------------------- 3. speed and memory
def check_speed(backbone, model_spec, img, frames, batch, repeats, device) -> dict:
    from bench_models import Bench, Clock

    args = argparse.Namespace(device=str(device), amp=device.type == "cuda", batch=batch, frames=frames)
    benches = [Bench(m, v, backbone, model_spec, img, args) for m, v in METHODS]
    clock = Clock(device)
    for b in benches:
        b.step()  # warm-up (kernel selection, allocator)
    for _ in range(repeats):
        for b in benches:  # interleaved rounds: a change in load hits every method alike
            b.time_round(clock)
    rows = []
    for b in benches:
        r = b.row()
        rows.append({"method": r["method"], "step_s": r["step_s"], "clips_per_s": batch / r["step_s"],
                     "forward_s": r["forward_s"], "peak_mib": r["peak_mib"], "gflops": r["gflops"],
                     "trainable": r["trainable"], "am_flow_share": r["am_flow_share"] if "amflow" in r["method"]
                     else None})
    by = {r["method"]: r for r in rows}
    ratio = by["amflow/static"]["step_s"] / by["aim"]["step_s"]
    return {"ok": all(math.isfinite(r["step_s"]) and r["step_s"] > 0 for r in rows), "batch": batch,
            "amp": args.amp, "repeats": repeats, "amflow_over_aim_step": ratio, "methods": rows}


# --------------------------------------------------------------------------- 4. DDP
class RandomClips(Dataset):
    """Seeded random clips (item i is the same in every process), in the trainer's item format."""

    def __init__(self, n: int, frames: int, img: int, classes: int = 8):
        self.n, self.frames, self.img, self.classes = n, frames, img, classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(1000 + int(i))
        return {"video": torch.randn(self.frames, 3, self.img, self.img, generator=gen), "label": int(i) % self.classes,
                "transforms": torch.eye(3).repeat(self.frames - 1, 1, 1), "index": int(i)}


def ddp_worker(args) -> None:
    """One process of the DDP comparison (alone or under torchrun): train ``tpa``, write its history."""
    from amflow.params import TrainSpec
    from amflow.train.distributed import init_distributed
    from amflow.train.trainer import Trainer

    torch.backends.cuda.matmul.allow_tf32 = False  # the comparison is about DDP, not TF32 rounding
    torch.backends.cudnn.allow_tf32 = False
    ctx = init_distributed(args.device)
    bspec, model_spec, img, frames = setting(args.size)
    torch.manual_seed(0)
    backbone = build_backbone(bspec)
    model = build_model("tpa", backbone, 8, frames, model_spec, "none")
    batch = 2 * args.ddp_global_procs
    spec = TrainSpec(epochs=2, batch_size=batch, lr=1e-3, warmup_epochs=0, amp=False, num_workers=0,
                     device=args.device, grad_clip=1.0)
    out = Path(args.ddp_worker)
    with tempfile.TemporaryDirectory() as run_dir:
        res = Trainer(model, RandomClips(batch * 3, frames, img), None, spec, seed=0, run_dir=Path(run_dir),
                      ctx=ctx, progress=False).fit()
    if ctx.is_main:
        io.write_json(out / f"world{ctx.world_size}.json",
                      {"world_size": ctx.world_size, "train_loss": [h["train_loss"] for h in res.history]})
    ctx.close()


def check_ddp(args, device: torch.device) -> dict:
    procs = args.ddp_procs or (torch.cuda.device_count() if device.type == "cuda" else 2)
    if procs < 2:
        return {"ok": True, "skipped": f"{procs} GPU visible: DDP needs 2 or more (NCCL: one process per GPU)"}
    torchrun = Path(sys.executable).parent / "torchrun"
    with tempfile.TemporaryDirectory() as tmp:
        base = [str(Path(__file__).resolve()), "--ddp-worker", tmp, "--device", args.device, "--size", args.size,
                "--ddp-global-procs", str(procs)]
        env = {**os.environ, "AMFLOW_TRACKING": "0", "OMP_NUM_THREADS": "1"}
        for cmd in ([sys.executable, *base], [str(torchrun), "--standalone", "--nproc_per_node", str(procs), *base]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                return {"ok": False, "procs": procs, "error": (proc.stdout + proc.stderr)[-2000:]}
        one = io.read_json(Path(tmp) / "world1.json")["train_loss"]
        many = io.read_json(Path(tmp) / f"world{procs}.json")["train_loss"]
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one, many))
    return {"ok": rel <= DDP_LOSS_RTOL and len(one) == len(many), "procs": procs, "loss_rtol": DDP_LOSS_RTOL,
            "single": one, "ddp": many, "max_rel_diff": rel}


# --------------------------------------------------------------------------- 5. synth_full, shortened
SYNTH_NAME = "synth_full_gpu_check"


def synth_metrics_file(method: str) -> Path:
    """Where the shortened run's ``method`` writes its metrics, relative to the work folder."""
    return paths.run_dir(paths.results_root("results", SYNTH_NAME), "synth_moving", method, 0) / "metrics.json"


def synth_params(work: Path, epochs: int) -> Path:
    """A params file: ``params/synth_full.yaml`` with fewer videos, pretraining images and epochs."""
    doc = {"extends": str(ROOT / "params" / "synth_full.yaml"), "name": SYNTH_NAME,
           "datasets": {"synth_moving": {"synth": {"split_sizes": {"train": 1200, "val": 300, "test": 300}}}},
           "table_datasets": ["synth_moving"], "methods": ["tpa", "amflow"], "seeds": [0],
           "pretrain_images": {"images": 20000, "val_images": 2000}, "pretrain": {"epochs": 3},
           "train": {"epochs": int(epochs)}}
    path = work / "synth_full_gpu_check.yaml"
    io.write_text(path, "# written by bench/gpu_check.py\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def check_synth(args) -> dict:
    work = Path(args.out) / "gpu_check" / "work"
    work.mkdir(parents=True, exist_ok=True)
    params = synth_params(work, args.synth_epochs)
    targets = [str(synth_metrics_file(m)) for m in ("tpa", "amflow")]
    cmd = [str(Path(sys.executable).parent / "snakemake"), *targets, "-s", str(ROOT / "Snakefile"), "-d", str(work),
           "--cores", str(os.cpu_count() or 1), "--configfile", str(params), "--resources", "gpu=1"]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3600)
    out = {"ok": proc.returncode == 0, "epochs": args.synth_epochs, "wall_s": time.perf_counter() - t0,
           "params": str(params)}
    if proc.returncode != 0:
        out["error"] = (proc.stdout + proc.stderr)[-2000:]
        return out
    for m in ("tpa", "amflow"):
        metrics = io.read_json(work / synth_metrics_file(m))
        out[m] = {"val_curve": metrics["val_curve"], "top1": metrics["top1"], "train_time_s": metrics["train_time_s"]}
    return out


# --------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    d = report["device"]
    lines = [f"# GPU check, {report['date']}", "",
             f"Device: {d.get('name', d['type'])}" + (f", {d['memory_gib']} GiB" if "memory_gib" in d else "") +
             f"; torch {d['torch']} (CUDA {d['torch_cuda']}), driver {d['driver'] or 'none'}; size `{report['size']}`.", "",
             f"Overall: **{'passed' if report['ok'] else 'FAILED'}**", ""]
    checks = report["checks"]
    if "bf16" in checks:
        c = checks["bf16"]
        lines += [f"## bf16 autocast against fp32 (batch {c['batch']}; loss rel. diff <= {c['loss_rtol']}, "
                  f"gradient cosine >= {c['grad_cos_min']})", "",
                  "| method | loss fp32 | loss bf16 | rel. diff | grad cosine | bf16 steps finite | ok |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['loss_fp32']:.4f} | {r['loss_bf16']:.4f} | {r['loss_rel_diff']:.2e} | "
                  f"{r['grad_cosine']:.4f} | {all(math.isfinite(v) for v in r['bf16_step_losses'])} | {r['ok']} |"
                  for r in c["methods"]]
        lines.append("")
    if "speed" in checks:
        c = checks["speed"]
        lines += [f"## Throughput and memory (batch {c['batch']}, bf16 {c['amp']}, best of {c['repeats']})", "",
                  f"amflow/aim step-time ratio: **{c['amflow_over_aim_step']:.2f}x**", "",
                  "| method | step s | clips/s | peak MiB | GFLOPs/clip | AM flow % of forward |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['step_s']:.4f} | {r['clips_per_s']:.1f} | {r['peak_mib']:.0f} | "
                  f"{r['gflops']:.2f} | " + (f"{100 * r['am_flow_share']:.1f}" if r["am_flow_share"] is not None
                                             else "-") + " |" for r in c["methods"]]
        lines.append("")
    if "ddp" in checks:
        c = checks["ddp"]
        lines += ["## DDP against one process", ""]
        if "skipped" in c:
            lines.append(f"Skipped: {c['skipped']}.")
        elif "error" in c:
            lines.append(f"Failed to run with {c['procs']} processes:\n\n```\n{c['error']}\n```")
        else:
            lines.append(f"{c['procs']} processes: per-epoch train loss {c['ddp']} vs one process {c['single']}; "
                         f"max relative difference {c['max_rel_diff']:.2e} (limit {c['loss_rtol']}): "
                         f"{'ok' if c['ok'] else 'FAILED'}.")
        lines.append("")
    if "synth" in checks:
        c = checks["synth"]
        lines += [f"## synth_full, shortened ({c['epochs']} epochs)", ""]
        if not c["ok"]:
            lines.append(f"Failed:\n\n```\n{c.get('error', '')}\n```")
        else:
            lines += [f"- {m}: val top-1 per epoch {[round(v, 3) for v in c[m]['val_curve']]}, test top-1 "
                      f"{c[m]['top1']:.3f}, training {c[m]['train_time_s']:.0f} s" for m in ("tpa", "amflow")]
            lines.append(f"- wall time of the whole Snakemake run: {c['wall_s']:.0f} s")
        lines.append("")
    lines.append(f"Total time: {report['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the test path (default cuda)")
    ap.add_argument("--size", default="vitb", choices=list(SIZES), help="vitb: the paper size; tiny: tests")
    ap.add_argument("--out", type=Path, default=ROOT / "results",
                    help="folder for gpu_check.json / gpu_check.md (default: results)")
    ap.add_argument("--batch", type=int, default=None, help="clips per step for bf16 and speed (default: vitb 8, "
                                                            "tiny 2)")
    ap.add_argument("--steps", type=int, default=2, help="bf16 training steps per method")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per method")
    ap.add_argument("--ddp-procs", type=int, default=None, help="DDP processes (default: visible GPUs; CPU: 2)")
    ap.add_argument("--synth-epochs", type=int, default=4, help="epochs of the shortened synth_full runs")
    ap.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="checks to leave out")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ddp-global-procs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch is None:
        args.batch = 8 if args.size == "vitb" else 2
    if args.batch < 1 or args.steps < 1 or args.repeats < 1 or args.synth_epochs < 1:
        ap.error("--batch, --steps, --repeats and --synth-epochs must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no usable CUDA device ({cuda_facts()}); nothing was checked", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "size": args.size, "device": device_info(device), "checks": {}}
    bspec, model_spec, img, frames = setting(args.size)
    report["setting"] = {"backbone": bspec.model, "img": img, "frames": frames}
    backbone = build_backbone(bspec).to(device)
    if "bf16" not in args.skip:
        report["checks"]["bf16"] = check_bf16(backbone, model_spec, img, frames, args.batch, args.steps, device)
    if "speed" not in args.skip:
        report["checks"]["speed"] = check_speed(backbone, model_spec, img, frames, args.batch, args.repeats, device)
    del backbone
    if "ddp" not in args.skip:
        report["checks"]["ddp"] = check_ddp(args, device)
    if "synth" not in args.skip:
        report["checks"]["synth"] = check_synth(args)
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    report["wall_s"] = time.perf_counter() - t0
    io.write_json(args.out / "gpu_check.json", report)
    io.write_text(args.out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
