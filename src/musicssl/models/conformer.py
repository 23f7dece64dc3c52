"""A Conformer encoder with rotary positions, the one MusicFM and MuQ build from transformers'
`Wav2Vec2ConformerEncoder` (config `position_embeddings_type="rotary"`), written out so nothing
calls a hub (docs/method.md §8.8). Parameter names equal transformers', so its state dict loads
as it is; tests/models/test_conformer.py compares every layer against transformers.

    x (B, T, D) ─ padding zeroed ─ dropout ─> L x block ─> LayerNorm
    block:  x + 1/2 FFN(LN x)                      (macaron half-step)
            x + Attention(rotate(LN x))            (rotary applied to the attention *input*, as transformers)
            x + Conv(x)                            (LN, pointwise 2D -> GLU, depthwise k, BatchNorm, swish, pointwise)
            LN(x + 1/2 FFN(LN x))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ConformerConfig:
    """Defaults: transformers' Wav2Vec2ConformerConfig with the values MusicFM sets or inherits
    from `facebook/wav2vec2-conformer-rope-large-960h-ft` (docs/method.md §8.8)."""

    dim: int = 1024  # hidden_size (MusicFM encoder_dim)
    num_layers: int = 12  # num_hidden_layers (MusicFM encoder_depth)
    num_heads: int = 16  # num_attention_heads
    ffn_dim: int = 4096  # intermediate_size
    kernel: int = 31  # conv_depthwise_kernel_size
    rotary_base: int = 10_000  # rotary_embedding_base
    dropout: float = 0.1  # hidden_dropout: FFN outputs and the encoder's input
    attention_dropout: float = 0.1  # on the attention weights and the attention output
    activation_dropout: float = 0.1  # inside the FFN
    conv_dropout: float = 0.1  # conformer_conv_dropout
    layerdrop: float = 0.1
    layer_norm_eps: float = 1e-5  # the encoder's final LayerNorm (the blocks' use torch's 1e-5)

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even size (rotary halves)")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd for same padding, got {self.kernel}")


def rotary_tables(frames: int, head_dim: int, base: int, dtype: torch.dtype, device=None) -> tuple[Tensor, Tensor]:
    """cos and sin, each (T, 1, 1, head_dim): angle t * base^(-2i / head_dim), the halves repeated."""
    inverse = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.arange(frames, device=device).float()[:, None] * inverse  # (T, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)[:, None, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> Tensor:
    """(B, T, D) -> (B, T, D): each head's vector turned by its frame's angles (x cos + (-x2, x1) sin)."""
    batch, frames, dim = x.shape
    heads = x.view(batch, frames, num_heads, dim // num_heads).transpose(0, 1)  # (T, B, H, d)
    first, second = heads.chunk(2, dim=-1)
    turned = heads * cos + torch.cat([-second, first], dim=-1) * sin
    return turned.transpose(0, 1).reshape(batch, frames, dim)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float, dropout: float):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, ffn_dim)
        self.intermediate_dropout = nn.Dropout(activation_dropout)
        self.output_dense = nn.Linear(ffn_dim, dim)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.intermediate_dropout(F.silu(self.intermediate_dense(x)))  # swish
        return self.output_dropout(self.output_dense(hidden))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.linear_q, self.linear_k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.linear_v, self.linear_out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], attend: Tensor | None) -> Tensor:
        """x (B, T, D); attend (B, 1, 1, T) bool, True = a key to attend to (None: all)."""
        batch, frames, dim = x.shape
        turned = rotate(x, *rotary, self.num_heads)  # queries and keys see positions; values do not
        split = lambda t: t.view(batch, frames, self.num_heads, -1).transpose(1, 2)  # noqa: E731  (B, H, T, d)
        y = F.scaled_dot_product_attention(split(self.linear_q(turned)), split(self.linear_k(turned)),
                                           split(self.linear_v(x)), attn_mask=attend,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.linear_out(y.transpose(1, 2).reshape(batch, frames, dim))


class ConvolutionModule(nn.Module):
    def __init__(self, dim: int, kernel: int, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim, bias=False)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = F.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)), dim=1)  # (B, D, T)
        y = F.silu(self.batch_norm(self.depthwise_conv(y)))
        return self.dropout(self.pointwise_conv2(y)).transpose(1, 2)  # (B, T, D)


class ConformerBlock(nn.Module):
    def __init__(self, config: ConformerConfig):
        super().__init__()
        dim = config.dim
        self.ffn1_layer_norm = nn.LayerNorm(dim)
        self.ffn1 = FeedForward(dim, config.ffn_dim, config.activation_dropout, config.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, config.num_heads, config.attention_dropout)
        self.self_attn_dropout = nn.Dropout(config.attention_dropout)  # transformers reuses attention_dropout here
        self.conv_module = ConvolutionModule(dim, config.kernel, config.conv_dropout)
        self.ffn2_layer_norm = nn.LayerNorm(dim)
        self.ffn2 = FeedForward(dim, config.ffn_dim, config.activation_dropout, config.dropout)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, rotary: tuple[Tensor, Tensor], attend: Tensor | None) -> Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn_dropout(self.self_attn(self.self_attn_layer_norm(x), rotary, attend))
        x = x + self.conv_module(x)
        return self.final_layer_norm(x + 0.5 * self.ffn2(self.ffn2_layer_norm(x)))


class ConformerEncoder(nn.Module):
    """Names as transformers' encoder (`layers.N...`, `layer_norm`). Not here: its `pos_conv_embed`,
    which a rotary encoder builds but never applies, and its `embed_positions.inv_freq` buffer,
    recomputed from rotary_base (load its state dict with strict=False)."""

    def __init__(self, config: ConformerConfig):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_layers))
        self.layer_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.layerdrop_generator: torch.Generator | None = None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, ...]:
        """x (B, T, D), lengths (B,) valid frames -> L + 1 hidden states (B, T, D): the input after
        dropout, then each block's output, the last after the final LayerNorm (transformers'
        hidden_states). Padded frames are zeroed on the way in and never attended to."""
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"expected (batch, frames, {self.config.dim}), got {tuple(x.shape)}")
        attend = None
        if lengths is not None:
            valid = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]  # (B, T)
            x = x * valid[..., None].to(x.dtype)
            attend = valid[:, None, None, :]  # (B, 1, 1, T)
        head_dim = self.config.dim // self.config.num_heads
        rotary = rotary_tables(x.shape[1], head_dim, self.config.rotary_base, x.dtype, x.device)
        hidden = [self.dropout(x)]
        for block in self.layers:
            skip = self.training and self.config.layerdrop > 0 and \
                torch.rand([], generator=self.layerdrop_generator) < self.config.layerdrop
            hidden.append(hidden[-1] if skip else block(hidden[-1], rotary, attend))
        hidden[-1] = self.layer_norm(hidden[-1])
        return tuple(hidden)
