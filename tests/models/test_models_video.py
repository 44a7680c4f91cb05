"""VideoModel and build_model: identity at init, what trains, temporal sensitivity, FLOPs, errors."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from amflow.errors import AmflowError
from amflow.models import build_backbone, build_model, clip_gflops
from amflow.models.flops import count_flops
from amflow.params import AdapterSpec, AmFlowSpec, BackboneSpec, ModelSpec

torch.set_num_threads(1)

S, T, B, CLASSES = 32, 4, 2, 5
KW = dict(img_size=S, patch_size=8, embed_dim=64, depth=2, num_heads=2)
# (method, variant, model spec) covering every method, TPU, position and AM flow source.
CASES = {
    "frame": ("frame", "none", ModelSpec()),
    "aim": ("aim", "none", ModelSpec()),
    "st_adapter": ("st_adapter", "none", ModelSpec()),
    "tpa": ("tpa", "none", ModelSpec()),
    "tpa_tcn_after_attn": ("tpa", "none", ModelSpec(adapter=AdapterSpec(tpu="tcn", position="after_attn"))),
    "tpa_lstm": ("tpa", "none", ModelSpec(adapter=AdapterSpec(tpu="lstm"))),
    "tpa_none": ("tpa", "none", ModelSpec(adapter=AdapterSpec(tpu="none"))),
    "amflow_static": ("amflow", "static", ModelSpec()),
    "amflow_aligned": ("amflow", "aligned", ModelSpec()),
    "amflow_source0": ("amflow", "static", ModelSpec(am_flow=AmFlowSpec(source=0, normalise="max"))),
    "amflow_source1_block0": ("amflow", "aligned",
                              ModelSpec(adapter=AdapterSpec(blocks=[0]), am_flow=AmFlowSpec(source=1))),
    "amflow_warp": ("amflow", "aligned", ModelSpec(am_flow=AmFlowSpec(alignment="warp"))),
    "amflow_warp_fill": ("amflow", "aligned", ModelSpec(am_flow=AmFlowSpec(alignment="warp_fill"))),
    "amflow_warp_source1_block0": ("amflow", "aligned", ModelSpec(adapter=AdapterSpec(blocks=[0]),
                                                                  am_flow=AmFlowSpec(alignment="warp", source=1))),
    "amflow_shuffled_tcn": ("amflow", "static", ModelSpec(adapter=AdapterSpec(tpu="tcn"),
                                                          am_flow=AmFlowSpec(control="shuffled"))),
}


def backbone(seed: int = 0, **extra):
    torch.manual_seed(seed)
    return build_backbone(BackboneSpec(model="vit_tiny_patch16_224", kwargs={**KW, **extra}, weights="random"))


def clip(seed: int = 0, frames: int = T, batch: int = B):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, 3, S, S, generator=g)
    transforms = torch.eye(3).repeat(batch, frames - 1, 1, 1)
    transforms[..., 0, 2] = torch.randint(-6, 7, (batch, frames - 1), generator=g).float()  # pans
    return video, transforms


def reference_features(bb, video):
    with torch.no_grad():
        cls = bb.forward_features(video.flatten(0, 1))[:, 0]
    return cls.view(video.shape[0], video.shape[1], -1).mean(1)


def randomise_trainable(model, seed: int = 0, std: float = 0.2):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, std)


@pytest.mark.parametrize("case", list(CASES))
def test_untrained_model_equals_frozen_backbone(case):
    method, variant, spec = CASES[case]
    bb = backbone()
    model = build_model(method, bb, CLASSES, T, spec, variant).eval()
    video, transforms = clip()
    with torch.no_grad():
        feats = model.features(video, transforms)
    torch.testing.assert_close(feats, reference_features(bb, video), atol=1e-5, rtol=0)
    # and the comparison is sensitive: perturbed adapters change the features
    if method != "frame":
        randomise_trainable(model)
        with torch.no_grad():
            assert (model.features(video, transforms) - feats).abs().max() > 1e-3


@pytest.mark.parametrize("case", list(CASES))
def test_only_adapters_and_head_train_and_none_is_dead_at_init(case):
    method, variant, spec = CASES[case]
    bb = backbone()
    model = build_model(method, bb, CLASSES, T, spec, variant).train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[0] in ("block_adapters", "head", "temporal_embedding") for n in trainable)
    assert all(not p.requires_grad for p in bb.parameters())
    video, transforms = clip()
    opt = torch.optim.SGD(trainable.values(), lr=0.5)
    learned = set()
    for _ in range(2):  # zero-initialised up-projections pass gradient on from the second step
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(video, transforms), torch.arange(B)).backward()
        assert all(p.grad is None for p in bb.parameters())
        learned |= {n for n, p in trainable.items() if p.grad is not None and p.grad.abs().max() > 0}
        opt.step()
    assert learned == set(trainable), f"never received a gradient: {sorted(set(trainable) - learned)}"


def test_param_counts():
    bb = backbone()
    n_backbone = sum(p.numel() for p in bb.parameters())
    frame = build_model("frame", bb, CLASSES, T, ModelSpec(), "none")
    assert frame.param_counts() == {"trainable": 64 * CLASSES + CLASSES, "total": n_backbone + 64 * CLASSES + CLASSES}
    tpa = build_model("tpa", bb, CLASSES, T, ModelSpec(), "none").param_counts()
    amflow = build_model("amflow", bb, CLASSES, T, ModelSpec(), "static").param_counts()
    assert tpa == amflow            # AM flow adds no parameters
    for method in ("aim", "st_adapter"):
        counts = build_model(method, bb, CLASSES, T, ModelSpec(), "none").param_counts()
        assert counts["total"] - counts["trainable"] == n_backbone


@pytest.mark.parametrize("case", ["frame", "aim", "st_adapter", "tpa", "tpa_tcn_after_attn", "tpa_lstm",
                                  "amflow_static", "amflow_source0"])
def test_reversing_frames_changes_temporal_models_only(case):
    method, variant, spec = CASES[case]
    model = build_model(method, backbone(), CLASSES, T, spec, variant).eval()
    randomise_trainable(model, seed=1)
    video, _ = clip(seed=3)
    with torch.no_grad():
        forward, backward = model(video), model(video.flip(1))
    gap = (forward - backward).abs().max().item()
    if method == "frame":
        assert gap < 1e-5
    else:
        assert gap > 1e-3, f"{case}: reversal changed logits by only {gap}"


def test_backbone_stays_in_eval_mode_while_training():
    bb = backbone(drop_path_rate=0.5, proj_drop_rate=0.5)  # would be random in train mode
    model = build_model("tpa", bb, CLASSES, T, ModelSpec(), "none").train()
    assert model.training and not bb.training and model.block_adapters["0"].training
    video, _ = clip()
    with torch.no_grad():
        a, b = model.features(video), model.features(video)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, reference_features(bb, video), atol=1e-5, rtol=0)


def test_aligned_needs_transforms_of_the_right_shape():
    model = build_model("amflow", backbone(), CLASSES, T, ModelSpec(), "aligned")
    video, transforms = clip()
    with pytest.raises(AmflowError, match="transforms"):
        model(video)
    with pytest.raises(AmflowError, match=r"\[B, T-1, 3, 3\]"):
        model(video, transforms[:, :-1])
    with pytest.raises(AmflowError, match="built for 4 frames"):
        model(torch.randn(1, T + 1, 3, S, S))
    # static and non-AM-flow models ignore transforms
    build_model("amflow", backbone(), CLASSES, T, ModelSpec(), "static")(video)


def test_aligned_with_identity_transforms_equals_static():
    bb = backbone()
    video, _ = clip()
    static = build_model("amflow", bb, CLASSES, T, ModelSpec(), "static").eval()
    aligned = build_model("amflow", bb, CLASSES, T, ModelSpec(), "aligned").eval()
    aligned.load_state_dict(static.state_dict())
    randomise_trainable(static, seed=4)
    aligned.load_state_dict(static.state_dict())
    identity = torch.eye(3).repeat(B, T - 1, 1, 1)
    with torch.no_grad():
        assert torch.equal(static(video), aligned(video, identity))
        assert torch.equal(static.am_flow_maps(video), aligned.am_flow_maps(video, identity))


def test_am_flow_gates_patch_tokens_without_gradient():
    bb = backbone()
    video, _ = clip()
    tpa = build_model("tpa", bb, CLASSES, T, ModelSpec(), "none").eval()
    amflow = build_model("amflow", bb, CLASSES, T, ModelSpec(), "static").eval()
    randomise_trainable(tpa, seed=5)
    amflow.load_state_dict(tpa.state_dict())
    record = {}
    out = amflow.train().features(video, record=record)
    assert sorted(record) == [0, 1] and not any(s.requires_grad for s in record.values())
    assert out.requires_grad
    still = video[:, :1].expand(-1, T, -1, -1, -1).clone()   # AM flow all ones: the gate is a no-op
    local = still.clone()
    local[:, :, :, :8, :8] = torch.randn(B, T, 3, 8, 8)       # motion in one patch: a peaked gate
    with torch.no_grad():
        gap = (amflow.eval().features(local) - tpa.features(local)).abs().max()
    assert gap > 1e-3           # the gate changes what the adapters see
    with torch.no_grad():
        torch.testing.assert_close(amflow.features(still), tpa.features(still), atol=1e-6, rtol=0)


def test_am_flow_stays_float32_under_autocast():
    from amflow.models.am_flow import patch_alignment
    from amflow.models.context import ClipContext

    torch.manual_seed(0)
    maps = torch.rand(B * T, 16, 16).softmax(-1)
    _, transforms = clip()
    ctx = ClipContext(batch=B, frames=T, num_prefix=1, grid=(4, 4), flow=AmFlowSpec(),
                      alignment=patch_alignment(transforms, (4, 4), (8, 8)))
    reference = ctx.scores_from_map(0, maps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16   # autocast is on
        scores = ctx.scores_from_map(0, maps)
    assert scores.dtype == torch.float32 and torch.equal(scores, reference)


def test_gate_leaves_prefix_tokens_alone():
    from amflow.models.integrations.gate import gate_patch_tokens

    z = torch.randn(3, 5 + 4, 8)
    scores = torch.rand(3, 4)
    gated = gate_patch_tokens(z, scores, num_prefix=5)
    assert torch.equal(gated[:, :5], z[:, :5])
    torch.testing.assert_close(gated[:, 5:], z[:, 5:] * scores[..., None])


def test_am_flow_maps():
    bb = backbone()
    video, transforms = clip()
    model = build_model("amflow", bb, CLASSES, T, ModelSpec(), "static")
    maps = model.am_flow_maps(video)
    assert maps.shape == (B, T, S // 8, S // 8)
    torch.testing.assert_close(maps.mean(dim=(-2, -1)), torch.ones(B, T))   # normalise: mean
    still = video[:, :1].expand(-1, T, -1, -1, -1)
    torch.testing.assert_close(model.am_flow_maps(still), torch.ones(B, T, 4, 4))
    assert not torch.equal(model.am_flow_maps(video, block=0), model.am_flow_maps(video, block=1))
    fixed = build_model("amflow", bb, CLASSES, T, ModelSpec(am_flow=AmFlowSpec(source=1)), "aligned")
    assert fixed.am_flow_maps(video, transforms).shape == (B, T, 4, 4)
    with pytest.raises(AmflowError, match="no AM flow"):
        build_model("tpa", bb, CLASSES, T, ModelSpec(), "none").am_flow_maps(video)


def test_factory_validation():
    bb = backbone()
    with pytest.raises(AmflowError, match="unknown method"):
        build_model("vivit", bb, CLASSES, T, ModelSpec(), "none")
    with pytest.raises(AmflowError, match="resolved from the camera-motion"):
        build_model("amflow", bb, CLASSES, T, ModelSpec(), "auto")
    with pytest.raises(AmflowError, match="model.adapter.blocks"):
        build_model("tpa", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(blocks=[2])), "none")
    with pytest.raises(AmflowError, match="model.am_flow.source"):
        build_model("amflow", bb, CLASSES, T, ModelSpec(am_flow=AmFlowSpec(source=5)), "static")
    with pytest.raises(AmflowError, match="tpu_heads"):
        build_model("tpa", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(tpu_heads=5)), "none")
    with pytest.raises(AmflowError, match="tcn_kernel"):
        build_model("tpa", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(tpu="tcn", tcn_kernel=2)), "none")
    with pytest.raises(AmflowError, match="st_kernel"):
        build_model("st_adapter", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(st_kernel=(2, 1, 1))), "none")
    last = build_model("tpa", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(blocks=[-1])), "none")
    assert list(last.block_adapters) == ["1"]
    # amflow without a variant is the ungated TPA
    plain = build_model("amflow", bb, CLASSES, T, ModelSpec(), "none")
    assert plain.am_flow_spec is None and plain.param_counts() == build_model(
        "tpa", bb, CLASSES, T, ModelSpec(), "none").param_counts()


def vit_forward_flops(D: int, L: int, N: int, depth: int, patch: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one frame through a plain ViT: the count the test expects."""
    per_block = 2 * L * D * 3 * D + 2 * 2 * L * L * D + 2 * L * D * D + 2 * 2 * L * D * 4 * D
    return 2 * N * D * 3 * patch * patch + depth * per_block


