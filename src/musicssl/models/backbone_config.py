"""The backbone's configuration (`BackboneConfig`) and its named presets: the paper's 95M
``base`` models of both variants, and ``tiny`` versions of the same topology for CPU tests and
the demo. The model itself is in backbone.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from musicssl.config import Registry

# (channels, kernel, stride) of the 7 conv layers: total stride 320 (20 ms at 16 kHz),
# receptive field 400 samples (25 ms). fairseq `conv_feature_layers` of both base recipes.
BASE_CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class BackboneConfig:
    """Every architecture hyper-parameter of the backbone. Defaults are HuBERT base (docs/method.md §1)."""

    variant: str = "hubert"  # "hubert" (weight-normed pos conv) | "data2vec" (stacked LN pos convs)
    extractor_norm: str = "group"  # fairseq extractor_mode: "group" (default) | "layer" (layer_norm)
    conv_layers: tuple[tuple[int, int, int], ...] = BASE_CONV_LAYERS
    conv_bias: bool = False  # fairseq conv_bias, False in both base recipes
    dim: int = 768  # encoder_embed_dim
    ffn_dim: int = 3072  # encoder_ffn_embed_dim
    num_layers: int = 12
    num_heads: int = 12
    pos_conv_kernel: int = 128  # hubert conv_pos 128; data2vec conv_pos 95 / depth 5 = 19
    pos_conv_groups: int = 16  # conv_pos_groups
    pos_conv_depth: int = 1  # data2vec pos_conv_depth 5
    # hubert only: BatchNorm1d on the pos conv's input and a plain (not weight-normed) conv;
    # fairseq/transformers `conv_pos_batch_norm` (mHuBERT-25Hz). False in every recipe here.
    pos_conv_batch_norm: bool = False
    layer_norm_first: bool = False  # post-LN in both base recipes; MERT-330M is pre-LN
    dropout: float = 0.1  # residual dropout, both recipes
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0  # 0.0 in both recipes (transformers' default is 0.1)
    input_dropout: float = 0.1  # dropout_input after projection: hubert 0.1, data2vec 0.0
    layerdrop: float = 0.05  # encoder_layerdrop, both recipes
    layer_norm_eps: float = 1e-5
    feature_grad_mult: float = 1.0  # gradient scale into the CNN: hubert 0.1, data2vec 1.0
    normalize_waveform: bool = False  # per-utterance standardisation: hubert False, data2vec True
    sample_rate: int = 16_000
    # True: padding never changes a valid frame (GroupNorm statistics over valid frames only,
    # padding re-zeroed between positional convs). False: reproduce transformers/fairseq on
    # padded batches, where padding leaks into valid frames (group norm: every frame; data2vec
    # pos conv: the last ~36 frames). Unpadded input gives identical results either way.
    isolate_padding: bool = True

    def __post_init__(self) -> None:
        if self.variant not in ("hubert", "data2vec"):
            raise ValueError(f"variant must be 'hubert' or 'data2vec', got {self.variant!r}")
        if self.extractor_norm not in ("group", "layer"):
            raise ValueError(f"extractor_norm must be 'group' or 'layer', got {self.extractor_norm!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_conv_batch_norm and self.variant != "hubert":
            raise ValueError("pos_conv_batch_norm exists only in the hubert variant")
        if self.variant == "hubert" and self.pos_conv_depth != 1:
            raise ValueError("the hubert variant has exactly one positional conv (pos_conv_depth=1)")

    @property
    def hop(self) -> int:
        """Samples between frames (320 for the base CNN)."""
        return math.prod(stride for _, _, stride in self.conv_layers)

    @property
    def receptive_field(self) -> int:
        """Samples seen by one frame (400 for the base CNN)."""
        field, jump = 1, 1
        for _, kernel, stride in self.conv_layers:
            field += (kernel - 1) * jump
            jump *= stride
        return field

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop


def _tiny(base: BackboneConfig, **changes) -> BackboneConfig:
    """The same topology (and frame rate) shrunk for CPU tests and demos."""
    conv = tuple((64, kernel, stride) for _, kernel, stride in base.conv_layers)
    return replace(base, conv_layers=conv, dim=128, ffn_dim=512, num_layers=4, num_heads=4,
                   pos_conv_groups=4, layerdrop=0.0, **changes)


# HuBERT scales the gradient into the CNN by 0.1 (docs/method.md §1.2, HCFG feature_grad_mult).
HUBERT_BASE = BackboneConfig(feature_grad_mult=0.1)
DATA2VEC_BASE = BackboneConfig(
    variant="data2vec", extractor_norm="layer", pos_conv_kernel=19, pos_conv_depth=5,
    input_dropout=0.0, feature_grad_mult=1.0, normalize_waveform=True,
)
# MERT's pre-training backbones (docs/method.md §10.4): HuBERT's CNN on 24 kHz audio, so 75 frames/s
# (MERT_RVQ-VAE_CQT_95M.yaml:29, :85). 95M: HuBERT base as is (post-LN, dropouts 0.1, LayerDrop 0.05,
# feature_grad_mult 0.1, yaml:92-99). 330M: 24 x 1024, 16 heads, FFN 4096, pre-LN, every dropout and
# LayerDrop 0, the full gradient into the CNN (MERT_RVQ-VAE_CQT_330M.yaml:95-114); MERT-v1-330M's
# config.json has the same shapes (our MERT-v1 loader reads it, interop/huggingface.py).
MERT_95M = replace(HUBERT_BASE, sample_rate=24_000)
MERT_330M = replace(MERT_95M, dim=1024, ffn_dim=4096, num_layers=24, num_heads=16, layer_norm_first=True,
                    dropout=0.0, attention_dropout=0.0, input_dropout=0.0, layerdrop=0.0, feature_grad_mult=1.0)
BACKBONE_PRESETS: Registry[BackboneConfig] = Registry("backbone preset", {
    "mert_95m": MERT_95M,
    "mert_330m": MERT_330M,
    "mert_tiny": _tiny(MERT_95M, pos_conv_kernel=32, feature_grad_mult=1.0),
    "hubert_base": HUBERT_BASE,
    "data2vec_base": DATA2VEC_BASE,
    "hubert_tiny": _tiny(HUBERT_BASE, pos_conv_kernel=32),
    "data2vec_tiny": _tiny(DATA2VEC_BASE, pos_conv_kernel=7, pos_conv_depth=3),
})


def replace_backbone_config(config, **changes):
    """A model config (any frozen dataclass with a `backbone` field) with those backbone fields changed."""
    return replace(config, backbone=replace(config.backbone, **changes))


def backbone_preset(name: str, variant: str | None = None) -> BackboneConfig:
    """``hubert_base``, ``data2vec_base``, ``hubert_tiny``, ``data2vec_tiny``; or ``base``/``tiny``
    with ``variant`` given (how the training recipes ask for theirs)."""
    key = f"{variant}_{name}" if variant and name in ("base", "tiny") else name
    return BACKBONE_PRESETS[key]  # unknown: a ConfigError (also a KeyError) naming the known presets
