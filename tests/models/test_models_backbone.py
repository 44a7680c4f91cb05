"""Backbone building, weights, freezing, and explicit attention == timm's fused attention."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
from safetensors.torch import save_file

from amflow.errors import AmflowError
from amflow.models.attention import attention_branch, attention_probs, explicit_attention, mlp_branch
from amflow.models.backbone import build_backbone, embed_frames, patch_grid
from amflow.params import BackboneSpec

torch.set_num_threads(1)

TINY = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2)


def spec(**kw) -> BackboneSpec:
    return BackboneSpec(**{"model": "vit_tiny_patch16_224", "kwargs": TINY, **kw})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_backbone_is_frozen_and_stays_in_eval():
    bb = build_backbone(spec(weights="random"))
    assert not any(p.requires_grad for p in bb.parameters())
    assert not bb.training
    assert bb.num_classes == 0


def test_pretrain_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    trained = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY)
    path = tmp_path / "backbone.safetensors"
    save_file(trained.state_dict(), str(path))
    bb = build_backbone(spec(weights="pretrain"), weights_path=path)
    assert same_weights(trained, bb)
    # a fresh random model differs, so the comparison above can fail
    assert not same_weights(trained, build_backbone(spec(weights="random")))


def test_pretrain_file_with_a_classifier_head_loads(tmp_path):
    trained = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, **TINY)
    path = tmp_path / "backbone.safetensors"
    save_file(trained.state_dict(), str(path))
    bb = build_backbone(spec(weights="pretrain"), weights_path=path)
    assert torch.equal(bb.pos_embed, trained.pos_embed)


def test_pretrain_missing_or_mismatched_file_names_it(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(AmflowError, match="nope.safetensors.*pretrain-backbone"):
        build_backbone(spec(weights="pretrain"), weights_path=missing)
    with pytest.raises(AmflowError, match="pretrain-backbone"):
        build_backbone(spec(weights="pretrain"), weights_path=None)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                              **{**TINY, "depth": 3})
    path = tmp_path / "deeper.safetensors"
    save_file(other.state_dict(), str(path))
    with pytest.raises(AmflowError, match="deeper.safetensors.*does not match"):
        build_backbone(spec(weights="pretrain"), weights_path=path)


def test_file_weights_go_through_pretrained_cfg_overlay(tmp_path):
    torch.manual_seed(2)
    trained = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY)
    path = tmp_path / "weights.safetensors"
    save_file(trained.state_dict(), str(path))
    bb = build_backbone(spec(weights="file", weights_file=str(path)))
    assert same_weights(trained, bb)
    assert not any(p.requires_grad for p in bb.parameters())


def test_file_weights_missing_names_the_file(tmp_path):
    with pytest.raises(AmflowError, match="missing.safetensors.*not found"):
        build_backbone(spec(weights="file", weights_file=str(tmp_path / "missing.safetensors")))


def test_hub_offline_gives_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(AmflowError, match="vit_tiny_patch16_224.*weights: file"):
        build_backbone(spec(weights="hub"))


def test_bad_kwargs_and_unsupported_models_are_user_errors():
    with pytest.raises(AmflowError, match="backbone.kwargs"):
        build_backbone(spec(weights="random", kwargs={**TINY, "embed_dim": 65}))
    with pytest.raises(AmflowError, match="CLS token"):
        build_backbone(spec(weights="random", kwargs={**TINY, "class_token": False, "global_pool": "avg"}))
    with pytest.raises(AmflowError, match="not a timm model name"):
        build_backbone(BackboneSpec(model="vit_tinyy_patch16_224", kwargs={}, weights="hub"))
    with pytest.raises(AmflowError, match="not a timm VisionTransformer"):
        build_backbone(BackboneSpec(model="resnet18", kwargs={}, weights="random"))


def test_embed_frames_then_the_blocks_is_timms_forward_features():
    # embed_frames calls timm's private VisionTransformer._pos_embed: this pins it to timm's own path.
    torch.manual_seed(0)
    bb = build_backbone(spec(weights="random", kwargs={**TINY, "reg_tokens": 2}))
    frames = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = bb.norm(bb.blocks(embed_frames(bb, frames)))
        assert ours.shape == (2, 1 + 2 + 8 * 8, 64)
        assert torch.equal(ours, bb.forward_features(frames))


@pytest.mark.parametrize("kwargs", [
    TINY,
    dict(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=2, qk_norm=True),
])
def test_explicit_attention_matches_fused_block(kwargs):
    torch.manual_seed(0)
    bb = build_backbone(spec(weights="random", kwargs=kwargs))
    blk = bb.blocks[1]
    assert blk.attn.fused_attn, "the reference must be timm's fused kernel"
    if kwargs.get("qk_norm"):  # make q/k norms non-trivial so skipping them would show
        torch.nn.init.normal_(blk.attn.q_norm.weight, 1.0, 0.5)
        torch.nn.init.normal_(blk.attn.k_norm.bias, 0.0, 0.5)
    frames = torch.randn(3, 3, kwargs["img_size"], kwargs["img_size"])
    x = bb.blocks[0](embed_frames(bb, frames))
    with torch.no_grad():
        fused = blk(x)
        update, patch_map = attention_branch(blk, x, bb.num_prefix_tokens, need_map=True)
        explicit = x + update
        explicit = explicit + mlp_branch(blk, explicit)
        _, probs = explicit_attention(blk.attn, blk.norm1(x))
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    h, w = patch_grid(bb, kwargs["img_size"], kwargs["img_size"])
    assert patch_map.shape == (3, h * w, h * w)
    # full rows are distributions; the patch part drops the CLS column, so rows sum below 1
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert (patch_map.sum(-1) < 1).all() and (patch_map >= 0).all()


def test_dinov2_shaped_backbone_builds():
    kw = dict(img_size=56, embed_dim=64, depth=2, num_heads=2)
    bb = build_backbone(BackboneSpec(model="vit_small_patch14_reg4_dinov2", kwargs=kw, weights="random"))
    assert bb.num_prefix_tokens == 5 and bb.no_embed_class
    assert patch_grid(bb, 56, 56) == (4, 4)
    tokens = embed_frames(bb, torch.randn(2, 3, 56, 56))
    assert tokens.shape == (2, 5 + 16, 64)


def _stepwise_attention(attn, x):
    """The step-by-step attention the AM flow blocks used before the fused kernel (independent reference)."""
    B, L, _ = x.shape
    qkv = attn.qkv(x).reshape(B, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(B, L, attn.attn_dim)
    return attn.proj(attn.norm(out)), probs


def test_map_blocks_keep_no_attention_matrix_for_backward_and_match_the_stepwise_version():
    torch.manual_seed(0)
    kw = dict(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=2, qk_norm=True)
    bb = build_backbone(spec(weights="random", kwargs=kw))
    blk = bb.blocks[1]
    torch.nn.init.normal_(blk.attn.q_norm.weight, 1.0, 0.5)
    x = bb.blocks[0](embed_frames(bb, torch.randn(3, 3, 56, 56))).detach().requires_grad_(True)
    L = x.shape[1]
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, probs = explicit_attention(blk.attn, blk.norm1(x))
    assert not any(len(s) >= 2 and s[-2:] == (L, L) for s in saved), saved  # no [.., L, L] kept for backward
    assert not probs.requires_grad and probs.dtype == torch.float32
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        ref_out, ref_probs = _stepwise_attention(blk.attn, blk.norm1(x))
    torch.testing.assert_close(out.detach(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-5)
    # Under bf16 autocast the probabilities still come from float32 logits of the (bf16) q and k.
    q, k = (torch.randn(2, 2, L, 32) * 3).bfloat16().unbind(0)
    exact = ((q.double() * 32 ** -0.5) @ k.double().transpose(-2, -1)).softmax(-1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        probs_amp = attention_probs(q, k, 32 ** -0.5)
        probs_bf16 = ((q * 32 ** -0.5) @ k.transpose(-2, -1)).softmax(-1)  # what autocast alone would give
    assert probs_amp.dtype == torch.float32
    err_fp32 = (probs_amp.double() - exact).abs().max().item()
    err_bf16 = (probs_bf16.double() - exact).abs().max().item()
    assert err_fp32 < 1e-5 < err_bf16, (err_fp32, err_bf16)