def test_clip_gflops_counts_fused_attention_and_lstms():
    bb = backbone()
    L, N, D = 1 + 16, 16, 64
    frame = build_model("frame", bb, CLASSES, T, ModelSpec(), "none")
    expected = T * vit_forward_flops(D, L, N, 2, 8) + 2 * D * CLASSES
    assert clip_gflops(frame, T, S) * 1e9 == pytest.approx(expected, rel=1e-9)
    # AM flow blocks run the fused kernel plus, for the map, q k^T once more (2 L^2 D per frame, both blocks)
    tpa = build_model("tpa", bb, CLASSES, T, ModelSpec(), "none")
    amflow = clip_gflops(build_model("amflow", bb, CLASSES, T, ModelSpec(), "static"), T, S)
    assert (amflow - clip_gflops(tpa, T, S)) * 1e9 == pytest.approx(2 * T * (2 * L * L * D), rel=1e-9)
    # the LSTM kernel has no built-in formula: check ours against the weights' shapes
    r = 32
    lstm = clip_gflops(build_model("tpa", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(tpu="lstm")), "none"), T, S)
    none = clip_gflops(build_model("tpa", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(tpu="none")), "none"), T, S)
    per_block = 2 * L * T * (2 * (4 * r * r + 4 * r * r)) + 2 * L * T * 2 * r * r
    assert (lstm - none) * 1e9 == pytest.approx(2 * per_block, rel=1e-9)
    assert clip_gflops(build_model("amflow", bb, CLASSES, T, ModelSpec(), "aligned"), T, S) > clip_gflops(tpa, T, S)


