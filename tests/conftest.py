"""Shared fixtures: tiny models built in the test, small generated audio."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from musicssl.interop.huggingface import export_pretrained
from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig, backbone_preset

# Smaller than the `tiny` preset: enough to exercise every code path in milliseconds.
MICRO = dict(conv_layers=((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2,
             dim=32, ffn_dim=64, num_layers=2, num_heads=4, pos_conv_groups=4)


def micro_config(variant: str = "hubert", **changes) -> BackboneConfig:
    base = backbone_preset("base", variant)
    kernel = {"hubert": 16, "data2vec": 5}[variant]
    depth = {"hubert": 1, "data2vec": 3}[variant]
    return dataclasses.replace(base, **MICRO, pos_conv_kernel=kernel, pos_conv_depth=depth, **changes)


def perturb_(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    """Add noise to every parameter, so that zero biases and unit norms cannot hide a mapping bug."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def micro_backbone(variant: str = "hubert", seed: int = 0, **changes) -> Backbone:
    torch.manual_seed(seed)
    backbone = Backbone(micro_config(variant, **changes))
    perturb_(backbone, seed=seed)
    return backbone.eval()


@pytest.fixture(params=["hubert", "data2vec"])
def variant(request) -> str:
    return request.param


@pytest.fixture
def model_dir(tmp_path, variant):
    return export_pretrained(micro_backbone(variant), tmp_path / f"micro_{variant}")


def tone(seconds: float, sample_rate: int = 16_000, frequency: float = 440.0, channels: int = 1,
         seed: int = 0) -> np.ndarray:
    """A tone with a little noise: (N,) or (N, C) as soundfile writes it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wav = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.01 * rng.standard_normal(t.size)
    return wav.astype(np.float32) if channels == 1 else np.stack([wav] * channels, axis=1).astype(np.float32)


def write_tone(path, seconds: float, sample_rate: int = 16_000, **kwargs):
    sf.write(str(path), tone(seconds, sample_rate, **kwargs), sample_rate)
    return path
