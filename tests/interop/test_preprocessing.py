"""The input preprocessing (rate, waveform normalisation) comes from preprocessor_config.json,
as transformers' Wav2Vec2FeatureExtractor applies it; without one, the model type's default."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor  # noqa: E402

from musicssl.extract import load_model  # noqa: E402
from tests.conftest import perturb_  # noqa: E402
from tests.interop.test_huggingface import SMALL, assert_state_matches  # noqa: E402

# Tolerance: transformers' float32 states (extractor + model) against a float64 run of the same
# normalisation and weights give the float32 rounding; ours must be within a small multiple of it
# and that rounding far below the signal (assert_state_matches, tests/numerics.py). Both sides
# normalise with sqrt(var + 1e-7), the extractor's formula; raw audio misses by O(signal).


def large_style_hubert(tmp_path, do_normalize=True, with_preprocessor=True):
    """HuBERT-large topology in miniature: layer-norm CNN with bias, pre-LN (stable layer norm)."""
    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**SMALL, num_conv_pos_embeddings=16, feat_extract_norm="layer",
                                     conv_bias=True, do_stable_layer_norm=True)).eval()
    perturb_(model)
    directory = tmp_path / "hubert_large_style"
    model.save_pretrained(directory)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=do_normalize, return_attention_mask=True)
    if with_preprocessor:
        extractor.save_pretrained(directory)
    return model, extractor, directory


def quiet_offset_tone(tmp_path, seconds=1.2, rate=16000):
    """Quiet (rms ~0.04) with a DC offset: normalisation changes it a lot, so skipping it shows."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    wav = (0.05 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size) + 0.02).astype(np.float32)
    path = tmp_path / "tone.wav"
    sf.write(path, wav, rate, subtype="FLOAT")
    return path, wav


def transformers_states(model, extractor, wav):
    """What `extract` returns: every block output, the last one after a pre-LN model's final
    LayerNorm (transformers >= 5 records the raw block output in hidden_states[-1])."""
    inputs = extractor(wav, sampling_rate=16000, return_tensors="pt")
    return _states(model, inputs["input_values"])


def _states(model, input_values):
    with torch.no_grad():
        out = model(input_values, output_hidden_states=True)
    return out.hidden_states[:-1] + (out.last_hidden_state,)


def float64_truth(model, wav, do_normalize):
    """The same extractor formula and model in float64."""
    x = torch.from_numpy(wav).double()
    if do_normalize:
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    return _states(copy.deepcopy(model).double(), x[None])


def assert_matches_transformers(ours, model, extractor, wav):
    want = transformers_states(model, extractor, wav)
    truth = float64_truth(model, wav, extractor.do_normalize)
    assert ours.shape[0] == len(want)
    for layer, (reference, exact) in enumerate(zip(want, truth)):
        assert_state_matches(ours[layer], reference[0], exact[0], f"hidden state {layer}")
    return want


def test_do_normalize_from_the_preprocessor_matches_transformers(tmp_path):
    model, extractor, directory = large_style_hubert(tmp_path)
    path, wav = quiet_offset_tone(tmp_path)
    encoder = load_model(directory, device="cpu")
    assert encoder.config.normalize_waveform and encoder.sample_rate == 16000
    ours = encoder.extract_file(path, chunk_seconds=None)  # (L+1, T, D)
    want = assert_matches_transformers(ours, model, extractor, wav)
    # Raw audio into this model (the old behaviour) is O(signal) off: the test sees the bug.
    raw = transformers_states(model, Wav2Vec2FeatureExtractor(do_normalize=False), wav)
    assert (raw[-1] - want[-1]).abs().max() > 0.1 * want[-1].abs().max()


def test_do_normalize_false_in_the_preprocessor_is_honoured(tmp_path):
    model, extractor, directory = large_style_hubert(tmp_path, do_normalize=False)
    path, wav = quiet_offset_tone(tmp_path)
    encoder = load_model(directory, device="cpu")
    assert not encoder.config.normalize_waveform
    assert_matches_transformers(encoder.extract_file(path, chunk_seconds=None), model, extractor, wav)


def test_without_preprocessor_the_default_is_logged(tmp_path, caplog):
    _, _, directory = large_style_hubert(tmp_path, with_preprocessor=False)
    with caplog.at_level(logging.WARNING, logger="musicssl.interop.huggingface"):
        encoder = load_model(directory, device="cpu")
    # Layer-norm CNN: fairseq's large recipes train on normalised audio.
    assert encoder.config.normalize_waveform and encoder.sample_rate == 16000
    assert "no preprocessor_config.json" in caplog.text and "do_normalize=True" in caplog.text

    config = json.loads((directory / "config.json").read_text())
    config["feat_extract_norm"] = "group"  # base-style: raw audio
    config["sample_rate"] = 24000  # MERT-style rate field
    (directory / "config.json").write_text(json.dumps(config))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="musicssl.interop.huggingface"):
        encoder = load_model(directory, device="cpu")
    assert not encoder.config.normalize_waveform and encoder.sample_rate == 24000
    assert "sampling_rate=24000, do_normalize=False" in caplog.text


def test_preprocessor_rate_sets_the_model_rate(tmp_path):
    _, extractor, directory = large_style_hubert(tmp_path)
    values = json.loads((directory / "preprocessor_config.json").read_text())
    values["sampling_rate"] = 24000
    (directory / "preprocessor_config.json").write_text(json.dumps(values))
    encoder = load_model(directory, device="cpu")
    assert encoder.sample_rate == 24000 and encoder.frame_rate_hz == 75.0


def test_random_control_of_a_directory_gets_its_preprocessing(tmp_path):
    from musicssl.evaluate.sources import random_backbone_config

    _, _, directory = large_style_hubert(tmp_path, do_normalize=False)
    values = json.loads((directory / "preprocessor_config.json").read_text())
    (directory / "preprocessor_config.json").write_text(json.dumps({**values, "sampling_rate": 24000}))
    config = random_backbone_config(str(directory))
    assert not config.normalize_waveform and config.sample_rate == 24000
    assert config == load_model(directory, device="cpu").config
