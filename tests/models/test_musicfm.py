"""MusicFM's encoder (models/musicfm.py): the Conv2d front end against MusicFM's own module (its
weights and output pinned in fixtures/musicfm_reference.safetensors by `make parity-bestrq`), the
token count, and the whole encoder against transformers' conformer on our front end's output.
The conformer itself is compared block by block in test_conformer.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from musicssl.models.musicfm import Conv2dSubsampling, MelConformer, musicfm_config
from tests.models.test_conformer import reference_states
from tests.numerics import float64_calibrated

FIXTURE = Path(__file__).parent / "fixtures" / "musicfm_reference.safetensors"


def test_conv_front_end_matches_musicfms_module():
    reference = load_file(str(FIXTURE))
    state = {key.removeprefix("conv/state/"): value for key, value in reference.items() if key.startswith("conv/state/")}
    channels, _, _, _ = state["conv.0.conv1.weight"].shape
    dim, flat = state["linear.weight"].shape
    conv = Conv2dSubsampling(channels, 4 * flat // channels, dim).eval()
    conv.load_state_dict(state)  # MusicFM's parameter names, all of them
    mel = reference["conv/mel"].transpose(1, 2)  # MusicFM's (B, M, T) -> ours (B, T, M)
    with torch.no_grad():
        ours, truth = conv(mel), copy.deepcopy(conv).double()(mel.double())
    assert ours.shape == reference["conv/output"].shape == (2, 13, dim)  # ceil(50 / 4) tokens
    error, tolerance = float64_calibrated(ours, reference["conv/output"], truth)
    assert error <= tolerance, f"{error:.3g} > {tolerance:.3g}"


@pytest.mark.parametrize("samples", [960, 1025, 24_000, 24_000 + 959, 3 * 24_000 + 500])
def test_one_token_per_whole_40_ms(samples):
    model = MelConformer(musicfm_config("tiny", mel_mean=-20.0, mel_std=15.0)).eval()
    wav = torch.randn(1, samples, generator=torch.Generator().manual_seed(samples)) * 0.1
    with torch.no_grad():
        out = model(wav)
    assert len(out.layers) == model.config.num_layers + 1
    assert out.last_hidden_state.shape == (1, samples // 960, 64)
    assert torch.isfinite(out.last_hidden_state).all()


def test_the_encoder_is_mel_then_conv_then_transformers_conformer():
    transformers = pytest.importorskip("transformers")
    from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import (
        Wav2Vec2ConformerConfig, Wav2Vec2ConformerEncoder)

    config = musicfm_config("tiny", mel_mean=-30.0, mel_std=20.0)
    model = MelConformer(config).eval()
    c = config.conformer
    hf = Wav2Vec2ConformerConfig(hidden_size=c.dim, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                                 intermediate_size=c.ffn_dim, conv_depthwise_kernel_size=c.kernel, hidden_act="swish",
                                 position_embeddings_type="rotary", hidden_dropout=0.0, attention_dropout=0.0,
                                 activation_dropout=0.0, conformer_conv_dropout=0.0, layerdrop=0.0)
    hf._attn_implementation = "eager"
    reference = Wav2Vec2ConformerEncoder(hf).eval()
    reference.load_state_dict(model.conformer.state_dict(), strict=False)
    del transformers
    t = torch.arange(2 * 24_000) / 24_000
    wav = (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=torch.Generator()
                                                                         .manual_seed(0)))[None]
    with torch.no_grad():
        ours = model(wav).layers
        mel = (model.log_mel(wav) - config.mel_mean) / config.mel_std
        x = model.conv(mel)[:, :50]
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    theirs = reference_states(reference, x, mask)  # each block's output, the last after the final norm
    truth = reference_states(copy.deepcopy(reference).double(), x.double(), mask)
    assert len(ours) == len(theirs) + 1 == c.num_layers + 1
    assert torch.equal(ours[0], x)  # the conformer's input: our mel through our conv (dropout 0 in eval)
    for index, (a, b, d) in enumerate(zip(ours[1:], theirs, truth), start=1):
        error, tolerance = float64_calibrated(a, b, d)
        assert error <= tolerance, f"hidden state {index}: {error:.3g} > {tolerance:.3g}"


def test_the_statistics_are_required():
    with pytest.raises(ValueError, match="mel statistics"):
        MelConformer(musicfm_config("tiny"))
    with pytest.raises(ValueError, match="std > 0"):
        musicfm_config("tiny", mel_mean=0.0, mel_std=0.0)
