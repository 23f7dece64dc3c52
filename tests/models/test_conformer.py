"""The Conformer encoder (models/conformer.py) against transformers' Wav2Vec2ConformerEncoder with
rotary positions (MusicFM's and MuQ's encoder): the same random weights, a padded batch, every
block's output and the final one. Tolerance: tests/numerics.float64_calibrated, transformers run in
float64 as the truth (both sides are float32 computations of the same function in other orders)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from musicssl.models.conformer import ConformerConfig, ConformerEncoder
from tests.numerics import float64_calibrated

transformers = pytest.importorskip("transformers")
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import (  # noqa: E402
    Wav2Vec2ConformerConfig, Wav2Vec2ConformerEncoder)

SMALL = ConformerConfig(dim=64, num_layers=3, num_heads=4, ffn_dim=128, kernel=7, dropout=0.0, attention_dropout=0.0,
                        activation_dropout=0.0, conv_dropout=0.0, layerdrop=0.0)


def reference(config: ConformerConfig) -> Wav2Vec2ConformerEncoder:
    hf = Wav2Vec2ConformerConfig(hidden_size=config.dim, num_hidden_layers=config.num_layers,
                                 num_attention_heads=config.num_heads, intermediate_size=config.ffn_dim,
                                 conv_depthwise_kernel_size=config.kernel, hidden_act="swish",
                                 position_embeddings_type="rotary", rotary_embedding_base=config.rotary_base,
                                 hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                 conformer_conv_dropout=0.0, layerdrop=0.0, layer_norm_eps=config.layer_norm_eps)
    hf._attn_implementation = "eager"
    torch.manual_seed(0)
    encoder = Wav2Vec2ConformerEncoder(hf).eval()
    with torch.no_grad():  # BatchNorm statistics and LayerNorm affines away from their identity init
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.LayerNorm)):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    return encoder


def reference_states(encoder: Wav2Vec2ConformerEncoder, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output (forward hooks) and the final LayerNorm's."""
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda module, args, out: outputs.append(
        (out[0] if isinstance(out, tuple) else out).detach().clone())) for layer in encoder.layers]
    with torch.no_grad():
        last = encoder(x.clone(), attention_mask=mask).last_hidden_state
    for hook in hooks:
        hook.remove()
    return outputs[:-1] + [last]


def test_every_block_matches_transformers_on_a_padded_batch():
    hf = reference(SMALL)
    ours = ConformerEncoder(SMALL).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    # transformers keeps a positional conv that rotary encoders never apply, and its rotary
    # frequencies as a buffer (ours recomputes them from rotary_base)
    assert not missing and all(name.startswith("pos_conv_embed.") or name == "embed_positions.inv_freq"
                               for name in unexpected)
    x = torch.randn(2, 50, SMALL.dim, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([50, 37])
    mask = torch.arange(50)[None] < lengths[:, None]  # bool: transformers zeroes padding with ~mask
    theirs = reference_states(hf, x, mask)
    truth = reference_states(hf.double(), x.double(), mask)
    with torch.no_grad():
        mine = ours(x, lengths)
    assert len(mine) == SMALL.num_layers + 1
    assert torch.equal(mine[0][1, 37:], torch.zeros(13, SMALL.dim))  # padding zeroed on the way in
    for index, (a, b, t) in enumerate(zip(mine[1:], theirs, truth), start=1):
        error, tolerance = float64_calibrated(a, b, t)
        assert error <= tolerance, f"block {index}: {error:.3g} > {tolerance:.3g}"


def test_padding_never_reaches_an_attended_key():
    # The same item alone and beside a longer one: attention ignores the padding, but the depthwise
    # conv reads it at the item's end (as transformers does); frames further in than the kernel's
    # reach per block are unchanged up to rounding.
    config = dataclasses.replace(SMALL, num_layers=1)
    torch.manual_seed(2)
    encoder = ConformerEncoder(config).eval()
    x = torch.randn(1, 30, config.dim)
    padded = torch.cat([x, torch.randn(1, 10, config.dim)], dim=1)
    with torch.no_grad():
        alone = encoder(x)[-1]
        beside = encoder(torch.cat([padded, padded]), torch.tensor([30, 40]))[-1][:1, :30]
    reach = config.kernel // 2
    torch.testing.assert_close(beside[:, :30 - reach], alone[:, :30 - reach], rtol=1e-5, atol=1e-5)


def test_config_refuses_heads_that_cannot_rotate():
    with pytest.raises(ValueError, match="even size"):
        ConformerConfig(dim=60, num_heads=4)
    with pytest.raises(ValueError, match="odd"):
        ConformerConfig(kernel=4)
