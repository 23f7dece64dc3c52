"""The shared backbone of MusicHuBERT and Music2Vec: a 1-D CNN over the waveform, a projection,
a convolutional positional embedding and a Transformer, returning every layer.

Reads top to bottom in the order audio flows through it; its configuration and named presets are
in backbone_config.py. Two variants, as in fairseq:

- ``hubert``: group-norm CNN (one GroupNorm on the first conv), one weight-normed positional
  conv (kernel 128), raw waveform input. transformers: ``HubertModel``.
- ``data2vec``: layer-norm CNN, five positional convs each followed by a non-affine LayerNorm
  (kernel 19), per-utterance normalised waveform. transformers: ``Data2VecAudioModel``.

Shapes: B batch, N samples, C CNN channels, T frames, D model dim, L Transformer blocks.
Every stage takes and returns lengths, so padded batches stay exact (see ``isolate_padding``).
Reference behaviour: fairseq ``wav2vec2.py`` / ``hubert.py`` / ``data2vec_audio.py`` and
transformers ``modeling_hubert.py`` / ``modeling_data2vec_audio.py`` (docs/method.md §1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicssl.models.backbone_config import BackboneConfig


@dataclass
class BackboneOutput:
    layers: tuple[Tensor, ...]  # L+1 × (B, T, D); [0] = Transformer input after pos conv (HF hidden_states[0])
    ffn_outputs: tuple[Tensor | None, ...]  # L × (B, T, D): FFN output before residual/norm; None if LayerDrop skipped
    lengths: Tensor  # (B,) valid frames
    padding_mask: Tensor  # (B, T) True at padded frames
    features: Tensor  # (B, T, D) projected CNN features before masking (the data2vec teacher's input)
    cnn_features: Tensor  # (B, T, C) raw CNN output (HuBERT's feature penalty)
    last_hidden_state: Tensor  # (B, T, D) layers[-1], after the final LayerNorm of a pre-LN model


def frame_lengths(sample_lengths: Tensor, conv_layers: tuple[tuple[int, int, int], ...]) -> Tensor:
    """Valid output frames for each input length: L <- floor((L - k) / s) + 1 per conv, at least 0."""
    lengths = sample_lengths
    for _, kernel, stride in conv_layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def padding_mask_from_lengths(lengths: Tensor, max_length: int) -> Tensor:
    """(B,) -> (B, T) bool, True at padded positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] >= lengths[:, None]


