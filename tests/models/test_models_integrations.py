"""How AM flow enters the adapter or the head (model.am_flow.integration) and the score controls
(model.am_flow.control).

Every integration but ``gate`` starts at zero: an untrained ``amflow`` equals ``tpa`` built from the same
seed, and both equal the frozen backbone. Once its zero-initialised parameters move, the adapter's
output (the head's logits for ``pool``) depends on the scores, for every TPU.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from amflow.errors import AmflowError
from amflow.models import build_backbone, build_model
from amflow.models.adapters import TemporalProcessingAdapter
from amflow.models.integrations import INTEGRATIONS
from amflow.models.integrations.attn_bias import attention_bias
from amflow.models.integrations.channels import score_features
from amflow.models.am_flow import coverage_scores, warp_to_previous
from amflow.models.context import ClipContext
from amflow.params import AdapterSpec, AmFlowSpec, BackboneSpec, ModelSpec

torch.set_num_threads(1)

S, T, B, CLASSES = 32, 4, 2, 5
KW = dict(img_size=S, patch_size=8, embed_dim=64, depth=2, num_heads=2)
TPUS = ("transformer", "tcn", "lstm", "none")
COMBOS = [(i, t) for i in INTEGRATIONS.names() for t in TPUS if i != "attn_bias" or t == "transformer"]
ADAPTER_COMBOS = [(i, t) for i, t in COMBOS if i != "pool"]   # 'pool' acts in the head, not the adapter


def backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(BackboneSpec(model="vit_tiny_patch16_224", kwargs=KW, weights="random"))


def spec(tpu: str, integration: str = "gate", control: str = "none", **flow) -> ModelSpec:
    return ModelSpec(adapter=AdapterSpec(tpu=tpu),
                     am_flow=AmFlowSpec(integration=integration, control=control, **flow))


def moving_clip(seed: int = 0):
    """Still background, one 8 px block of noise changing every frame: a peaked AM flow."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, 1, 3, S, S, generator=g).expand(-1, T, -1, -1, -1).clone()
    video[:, :, :, 8:16, 16:24] = torch.randn(B, T, 3, 8, 8, generator=g)
    return video


def perturb(params, seed: int, std: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def integration_params(model) -> list:
    return [p for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1] in ("score_bias", "score_in", "score_gate", "score_pool")]


@pytest.mark.parametrize("integration,tpu", COMBOS)
def test_untrained_amflow_equals_tpa_and_the_frozen_backbone(integration, tpu):
    bb = backbone()
    torch.manual_seed(1)
    tpa = build_model("tpa", bb, CLASSES, T, spec(tpu), "none").eval()
    torch.manual_seed(1)
    amflow = build_model("amflow", bb, CLASSES, T, spec(tpu, integration), "static").eval()
    video = moving_clip()
    with torch.no_grad():
        frozen = bb.forward_features(video.flatten(0, 1))[:, 0].view(B, T, -1).mean(1)
        torch.testing.assert_close(amflow.features(video), frozen, atol=1e-5, rtol=0)
    if integration == "gate":
        return      # the gate is a fixed scale, not a zero-initialised path: it differs from tpa once trained
    # The same trained TPA weights (up-projection no longer zero): the integration still adds nothing.
    perturb([p for p in tpa.parameters() if p.requires_grad], seed=2)
    missing, unexpected = amflow.load_state_dict(tpa.state_dict(), strict=False)
    assert not unexpected and missing and all(k.rsplit(".", 1)[-1].startswith("score_") for k in missing)
    assert all(torch.count_nonzero(p) == 0 for p in integration_params(amflow))
    with torch.no_grad():
        torch.testing.assert_close(amflow(video), tpa(video), atol=1e-6, rtol=0)
        # ... and is sensitive once its own parameters move
        perturb(integration_params(amflow), seed=3, std=3.0)
        assert (amflow(video) - tpa(video)).abs().max() > 1e-4   # 100x the tolerance above


