"""The frozen image backbone: any timm ``VisionTransformer`` built from a :class:`~amflow.models.config.BackboneConfig` (docs/design.md 2.6).

The model is always ``timm.create_model(spec.model, pretrained=False, num_classes=0, **spec.kwargs)``
(the same call the pretrain stage uses, so a saved ``state_dict()`` fits it key for key); weights
come from one of four sources (``spec.weights``). Every parameter is frozen and the model is kept in
eval mode, so dropout and drop-path of the backbone are off whatever the caller does.

Besides building, this module knows how a frame enters the ViT (:func:`embed_frames`) and checks
that the blocks are the pre-norm timm ``Block`` with the standard ``Attention`` whose maps
:mod:`amflow.models.attention` recomputes explicitly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import timm
import torch
from safetensors.torch import load_file
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from amflow.errors import AmflowError
from amflow.models.config import BackboneConfig, plain


def _create(spec: BackboneConfig, **extra) -> nn.Module:
    return timm.create_model(spec.model, num_classes=0, **spec.kwargs, **extra)


def _load_pretrain_file(model: nn.Module, spec: BackboneConfig, weights_path: Optional[Path]) -> None:
    """Load the pipeline-pretrained ``state_dict`` (safetensors) of this very timm model."""
    if weights_path is None:
        raise AmflowError(
            "backbone.weights: pretrain needs the pretrained backbone file (results/<name>/backbone/"
            "backbone.safetensors); run `amflow pretrain-backbone` first, or set backbone.weights "
            "to hub, file or random")
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise AmflowError(
            f"{weights_path}: pretrained backbone not found (backbone.weights: pretrain); run "
            f"`amflow pretrain-backbone` to create it")
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise AmflowError(f"{weights_path}: not a readable safetensors file ({exc}); "
                          f"delete it and run `amflow pretrain-backbone` again") from exc
    # The pretrain stage may have trained a classifier head; the backbone here has none.
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AmflowError(
            f"{weights_path}: does not match backbone '{spec.model}' with kwargs {spec.kwargs} "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); the params' "
            f"backbone section must equal the one the backbone was pretrained with, or re-run "
            f"`amflow pretrain-backbone`")


def build_backbone(spec: BackboneConfig, weights_path: Optional[Path] = None) -> nn.Module:
    """The frozen timm ViT of ``spec`` (a :class:`BackboneConfig` or an object with its fields, such as the
    params' ``backbone``) with its weights; see the module docstring."""
    spec = plain(BackboneConfig, spec)
    if not timm.is_model(spec.model):
        raise AmflowError(f"backbone.model: '{spec.model}' is not a timm model name "
                          f"(see timm.list_models('vit_*'))")
    if spec.weights == "hub":
        try:
            model = _create(spec, pretrained=True)
        except Exception as exc:  # offline hub, unknown tag, missing cache: all user-fixable here
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise AmflowError(
                f"backbone.weights: hub: could not get pretrained weights for '{spec.model}'"
                f"{offline}: {exc}. Download them on a machine with internet and set "
                f"backbone.weights: file with backbone.weights_file: <path to the .safetensors/.bin>") from exc
    elif spec.weights == "file":
        path = Path(weights_path or spec.weights_file or "")  # weights_path: the same file found elsewhere
        if not path.is_file():
            raise AmflowError(f"backbone.weights_file: '{path}' not found; point it at the weights "
                              f"file of '{spec.model}' (safetensors or a torch checkpoint)")
        try:
            model = _create(spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        except Exception as exc:
            raise AmflowError(f"backbone.weights_file: '{path}' could not be loaded into "
                              f"'{spec.model}' with kwargs {spec.kwargs}: {exc}") from exc
    else:
        try:
            model = _create(spec, pretrained=False)
        except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as exc:
            raise AmflowError(f"params backbone.model / backbone.kwargs: timm cannot build "
                              f"'{spec.model}' with kwargs {spec.kwargs}: {exc}") from exc
        if spec.weights == "pretrain":
            _load_pretrain_file(model, spec, weights_path)
    check_backbone(model)
    freeze(model)
    return model


def freeze(backbone: nn.Module) -> nn.Module:
    """No gradients into the backbone, and eval mode (its dropout / drop-path stay off)."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.eval()
    return backbone


def check_backbone(backbone: nn.Module) -> None:
    """The wrapper needs a timm ViT with a CLS token and pre-norm blocks using timm's ``Attention``."""
    name = type(backbone).__name__
    if not isinstance(backbone, VisionTransformer):
        raise AmflowError(f"backbone.model: {name} is not a timm VisionTransformer; choose a vit_* model")
    if backbone.cls_token is None:
        raise AmflowError("backbone.kwargs: the model has no CLS token (class_token=False); "
                          "the video head reads the CLS token, so keep class_token=True")
    for i, blk in enumerate(backbone.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise AmflowError(
                f"backbone.model: block {i} is {type(blk).__name__} with {type(blk.attn).__name__}; "
                f"AM flow needs timm's pre-norm Block with the standard Attention (vit_*, deit3_*, "
                f"*_dinov2 models); pick such a model")


def num_prefix_tokens(backbone: nn.Module) -> int:
    """CLS plus register tokens: the tokens before the patch tokens."""
    return int(backbone.num_prefix_tokens)


def patch_size(backbone: nn.Module) -> tuple[int, int]:
    ph, pw = backbone.patch_embed.patch_size
    return int(ph), int(pw)


def patch_grid(backbone: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Patch rows and columns for a frame of ``height`` x ``width`` pixels."""
    ph, pw = patch_size(backbone)
    return height // ph, width // pw


def embed_frames(backbone: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Frames ``[N, 3, H, W]`` -> tokens ``[N, prefix + h*w, D]``: timm's own steps before the blocks."""
    x = backbone.patch_embed(frames)
    # The one private timm call: VisionTransformer has no public step between patch embedding and
    # the blocks (forward_features runs the blocks too). timm is pinned in pyproject.toml, and
    # tests/models/test_models_backbone.py checks that these steps and the blocks give forward_features.
    x = backbone._pos_embed(x)
    x = backbone.patch_drop(x)
    return backbone.norm_pre(x)


def frame_cls_features(backbone: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Reference per-frame features of the plain frozen backbone: final-norm CLS, ``[N, D]``."""
    return backbone.forward_features(frames)[:, 0]