def normalize_waveform(wav: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance per utterance over its valid samples (data2vec's `normalize`,
    fairseq's F.layer_norm over the 1-D crop); padding stays zero."""
    valid = ~padding_mask_from_lengths(lengths, wav.shape[1])  # (B, N)
    count = lengths.clamp(min=1).to(wav.dtype)[:, None]
    mean = (wav * valid).sum(1, keepdim=True) / count
    var = (((wav - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (wav - mean) / torch.sqrt(var + eps) * valid


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient multiplied by `scale` backward (fairseq GradMultiply)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


# ---------------------------------------------------------------------------------------------
# 1. CNN feature extractor: (B, N) samples -> (B, C, T) frames


class ConvBlock(nn.Module):
    """conv -> [norm] -> GELU. `norm` is "group" (one group per channel, over time), "layer"
    (over channels at each frame) or None."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 bias: bool, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "group":
            self.norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels)
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        x = self.conv(x)  # (B, C, T)
        if self.norm_kind == "group":
            x = self._group_norm(x, lengths)
        elif self.norm_kind == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)

    def _group_norm(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        # fairseq runs this norm in fp32 (Fp32GroupNorm); a float64 model (the tests' exact
        # reference) stays in float64.
        x32 = x if x.dtype == torch.float64 else x.float()
        if lengths is None:
            return F.group_norm(x32, self.norm.num_groups, self.norm.weight.to(x32.dtype),
                                self.norm.bias.to(x32.dtype), self.norm.eps).type_as(x)
        # One group per channel = per-channel statistics over time; exclude padded frames.
        valid = (~padding_mask_from_lengths(lengths, x.shape[-1]))[:, None, :].to(x32.dtype)  # (B, 1, T)
        count = valid.sum(-1, keepdim=True).clamp(min=1)
        mean = (x32 * valid).sum(-1, keepdim=True) / count
        var = (((x32 - mean) * valid) ** 2).sum(-1, keepdim=True) / count
        x32 = (x32 - mean) * torch.rsqrt(var + self.norm.eps)
        return (x32 * self.norm.weight[:, None] + self.norm.bias[:, None]).type_as(x)


def _channels_last_applies(wav: Tensor) -> bool:
    """FeatureExtractor's GEMM path: inference on the CPU (extraction), fp32 or fp64, no autocast."""
    return (wav.device.type == "cpu" and not torch.is_grad_enabled() and wav.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu"))


class FeatureExtractor(nn.Module):
    def __init__(self, conv_layers: tuple[tuple[int, int, int], ...], norm: str, bias: bool):
        super().__init__()
        blocks, in_channels = [], 1
        for index, (channels, kernel, stride) in enumerate(conv_layers):
            block_norm = norm if (norm == "layer" or index == 0) else None
            blocks.append(ConvBlock(in_channels, channels, kernel, stride, bias, block_norm))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)
        self.layer_specs = conv_layers

    def forward(self, wav: Tensor, lengths: Tensor | None) -> Tensor:
        if lengths is None and _channels_last_applies(wav):
            return self._forward_channels_last(wav)
        x = wav[:, None, :]  # (B, 1, N)
        for block, spec in zip(self.conv_layers, self.layer_specs):
            lengths = None if lengths is None else frame_lengths(lengths, (spec,))
            x = block(x, lengths)
        return x  # (B, C, T)

    def _forward_channels_last(self, wav: Tensor) -> Tensor:
        """The same blocks on unpadded input without gradients, on the CPU, as GEMMs on (T, C)
        frames after the first: a kernel-k, stride-s convolution is k products of strided row
        views x[j::s] (row stride s*C, which BLAS reads in place) with the weight's slices. On an
        AMD EPYC (2 threads) the k = 3 layers run at ~168 GFLOP/s this way against ~125 through
        F.conv1d (oneDNN). The first block (one input channel, and the group norm, whose
        per-channel statistics over time F.group_norm computes accurately only channels-first)
        runs as is. Returns (B, C, T), a view of (B, T, C) memory (the backbone transposes it
        back for free)."""
        x = self.conv_layers[0](wav[:, None, :], None).transpose(1, 2).contiguous()  # (B, T, C)
        for block in self.conv_layers[1:]:
            conv = block.conv
            kernel, stride = conv.kernel_size[0], conv.stride[0]
            frames = (x.shape[1] - kernel) // stride + 1
            last = stride * (frames - 1) + 1  # rows j, j + s, ..., j + last - 1 feed tap j
            y = x.new_empty(x.shape[0], frames, conv.out_channels)
            for item, rows in zip(y, x):
                torch.mm(rows[0:last:stride], conv.weight[:, :, 0].t(), out=item)
                for j in range(1, kernel):
                    item.addmm_(rows[j:j + last:stride], conv.weight[:, :, j].t())
            if conv.bias is not None:
                y += conv.bias
            if block.norm_kind == "layer":
                y = block.norm(y)
            elif block.norm_kind is not None:
                raise ValueError(f"channels-last CNN: unexpected {block.norm_kind!r} norm after the first block")
            x = F.gelu(y)
        return x.transpose(1, 2)  # (B, C, T)


class FeatureProjection(nn.Module):
    """LayerNorm over CNN channels, then Linear C -> D, then dropout_input."""

    def __init__(self, in_channels: int, dim: int, dropout: float, eps: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_channels, eps=eps)
        self.projection = nn.Linear(in_channels, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))  # (B, T, C) -> (B, T, D)


# ---------------------------------------------------------------------------------------------
# 2. Convolutional positional embedding: (B, T, D) -> (B, T, D), added to its input


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose kernel is g * v / ||v||, the norm over (out, in) for each kernel tap
    (torch weight_norm with dim=2, as fairseq and transformers apply it to HuBERT's pos conv)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        # fairseq make_conv_pos: N(0, sqrt(4 / (kernel * channels))), bias 0, g = ||v||.
        v = torch.randn(channels, channels // groups, kernel) * math.sqrt(4.0 / (kernel * channels))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))  # (1, 1, kernel)
        self.bias = nn.Parameter(torch.zeros(channels))

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class PositionalConv(nn.Module):
    """hubert: one weight-normed conv + GELU. data2vec: `depth` x (conv, LayerNorm without
    affine, GELU). An even kernel drops its last output frame so that T is preserved ("SamePad")."""

    def __init__(self, variant: str, dim: int, kernel: int, groups: int, depth: int,
                 isolate_padding: bool, batch_norm: bool = False):
        super().__init__()
        self.variant, self.trim = variant, 1 if kernel % 2 == 0 else 0
        self.isolate_padding = isolate_padding
        # conv_pos_batch_norm: BatchNorm1d(x) -> plain conv, instead of a weight-normed conv.
        self.batch_norm = nn.BatchNorm1d(dim) if batch_norm else None
        if batch_norm:
            self.convs = nn.ModuleList([nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)])
        elif variant == "hubert":
            self.convs = nn.ModuleList([WeightNormConv1d(dim, kernel, groups)])
        else:
            self.convs = nn.ModuleList(
                [nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups) for _ in range(depth)])

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        y = x.transpose(1, 2)  # (B, D, T)
        keep = None if padding_mask is None else (~padding_mask)[:, None, :].to(y.dtype)  # (B, 1, T)
        if self.batch_norm is not None:
            y = self.batch_norm(y)  # eval: running statistics, so zero padding becomes the BN bias
            if keep is not None and self.isolate_padding:
                y = y * keep
        for index, conv in enumerate(self.convs):
            if index > 0 and keep is not None and self.isolate_padding:
                y = y * keep  # padding must not reach valid frames through the next conv
            y = conv(y)
            if self.trim:
                y = y[..., :-self.trim]
            if self.variant == "data2vec":
                y = F.layer_norm(y.transpose(1, 2), (y.shape[1],)).transpose(1, 2)
            y = F.gelu(y)
        return y.transpose(1, 2)  # (B, T, D)


# ---------------------------------------------------------------------------------------------
# 3. Transformer: (B, T, D) -> L+1 hidden states


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor, attend: Tensor | None) -> Tensor:
        """x (B, T, D); attend (B, 1, 1, T) bool, True for keys that may be attended (or None)."""
        batch, frames, dim = x.shape
        heads = lambda t: t.view(batch, frames, self.num_heads, -1).transpose(1, 2)  # (B, H, T, D/H)
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """post-LN: h = LN(x + drop(attn(x))); out = LN(h + drop(ffn(h))).
    pre-LN:  h = x + drop(attn(LN(x)));   out = h + ffn(LN(h)).
    Also returns the raw FFN output: data2vec's per-layer target ("layer_result")."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, dropout: float,
                 attention_dropout: float, activation_dropout: float, eps: float, pre_ln: bool):
        super().__init__()
        self.attention = SelfAttention(dim, num_heads, attention_dropout)
        self.attention_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.feed_forward = FeedForward(dim, ffn_dim, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.pre_ln = pre_ln

    def forward(self, x: Tensor, attend: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.pre_ln:
            h = x + self.dropout(self.attention(self.attention_layer_norm(x), attend))
            ffn = self.feed_forward(self.final_layer_norm(h))
            return h + self.dropout(ffn), ffn
        h = self.attention_layer_norm(x + self.dropout(self.attention(x, attend)))
        ffn = self.feed_forward(h)
        return self.final_layer_norm(h + self.dropout(ffn)), ffn


class TransformerEncoder(nn.Module):
    """pos conv -> (post-LN: LayerNorm) -> dropout -> L blocks (-> pre-LN: final LayerNorm)."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        c = config
        self.pos_conv = PositionalConv(c.variant, c.dim, c.pos_conv_kernel, c.pos_conv_groups,
                                       c.pos_conv_depth, c.isolate_padding, c.pos_conv_batch_norm)
        self.layer_norm = nn.LayerNorm(c.dim, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList([
            EncoderLayer(c.dim, c.ffn_dim, c.num_heads, c.dropout, c.attention_dropout,
                         c.activation_dropout, c.layer_norm_eps, c.layer_norm_first)
            for _ in range(c.num_layers)])
        self.pre_ln, self.layerdrop = c.layer_norm_first, c.layerdrop
        # LayerDrop's draws: a CPU torch.Generator the trainer seeds per micro-batch, so which
        # blocks run depends on (seed, update, item), not on the global stream dropout uses.
        # None: the global generator.
        self.layerdrop_generator: torch.Generator | None = None

    def forward(self, x: Tensor, padding_mask: Tensor | None,
                num_layers: int | None = None) -> tuple[tuple[Tensor, ...], tuple[Tensor | None, ...]]:
        """x (B, T, D); padding_mask (B, T) True at padding, or None. Runs the first
        `num_layers` blocks (all by default). Returns (hidden states, FFN outputs)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)  # padding must not feed the pos conv
        x = x + self.pos_conv(x, padding_mask)
        if not self.pre_ln:
            x = self.layer_norm(x)
        x = self.dropout(x)
        attend = None if padding_mask is None or not padding_mask.any() else (~padding_mask)[:, None, None, :]
        hidden, ffn_outputs = [x], []
        blocks = self.layers if num_layers is None else self.layers[:num_layers]
        dropped = [False] * len(blocks)
        if self.training and self.layerdrop > 0:  # one CPU draw for all blocks: no device sync
            dropped = (torch.rand(len(blocks), generator=self.layerdrop_generator) < self.layerdrop).tolist()
        for block, skip in zip(blocks, dropped):
            if skip:
                ffn_outputs.append(None)  # skipped for the whole batch (fairseq LayerDrop)
            else:
                x, ffn = block(x, attend)
                ffn_outputs.append(ffn)
            hidden.append(x)
        return tuple(hidden), tuple(ffn_outputs)

    def final_norm(self, x: Tensor) -> Tensor:
        """A pre-LN stack ends with a LayerNorm; like transformers' hidden_states, `layers` holds
        the raw block outputs and this gives the normalised last state."""
        return self.layer_norm(x) if self.pre_ln else x


# ---------------------------------------------------------------------------------------------
# 4. The backbone


class Backbone(nn.Module):
    def __init__(self, config: BackboneConfig):
        super().__init__()
        c = self.config = config
        self.feature_extractor = FeatureExtractor(c.conv_layers, c.extractor_norm, c.conv_bias)
        if c.feature_grad_mult == 0:
            # fairseq runs the CNN under no_grad then; frozen parameters also keep it out of the
            # optimizer (no weight decay) and out of DDP's gradient reduction.
            self.feature_extractor.requires_grad_(False)
        channels = c.conv_layers[-1][0]
        self.feature_projection = FeatureProjection(channels, c.dim, c.input_dropout, c.layer_norm_eps)
        self.mask_embedding = nn.Parameter(torch.rand(c.dim))  # fairseq mask_emb: U[0, 1)
        self.encoder = TransformerEncoder(c)
        self._init_encoder_linears()

    def _init_encoder_linears(self) -> None:
        # fairseq init_bert_params: every Linear inside the encoder ~ N(0, 0.02), bias 0.
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        return frame_lengths(sample_lengths, self.config.conv_layers)

    def forward(self, wav: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None,
                num_layers: int | None = None) -> BackboneOutput:
        """wav (B, N) float at `config.sample_rate` (normalised by the caller when
        `config.normalize_waveform`); lengths (B,) valid samples (None: all N); mask (B, T) bool:
        frames replaced by the mask embedding (pre-training). `num_layers` stops early."""
        lengths = self._check_inputs(wav, lengths)
        padded = bool((lengths < wav.shape[1]).any())
        cnn = self.feature_extractor(wav, lengths if padded and self.config.isolate_padding else None)
        if self.config.feature_grad_mult not in (0.0, 1.0) and self.training:
            cnn = _ScaleGradient.apply(cnn, self.config.feature_grad_mult)
        cnn = cnn.transpose(1, 2)  # (B, T, C)
        out_lengths = self.frame_lengths(lengths)
        padding_mask = padding_mask_from_lengths(out_lengths, cnn.shape[1])  # (B, T)
        features = self.feature_projection(cnn)  # (B, T, D)
        x = features
        if mask is not None:
            if mask.shape != features.shape[:2]:
                raise ValueError(f"mask must be (B, T) = {tuple(features.shape[:2])}, got {tuple(mask.shape)}")
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        layers, ffn_outputs = self.encoder(x, padding_mask if padded else None, num_layers)
        last = self.encoder.final_norm(layers[-1])
        return BackboneOutput(layers, ffn_outputs, out_lengths, padding_mask, features, cnn, last)

    def _check_inputs(self, wav: Tensor, lengths: Tensor | None) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"wav must be (batch, samples), got shape {tuple(wav.shape)}")
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        elif lengths.shape != (wav.shape[0],):
            raise ValueError(f"lengths must be ({wav.shape[0]},), got {tuple(lengths.shape)}")
        if int(lengths.max()) > wav.shape[1]:
            raise ValueError(f"a length ({int(lengths.max())}) exceeds the padded size {wav.shape[1]}")
        if int(lengths.min()) < self.config.receptive_field:
            raise ValueError(f"an input has {int(lengths.min())} samples, fewer than the receptive "
                             f"field of {self.config.receptive_field}")
        return lengths.to(device=wav.device, dtype=torch.long)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