def test_count_flops_sees_cpu_attention():
    q = torch.randn(1, 2, 10, 8)
    flops = count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert flops == 2 * (2 * 2 * 10 * 10 * 8)


def test_dinov2_shaped_backbone_end_to_end():
    torch.manual_seed(0)
    bb = build_backbone(BackboneSpec(model="vit_small_patch14_reg4_dinov2",
                                     kwargs=dict(img_size=56, embed_dim=64, depth=2, num_heads=2),
                                     weights="random"))
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, T, 3, 56, 56, generator=g)
    transforms = torch.eye(3).repeat(1, T - 1, 1, 1)
    transforms[..., 1, 2] = 7.0
    for method, variant in (("frame", "none"), ("aim", "none"), ("st_adapter", "none"), ("tpa", "none"),
                            ("amflow", "static"), ("amflow", "aligned")):
        model = build_model(method, bb, CLASSES, T, ModelSpec(), variant)
        torch.testing.assert_close(model.eval().features(video, transforms), reference_features(bb, video),
                                   atol=1e-5, rtol=0)
        model.train()(video, transforms).sum().backward()
        assert all(p.grad is None for p in bb.parameters())
        if method == "amflow":
            maps = model.am_flow_maps(video, transforms)
            assert maps.shape == (1, T, 4, 4) and torch.isfinite(maps).all()
        assert clip_gflops(model, T, 56) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ["aim", "st_adapter", "tpa_lstm", "amflow_static", "amflow_aligned"])