@pytest.mark.parametrize("tpu", TPUS)
def test_pooled_logits_depend_on_where_the_scores_point(tpu):
    """The head's pooled path weights patch tokens by the scores: two coverage maps with the same values
    on different patches give different logits, and uniform scores give the plain patch mean."""
    torch.manual_seed(1)
    model = build_model("amflow", backbone(), CLASSES, T, spec(tpu, "pool", "oracle"), "static").eval()
    perturb([model.score_pool], seed=6, std=1.0)
    video = moving_clip()
    left, right = torch.zeros(B, T, S, S), torch.zeros(B, T, S, S)
    left[..., 0:8, 0:8], right[..., 24:32, 24:32] = 1.0, 1.0
    with torch.no_grad():
        a, b = model(video, coverage=left), model(video, coverage=right)
        assert (a - b).abs().max() > 1e-3
        uniform = torch.ones(B, T, S, S)     # every patch fully covered: equal weights
        cls = model.features(video, coverage=uniform)
        tokens = {}
        handle = model.backbone.norm.register_forward_hook(lambda m, i, o: tokens.update(x=o))
        logits = model(video, coverage=uniform)
        handle.remove()
        patch_mean = tokens["x"][:, 1:].mean(dim=1).view(B, T, -1).mean(dim=1)
        torch.testing.assert_close(logits, model.head(cls) + patch_mean @ model.score_pool.t(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("integration,tpu", ADAPTER_COMBOS)
def test_adapter_output_depends_on_the_scores(integration, tpu):
    torch.manual_seed(0)
    adapter = TemporalProcessingAdapter(24, AdapterSpec(tpu=tpu, bottleneck=8, tpu_heads=2), T, integration)
    perturb(adapter.parameters(), seed=4)
    ctx = ClipContext(batch=B, frames=T, num_prefix=1, grid=(3, 3), flow=AmFlowSpec())
    x = torch.randn(B * T, 1 + 9, 24)
    g = torch.Generator().manual_seed(5)
    first, second = torch.rand(B * T, 9, generator=g) * 2, torch.rand(B * T, 9, generator=g) * 2
    with torch.no_grad():
        a, b = adapter(x, ctx, first), adapter(x, ctx, second)
        assert (a - b).abs().max() > 1e-3
        assert not torch.equal(adapter(x, ctx, None), a)


@pytest.mark.parametrize("integration", [i for i in INTEGRATIONS.names() if i != "gate"])
def test_zero_initialised_integrations_learn(integration):
    model = build_model("amflow", backbone(), CLASSES, T, spec("transformer", integration), "static").train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    video = moving_clip()
    for _ in range(3):   # the up-projection starts at zero: gradients reach the integration from step 2
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(video), torch.arange(B)).backward()
        opt.step()
    # Block 0 only: in the last block only the CLS token reaches the head, and the TPU keeps token
    # positions apart, so what the scores do to the last block's patch tokens cannot matter. 'pool'
    # has its one weight in the head.
    first = [p for n, p in model.named_parameters() if (n.startswith("block_adapters.0.") or n == "score_pool")
             and p in set(integration_params(model))]
    assert first and all(torch.count_nonzero(p) > 0 for p in first)
    norms = model.integration_norms()      # what the trainer logs per epoch
    expected = {n: float(torch.linalg.vector_norm(p.detach())) for n, p in model.named_parameters()
                if p in set(integration_params(model))}
    assert norms.keys() == expected.keys() and all(abs(norms[k] - expected[k]) < 1e-6 for k in norms)


def test_attention_bias_needs_the_transformer_tpu():
    with pytest.raises(AmflowError, match="attn_bias.*tpu: transformer"):
        build_model("amflow", backbone(), CLASSES, T, spec("tcn", "attn_bias"), "static")


def test_attention_bias_moves_attention_towards_high_score_frames():
    """A large bias on one frame's score: every query attends to that frame only, so the TPU's
    attention output at every time step is (nearly) that frame's value vector."""
    torch.manual_seed(0)
    adapter = TemporalProcessingAdapter(16, AdapterSpec(bottleneck=8, tpu_heads=2), T, "attn_bias")
    ctx = ClipContext(batch=1, frames=T, num_prefix=0, grid=(1, 1), flow=AmFlowSpec())
    scores = torch.zeros(T, 1)
    scores[2] = 1.0
    with torch.no_grad():
        adapter.score_bias.fill_(100.0)
        bias = attention_bias(adapter.score_bias, scores, ctx)
        assert bias.shape == (2, T, T) and torch.equal(bias[:, :, 2], torch.full((2, T), 100.0))
        layer = adapter.tpu.layer
        seq = torch.randn(1, T, 8)
        h = layer.norm1(seq + adapter.tpu.temporal_pos)
        _, weights = layer.self_attn(h, h, h, attn_mask=bias, need_weights=True)
    torch.testing.assert_close(weights[0, :, 2], torch.ones(T), atol=1e-4, rtol=0)


def test_score_features_by_hand():
    scores = torch.arange(2 * 9, dtype=torch.float32).view(2, 9)   # one clip of 2 frames, 3x3 grid
    feats = score_features(scores, frames=2, grid=(3, 3))
    assert feats.shape == (2, 9, 10)
    assert torch.equal(feats[..., 0], scores)
    assert torch.equal(feats[0, :, 1], torch.zeros(9)) and torch.equal(feats[1, :, 1], torch.full((9,), 9.0))
    # centre patch 4 of frame 0: neighbours 0,1,2,3,5,6,7,8; corner patch 0: edges replicated
    assert feats[0, 4, 2:].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert feats[0, 0, 2:].tolist() == [0, 0, 1, 0, 1, 3, 3, 4]


# --------------------------------------------------------------------------- controls
def test_shuffled_control_permutes_each_frame_and_keeps_its_values():
    bb = backbone()
    video = moving_clip()
    plain = build_model("amflow", bb, CLASSES, T, spec("transformer"), "static")
    shuffled = build_model("amflow", bb, CLASSES, T, spec("transformer", control="shuffled"), "static")
    torch.manual_seed(0)
    a, b = plain.am_flow_maps(video, block=1).flatten(2), shuffled.am_flow_maps(video, block=1).flatten(2)
    torch.testing.assert_close(a.sort(-1).values, b.sort(-1).values)
    assert not torch.equal(a, b)
    # the moving block (patch row 1, column 2) no longer carries the peak in every frame
    assert (a.argmax(-1) == 6).all() and not (b.argmax(-1) == 6).all()


def test_oracle_control_uses_the_coverage_normalised_like_the_scores():
    bb = backbone()
    video = moving_clip()
    coverage = torch.zeros(B, T, S, S)
    coverage[:, :, 8:16, 16:24] = 1.0          # patch 6 fully covered
    coverage[:, :, 0:4, 0:8] = 1.0             # patch 0 half covered
    coverage[:, -1] = 0.0                      # the actor has left in the last frame
    model = build_model("amflow", bb, CLASSES, T, spec("tcn", control="oracle"), "aligned")
    record = {}
    model.features(video, record=record, coverage=coverage)   # aligned, yet no transforms needed
    expected = torch.zeros(16)
    expected[6], expected[0] = 16 / 1.5, 0.5 * 16 / 1.5         # mean 1 over the 16 patches
    for scores in record.values():
        s = scores.view(B, T, 16)
        torch.testing.assert_close(s[:, :-1], expected.expand(B, T - 1, 16))
        torch.testing.assert_close(s[:, -1], torch.ones(B, 16))   # no actor: neutral
    torch.testing.assert_close(coverage_scores(coverage.flatten(0, 1), (8, 8), "max")[0], expected / expected.max())
    with pytest.raises(AmflowError, match="ground-truth coverage"):
        model(video)


def test_footprint_control_gives_every_frame_the_clips_mean_coverage():
    bb = backbone()
    video = moving_clip()
    coverage = torch.zeros(B, T, S, S)
    for t in range(T):                        # the actor crosses patch row 0 left to right: patch t in frame t
        coverage[:, t, 0:8, 8 * t:8 * t + 8] = 1.0
    model = build_model("amflow", bb, CLASSES, T, spec("transformer", "pool", "footprint"), "static")
    record = {}
    model.features(video, record=record, coverage=coverage)
    expected = torch.zeros(16)
    expected[:4] = 4.0                        # a quarter of the clip on each of 4 patches, mean 1 over 16
    for scores in record.values():
        torch.testing.assert_close(scores.view(B, T, 16), expected.expand(B, T, 16))


def test_rank_matched_control_keeps_am_flows_values_and_ranks_them_by_coverage():
    bb = backbone()
    video = moving_clip()
    coverage = torch.zeros(B, T, S, S)
    coverage[:, :, 24:32, 0:8] = 1.0          # the actor fills patch 12; AM flow peaks on patch 6
    coverage[:, :, 24:32, 8:12] = 1.0         # ... and half of patch 13
    plain = build_model("amflow", bb, CLASSES, T, spec("transformer"), "static")
    ranked = build_model("amflow", bb, CLASSES, T, spec("transformer", control="rank_matched"), "static")
    a = plain.am_flow_maps(video, block=1).flatten(2)
    record = {}
    ranked.features(video, record=record, coverage=coverage)
    b = record[1].view(B, T, 16)
    torch.testing.assert_close(b.sort(-1).values, a.sort(-1).values)         # the same multiset per frame
    values = a.sort(-1, descending=True).values
    torch.testing.assert_close(b[..., 12], values[..., 0])                   # the largest on the actor
    torch.testing.assert_close(b[..., 13], values[..., 1])                   # the next on its other patch
    rest = [p for p in range(16) if p not in (12, 13)]                      # the others in AM flow's order
    assert torch.equal(b[..., rest].argsort(dim=-1, descending=True, stable=True),
                       a[..., rest].argsort(dim=-1, descending=True, stable=True))
    with pytest.raises(AmflowError, match="ground-truth coverage"):
        ranked(video)


def test_uniform_control_needs_no_coverage_and_gives_ones():
    model = build_model("amflow", backbone(), CLASSES, T, spec("lstm", "gate", "uniform"), "aligned")
    record = {}
    model.features(moving_clip(), record=record)     # aligned, yet no transforms: nothing is computed
    assert record and all(torch.equal(s, torch.ones_like(s)) for s in record.values())


# --------------------------------------------------------------------------- pixel warp
@pytest.mark.parametrize("alignment", ["warp", "warp_fill"])
def test_pixel_warp_with_identity_transforms_is_the_static_flow(alignment):
    bb = backbone()
    video = moving_clip()
    identity = torch.eye(3).repeat(B, T - 1, 1, 1)
    static = build_model("amflow", bb, CLASSES, T, spec("transformer"), "static")
    warp = build_model("amflow", bb, CLASSES, T, spec("transformer", alignment=alignment), "aligned")
    for block in (0, 1):
        torch.testing.assert_close(warp.am_flow_maps(video, identity, block=block),
                                   static.am_flow_maps(video, block=block), atol=1e-4, rtol=1e-4)


def test_warp_to_previous_undoes_an_integer_pan_and_marks_the_entering_border():
    g = torch.Generator().manual_seed(0)
    scene = torch.rand(1, 3, S, S + 3 * T, generator=g)
    video = torch.stack([scene[..., 3 * t: 3 * t + S] for t in range(T)], dim=1)   # camera pans 3 px right
    H = torch.eye(3).repeat(1, T - 1, 1, 1)
    H[..., 0, 2] = -3.0                     # frame t pixel x shows what frame t+1 shows at x - 3
    warped, covered = warp_to_previous(video, H)
    assert covered[..., :, :3].logical_not().all() and covered[..., :, 3:].all()
    torch.testing.assert_close(warped[..., 3:], video[:, :-1, ..., 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(warped[..., :3], video[:, :-1, ..., :3])   # uncovered: frame t itself
    # The paddings the compensation measurements compare instead: frame t+1's border column, or 0.
    border, _ = warp_to_previous(video, H, fill="border")
    torch.testing.assert_close(border[..., :3], video[:, 1:, ..., :1].expand(-1, -1, -1, -1, 3), atol=1e-5, rtol=0)
    zeros, _ = warp_to_previous(video, H, fill="zeros")
    assert zeros[..., :2].abs().max() == 0 and torch.equal(zeros[..., 3:], warped[..., 3:])
    with pytest.raises(ValueError, match="fill"):
        warp_to_previous(video, H, fill="mirror")


def test_warp_fill_scores_the_border_patches_that_warp_leaves_out():
    """A pan of 3 px/frame over a still texture, and an 8 px block of fresh noise every frame in the
    patch at row 1, column 0 of the frame. The pan uncovers a 3 px strip of column 0 in every pair:
    ``warp`` leaves that column out (neutral score 1 for all of it), ``warp_fill`` scores it. Frame
    t+1's block lands 3 px to the right once warped into frame t, so the block's patch and its right
    neighbour change: under ``warp_fill`` they get the two highest scores."""
    bb = backbone()
    g = torch.Generator().manual_seed(1)
    scene = torch.rand(B, 3, S, S + 3 * T, generator=g)
    video = torch.stack([scene[..., 3 * t: 3 * t + S] for t in range(T)], dim=1)
    video[:, :, :, 8:16, 0:8] = torch.randn(B, T, 3, 8, 8, generator=g)
    H = torch.eye(3).repeat(B, T - 1, 1, 1)
    H[..., 0, 2] = -3.0
    models = {a: build_model("amflow", bb, CLASSES, T, spec("transformer", alignment=a), "aligned")
              for a in ("warp", "warp_fill")}
    for block in (0, 1):
        maps = {a: m.am_flow_maps(video, H, block=block)[:, :-1] for a, m in models.items()}  # [B, T-1, 4, 4]
        # neutral before the per-frame normalisation: 1 up to the frame's mean, which is ~1
        torch.testing.assert_close(maps["warp"][..., 0], torch.ones_like(maps["warp"][..., 0]), atol=0.02, rtol=0)
        fill = maps["warp_fill"].flatten(-2)
        top2 = fill.topk(2, dim=-1).indices.sort(dim=-1).values
        assert (top2 == torch.tensor([4, 5])).all(), fill           # patches (1, 0) and (1, 1)
        assert fill[..., 4].mean() > 2                                # warp: 1, left out


def test_pixel_warp_scores_of_a_fixed_source_block_are_recorded_and_need_transforms():
    bb = backbone()
    video = moving_clip()
    H = torch.eye(3).repeat(B, T - 1, 1, 1)
    H[..., 0, 2] = 1.5                                        # a sub-pixel pan
    model = build_model("amflow", bb, CLASSES, T, ModelSpec(adapter=AdapterSpec(blocks=[0]), am_flow=AmFlowSpec(
        alignment="warp", source=1)), "aligned")
    maps = model.am_flow_maps(video, H)                       # the fixed source block, 1
    from amflow.models.frozen_flow import frozen_scores

    expected = frozen_scores(bb, video, H, model.am_flow_spec, "warp", [1])[1]
    torch.testing.assert_close(maps.flatten(2), expected)
    with pytest.raises(AmflowError, match="camera transforms"):
        model(video)


def test_flops_of_an_oracle_model_count_the_same_network_as_gate():
    """Training counts GFLOPs before it starts: an oracle model gets an empty coverage there, and its
    network is the gate model's, whose scores come from the attention maps instead."""
    from amflow.models import build_backbone, build_model
    from amflow.models.flops import clip_gflops
    from amflow.params import AmFlowSpec, BackboneSpec, ModelSpec

    bb = BackboneSpec(model="vit_tiny_patch16_224", weights="random",
                      kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))
    oracle = build_model("amflow", build_backbone(bb), 3, 4, ModelSpec(am_flow=AmFlowSpec(control="oracle")), "static")
    gate = build_model("amflow", build_backbone(bb), 3, 4, ModelSpec(), "static")
    assert 0 < clip_gflops(oracle, 4, 32) < clip_gflops(gate, 4, 32)  # no attention-map scores to compute
