"""Backbone behaviour: sizes, lengths, padding, masking, LayerDrop, gradient scaling."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from musicssl.models.backbone import Backbone, count_parameters, frame_lengths, normalize_waveform
from musicssl.models.backbone_config import backbone_preset
from tests.conftest import micro_backbone
from tests.numerics import U32, float64_calibrated, gamma


@pytest.mark.parametrize("preset, expected", [("hubert_base", 94_371_712), ("data2vec_base", 93_164_288)])
def test_base_presets_have_the_papers_parameter_counts(preset, expected):
    # transformers' HubertModel / Data2VecAudioModel count (docs/method.md §1.6); checked against
    # transformers itself in tests/interop (slow test).
    assert count_parameters(Backbone(backbone_preset(preset))) == expected


def test_base_cnn_has_20ms_hop_and_25ms_receptive_field():
    config = backbone_preset("hubert_base")
    assert (config.hop, config.receptive_field, config.frame_rate_hz) == (320, 400, 50.0)
    # 5 s at 16 kHz gives 249 frames (docs/method.md §1.1).
    assert frame_lengths(torch.tensor([80_000, 400, 399, 720]), config.conv_layers).tolist() == [249, 1, 0, 2]


def test_forward_returns_every_layer_with_lengths(variant):
    backbone = micro_backbone(variant)
    out = backbone(torch.randn(2, 8000), torch.tensor([8000, 4000]))
    assert len(out.layers) == backbone.config.num_layers + 1
    assert len(out.ffn_outputs) == backbone.config.num_layers
    assert out.lengths.tolist() == [24, 12]
    assert all(h.shape == (2, 24, 32) for h in out.layers)
    assert out.padding_mask.sum(1).tolist() == [0, 12]
    assert out.cnn_features.shape == (2, 24, 16)


@pytest.mark.parametrize("changes", [{}, {"layer_norm_first": True, "extractor_norm": "layer"}])
def test_padding_does_not_change_valid_frames(variant, changes):
    if variant == "data2vec" and changes:
        changes = {"layer_norm_first": True}
    backbone = micro_backbone(variant, **changes)
    exact = copy.deepcopy(backbone).double()  # the truth both float32 runs round from
    wav = torch.randn(3, 9600)
    lengths = torch.tensor([9600, 6400, 3333])
    with torch.no_grad():
        batch = backbone(wav, lengths)
        for item, length in enumerate(lengths.tolist()):
            alone = backbone(wav[item:item + 1, :length])
            truth = exact(wav[item:item + 1, :length].double())
            frames = int(batch.lengths[item])
            assert frames == alone.layers[0].shape[1]
            for padded, single, true in zip(batch.layers + batch.ffn_outputs, alone.layers + alone.ffn_outputs,
                                            truth.layers + truth.ffn_outputs):
                # other shapes, so other kernels: equal up to float32 rounding (tests/numerics.py)
                error, tolerance = float64_calibrated(padded[item, :frames], single[0], true[0])
                assert error <= tolerance


@pytest.mark.parametrize("changes", [{"extractor_norm": "group"}, {"extractor_norm": "layer", "conv_bias": True}])
def test_channels_last_cnn_equals_the_convolutions(variant, changes, monkeypatch):
    """Inference on the CPU takes the CNN's GEMM path (strided row views x[j::s] on (T, C)
    frames); with gradients it is F.conv1d's. Both are float32 roundings of the same sums,
    checked against the float64 model (tests/numerics.py), for both extractor norms."""
    import musicssl.models.backbone as backbone_module

    applies = backbone_module._channels_last_applies
    backbone = micro_backbone(variant, **changes)
    exact = copy.deepcopy(backbone).double()
    wav = torch.randn(2, 9600)
    assert not applies(wav)  # with gradients (training): F.conv1d
    with torch.no_grad():
        assert applies(wav) and not applies(wav.to(torch.bfloat16))
        fast = backbone.feature_extractor(wav, None)
        truth = exact.feature_extractor(wav.double(), None)
        monkeypatch.setattr(backbone_module, "_channels_last_applies", lambda wav: False)
        conv = backbone.feature_extractor(wav, None)
    assert fast.shape == conv.shape
    error, tolerance = float64_calibrated(fast, conv, truth)
    assert error <= tolerance


def test_without_isolation_group_norm_padding_changes_every_frame():
    # Documented effect of the group-norm CNN as transformers/fairseq run it: its per-channel
    # statistics span the whole padded length, so every valid frame of a padded item moves.
    backbone = micro_backbone("hubert", isolate_padding=False)
    wav = torch.randn(2, 9600)
    with torch.no_grad():
        batch = backbone(wav, torch.tensor([9600, 4800]))
        alone = backbone(wav[1:, :4800])
    frames = int(batch.lengths[1])
    difference = (batch.layers[0][1, :frames] - alone.layers[0][0]).abs().amax(dim=-1)
    assert bool((difference > 1e-4).all())


def test_without_isolation_data2vec_padding_reaches_only_the_pos_conv_edge():
    # Documented effect of the stacked positional convs: padding that is not re-zeroed between
    # them reaches the last (depth - 1) * (kernel // 2) valid frames of the Transformer input.
    backbone = micro_backbone("data2vec", isolate_padding=False)
    config = backbone.config
    reach = (config.pos_conv_depth - 1) * (config.pos_conv_kernel // 2)
    wav = torch.randn(2, 9600)
    with torch.no_grad():
        batch = backbone(wav, torch.tensor([9600, 4800]))
        alone = backbone(wav[1:, :4800])
    frames = int(batch.lengths[1])
    difference = (batch.layers[0][1, :frames] - alone.layers[0][0]).abs().amax(dim=-1)
    assert bool((difference[: frames - reach] < 1e-5).all())
    assert bool((difference[frames - reach:] > 1e-5).any())


def test_mask_embedding_replaces_masked_frames_before_the_encoder(variant):
    backbone = micro_backbone(variant)
    wav = torch.randn(2, 8000)
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[0, 3:9] = mask[1, 10:20] = True
    with torch.no_grad():
        out = backbone(wav, mask=mask)
        expected_input = torch.where(mask[..., None], backbone.mask_embedding, out.features)
        layers, _ = backbone.encoder(expected_input, None)
        unmasked = backbone(wav)
    for got, want in zip(out.layers, layers):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out.features, unmasked.features)
    assert (out.layers[-1] - unmasked.layers[-1]).abs().max() > 1e-3


def test_ffn_outputs_are_the_feed_forward_results_before_residual(variant):
    backbone = micro_backbone(variant)
    captured = []
    hooks = [layer.feed_forward.register_forward_hook(lambda m, i, o: captured.append(o))
             for layer in backbone.encoder.layers]
    with torch.no_grad():
        out = backbone(torch.randn(1, 8000))
    for hook in hooks:
        hook.remove()
    for ffn, hooked in zip(out.ffn_outputs, captured, strict=True):
        assert torch.equal(ffn, hooked)
    # post-LN: block output = LN(h + ffn), where h = the block's attention sub-layer output;
    # the same operations on the same shapes, so the same bits
    block = backbone.encoder.layers[0]
    with torch.no_grad():
        h = block.attention_layer_norm(out.layers[0] + block.attention(out.layers[0], None))
        assert torch.equal(out.layers[1], block.final_layer_norm(h + out.ffn_outputs[0]))


def test_num_layers_stops_early_with_identical_states(variant):
    backbone = micro_backbone(variant)
    wav = torch.randn(1, 8000)
    with torch.no_grad():
        full, early = backbone(wav), backbone(wav, num_layers=1)
    assert len(early.layers) == 2
    assert torch.equal(early.layers[1], full.layers[1])  # the same computation: the same bits


def test_layerdrop_skips_whole_blocks_only_in_training():
    backbone = micro_backbone("hubert", layerdrop=1.0)
    wav = torch.randn(1, 8000)
    backbone.train()
    out = backbone(wav)
    assert out.ffn_outputs == (None, None)
    assert all(torch.equal(h, out.layers[0]) for h in out.layers)
    backbone.eval()
    assert all(ffn is not None for ffn in backbone(wav).ffn_outputs)


def test_feature_grad_mult_scales_only_the_cnn_gradient():
    def gradients(mult):
        backbone = micro_backbone("hubert", feature_grad_mult=mult, dropout=0.0, attention_dropout=0.0,
                                  input_dropout=0.0, layerdrop=0.0).train()
        backbone(torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))).layers[-1].pow(2).mean().backward()
        return backbone.feature_extractor.conv_layers[1].conv.weight.grad, backbone.feature_projection.projection.weight.grad

    # A power of two scales every float exactly, so the scaled gradient is the same bits x 1/4.
    cnn_scaled, proj_scaled = gradients(0.25)
    cnn_full, proj_full = gradients(1.0)
    assert torch.equal(cnn_scaled, 0.25 * cnn_full)
    assert torch.equal(proj_scaled, proj_full)
    # 0 freezes the CNN (fairseq: no_grad): no gradient at all, so no optimizer or DDP state either
    cnn_frozen, proj_frozen = gradients(0.0)
    assert cnn_frozen is None
    assert torch.equal(proj_frozen, proj_full)


def test_normalize_waveform_uses_valid_samples_only():
    wav = torch.randn(2, 1000) * 3 + 1
    lengths = torch.tensor([1000, 600])
    # In float64 the statistics are exact to ~1e-15; var = v / (v + eps) with v ~ 9, eps = 1e-5.
    out = normalize_waveform(wav.double(), lengths)
    assert abs(float(out[1, :600].mean())) < 1e-12
    variance = float(wav[1, :600].double().var(unbiased=False))
    assert float(out[1, :600].var(unbiased=False)) == pytest.approx(variance / (variance + 1e-5), abs=1e-12)
    assert float(out[1, 600:].abs().max()) == 0.0
    # float32: each statistic is a 600-term sum, off by at most gamma_600 of its terms' magnitude
    rounded = normalize_waveform(wav, lengths)
    tolerance = 4 * gamma(600) * float(out[1, :600].abs().max()) + 4 * U32 * float(out.abs().max())
    assert float((rounded[1, :600].double() - out[1, :600]).abs().max()) <= tolerance
    alone = normalize_waveform(wav[1:, :600], lengths[1:])[0]
    assert float((alone.double() - out[1, :600]).abs().max()) <= tolerance


def test_bad_inputs_say_what_was_expected():
    backbone = micro_backbone("hubert")
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        backbone(torch.randn(8000))
    with pytest.raises(ValueError, match="lengths must be"):
        backbone(torch.randn(2, 8000), torch.tensor([8000]))
    with pytest.raises(ValueError, match="receptive field of 400"):
        backbone(torch.randn(1, 399))
    with pytest.raises(ValueError, match="exceeds"):
        backbone(torch.randn(1, 800), torch.tensor([900]))
    with pytest.raises(ValueError, match="mask must be"):
        backbone(torch.randn(1, 8000), mask=torch.zeros(1, 5, dtype=torch.bool))


def test_config_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="variant"):
        dataclasses.replace(backbone_preset("hubert_base"), variant="wav2vec")
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(backbone_preset("hubert_base"), num_heads=7)
    with pytest.raises(KeyError, match="known"):
        backbone_preset("huge", "hubert")