def test_bf16_autocast_matches_fp32(case):
    method, variant, spec = CASES[case]
    model = build_model(method, backbone(), CLASSES, T, spec, variant).cuda().train()
    randomise_trainable(model, seed=2, std=0.05)
    video, transforms = (t.cuda() for t in clip())
    target = torch.arange(B, device="cuda")

    def step(autocast: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(video, transforms)
        torch.nn.functional.cross_entropy(logits.float(), target).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        return logits.float(), grads

    logits32, grads32 = step(False)
    logits16, grads16 = step(True)
    torch.testing.assert_close(logits16, logits32, atol=5e-2, rtol=5e-2)
    cos = torch.nn.functional.cosine_similarity(grads16, grads32, dim=0)
    assert cos > 0.99, f"gradient direction under bf16 differs: cosine {cos.item():.4f}"


def test_lstm_unit_runs_in_float32_under_autocast():
    from amflow.models.tpu import LSTMTPU

    torch.manual_seed(0)
    unit = LSTMTPU(16)
    z = torch.randn(6, 8, 16)
    with torch.no_grad():
        ref = unit(z)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            seq_amp = unit.lstm(z)[0]                           # what autocast alone does to the recurrence
            out = unit(z)
    lstm_ref = unit.lstm(z)[0].detach()
    assert seq_amp.dtype == torch.bfloat16  # autocast alone would run the recurrence in half precision
    # the unit's recurrence is float32: only the (autocast) projection differs from the reference
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        expected = z + unit.proj(lstm_ref)
    torch.testing.assert_close(out.float(), expected.float(), atol=0, rtol=0)
    assert (out.float() - ref).abs().max() < 0.05
