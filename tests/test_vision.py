"""oats.models.vision: the one place that says what kind of ViT a model is, its patch size,
its tokens per image and its input normalisation, checked on tiny models of each kind."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from oats.compress.preflight import calibration_tokens
from oats.errors import UnsupportedModelError
from oats.models import vision
from oats.models.adapters import get_adapter


def _hf_vit():
    return transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64), add_pooling_layer=False).eval()


def _dinov2_registers():
    return transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
        image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_register_tokens=4)).eval()


def _timm_vit(**kw):
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                             embed_dim=32, num_heads=2, num_classes=0, **kw).eval()


def test_kinds_of_vit():
    hf, timm_vit = _hf_vit(), _timm_vit()
    assert vision.is_hf_vit(hf) and not vision.is_timm(hf) and not vision.is_timm_vit(hf)
    assert vision.is_timm(timm_vit) and vision.is_timm_vit(timm_vit) and not vision.is_hf_vit(timm_vit)
    assert not vision.is_timm_vit(nn.Linear(2, 2)) and not vision.is_hf_vit(nn.Linear(2, 2))
    assert get_adapter(timm_vit).family == "timm-vit"  # the adapter asks the same question


def test_patch_size_prefix_tokens_and_tokens_per_image():
    hf, regs, timm_vit, timm_regs = _hf_vit(), _dinov2_registers(), _timm_vit(), _timm_vit(reg_tokens=2)
    assert vision.patch_size(hf) == (8, 8) and vision.prefix_tokens(hf) == 1
    assert vision.image_tokens(hf, 32, 32) == 16 + 1
    assert vision.patch_size(regs) == (14, 14) and vision.prefix_tokens(regs) == 1 + 4
    assert vision.image_tokens(regs, 28, 28) == 4 + 5
    assert vision.patch_size(timm_vit) == (8, 8) and vision.prefix_tokens(timm_vit) == 1
    assert vision.prefix_tokens(timm_regs) == 3 and vision.image_tokens(timm_regs, 32, 32) == 16 + 3
    # the count matches the model's own sequence length
    with torch.no_grad():
        assert timm_regs.forward_features(torch.zeros(1, 3, 32, 32)).shape[1] == 19
        assert regs(pixel_values=torch.zeros(1, 3, 28, 28)).last_hidden_state.shape[1] == 9
    with pytest.raises(UnsupportedModelError):
        vision.patch_size(nn.Linear(2, 2))
    assert vision.patch_size(nn.Linear(2, 2), default=16) == (16, 16)


def test_calibration_tokens_use_the_models_patches():
    px = {"pixel_values": torch.zeros(3, 3, 32, 32)}
    assert calibration_tokens([px, px], _timm_vit(reg_tokens=2)) == 2 * 3 * (16 + 3)
    assert calibration_tokens([px], _hf_vit()) == 3 * 17
    assert calibration_tokens([{"input_ids": torch.zeros(2, 5, dtype=torch.long)}], _hf_vit()) == 10


def test_own_image_settings():
    size, mean, std = vision.own_image_settings(_hf_vit())
    assert (size, mean, std) == (32, vision.IMAGENET_MEAN, vision.IMAGENET_STD)
    size, mean, std = vision.own_image_settings(_timm_vit())
    assert size == 224 and mean == pytest.approx((0.5, 0.5, 0.5)) and std == pytest.approx((0.5, 0.5, 0.5))
