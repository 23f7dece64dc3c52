"""A MusicFM directory as MusicFM publishes it (pretrained_msd.pt + msd_stats.json, random weights
here): `extract` reads it natively, through the allow-list unpickler, and every weight lands where
MusicFM's own `load_state_dict(strict=True)` would put it; bad files are refused in one line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from musicssl.cli import main
from musicssl.extract import load_model
from musicssl.models.bestrq import mel_filterbank
from musicssl.models.musicfm import MelConformer, musicfm_config
from tests.conftest import write_tone

transformers = pytest.importorskip("transformers")
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import (  # noqa: E402
    Wav2Vec2ConformerConfig, Wav2Vec2ConformerEncoder)

STATS = {"melspec_2048_mean": 6.768, "melspec_2048_std": 18.418, "melspec_2048_cnt": 14282760192}


def musicfm_state(seed: int = 0, n_mels: int = 128) -> dict[str, torch.Tensor]:
    """Every entry of MusicFM25Hz.state_dict() at a small size, named as MusicFM names them: the conv
    front end, transformers' rotary conformer (16 heads, as MusicFM's config has), the head, the cls
    token, the quantiser's buffers and torchaudio's mel buffers."""
    torch.manual_seed(seed)
    tiny = musicfm_config("tiny", mel_mean=0.0, mel_std=1.0)
    c = tiny.conformer
    hf = Wav2Vec2ConformerConfig(hidden_size=c.dim, num_hidden_layers=c.num_layers, num_attention_heads=16,
                                 intermediate_size=c.ffn_dim, conv_depthwise_kernel_size=c.kernel,
                                 hidden_act="swish", position_embeddings_type="rotary")
    conformer = Wav2Vec2ConformerEncoder(hf)
    conv = MelConformer(tiny).conv
    state = {f"conv.{k}": v for k, v in conv.state_dict().items()}
    state |= {f"conformer.{k}": v for k, v in conformer.state_dict().items()}
    for name in list(state):
        if name.endswith("running_var"):
            state[name] = torch.rand_like(state[name]) + 0.5
        elif state[name].is_floating_point():
            state[name] = torch.randn_like(state[name]) * 0.1
    state |= {"linear.weight": torch.randn(4096, c.dim), "linear.bias": torch.zeros(4096),
              "cls_token": torch.randn(c.dim),
              "quantizer_melspec_2048_0.random_projection": torch.randn(512, 16),
              "quantizer_melspec_2048_0.codebook": torch.randn(4096, 16),
              "preprocessor_melspec_2048.mel_stft.spectrogram.window": torch.hann_window(2048),
              "preprocessor_melspec_2048.mel_stft.mel_scale.fb": mel_filterbank(24_000, 2048, n_mels)}
    return state


def write_musicfm_dir(directory: Path, state: dict[str, torch.Tensor], stats: dict = STATS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # a Lightning checkpoint's "model." prefix, which MusicFM strips with k[6:]
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, directory / "pretrained_msd.pt")
    (directory / "msd_stats.json").write_text(json.dumps(stats))
    return directory


def test_loads_every_weight_and_extracts_25_hz_features(tmp_path):
    state = musicfm_state()
    directory = write_musicfm_dir(tmp_path / "MusicFM", state)
    encoder = load_model(directory, device="cpu")
    loaded = encoder.backbone.state_dict()
    for name, value in loaded.items():
        assert torch.equal(value, state[name]), name
    assert (encoder.config.mel_mean, encoder.config.mel_std) == (6.768, 18.418)
    assert encoder.config.conformer.num_heads == 16 and encoder.num_hidden_states == 3
    assert encoder.sample_rate == 24_000 and encoder.frame_rate_hz == 25.0
    wav = np.sin(2 * np.pi * 330 * np.arange(3 * 44_100) / 44_100).astype(np.float32)
    features = encoder.extract(wav, 44_100, chunk_seconds=None)
    assert features.shape == (3, 75, 64)
    # the encoder's own forward on the resampled audio: the same numbers
    signal = encoder.prepare(wav, 44_100)
    with torch.no_grad():
        direct = encoder.backbone(signal[None]).layers
    assert torch.equal(features, torch.stack([layer[0] for layer in direct]))


def test_extract_cli_reads_a_musicfm_directory(tmp_path):
    directory = write_musicfm_dir(tmp_path / "MusicFM", musicfm_state())
    write_tone(tmp_path / "a.wav", 2.0)
    out = tmp_path / "features.npz"
    assert main(["extract", str(directory), str(tmp_path / "a.wav"), "-o", str(out)]) == 0
    with np.load(out) as archive:
        (array,) = [archive[key] for key in archive.files if key.endswith("a.wav")]
    assert array.shape == (3, 50, 64)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "not a readable torch checkpoint"),
    ("stats_keys", "melspec_2048_mean"),
    ("no_stats", "exactly one stats file"),
    ("foreign_key", "unexpected"),
    ("other_mel", "mel filterbank"),
    ("hostile", "refused"),
])
def test_a_bad_directory_is_refused_in_one_line_naming_the_file(tmp_path, capsys, damage, message):
    state = musicfm_state()
    if damage == "foreign_key":
        state["conformer.layers.0.extra.weight"] = torch.zeros(3)
    if damage == "other_mel":
        state["preprocessor_melspec_2048.mel_stft.mel_scale.fb"] = mel_filterbank(16_000, 2048, 128)
    directory = write_musicfm_dir(tmp_path / "MusicFM", state)
    checkpoint = directory / "pretrained_msd.pt"
    if damage == "truncate":
        checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    if damage == "stats_keys":
        (directory / "msd_stats.json").write_text(json.dumps({"mean": 1.0}))
    if damage == "no_stats":
        (directory / "msd_stats.json").rename(directory / "notes.txt")
        (directory / "fma_stats.json").write_text("{}")
        (directory / "msd2_stats.json").write_text("{}")
    if damage == "hostile":
        class Hostile:
            def __reduce__(self):
                return (print, ("owned",))
        checkpoint.write_bytes(pickle.dumps({"state_dict": {}, "x": Hostile()}))
    write_tone(tmp_path / "a.wav", 1.0)
    assert main(["extract", str(directory), str(tmp_path / "a.wav"), "-o", str(tmp_path / "f.npz")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert "owned" not in capsys.readouterr().out
    assert not (tmp_path / "f.npz").exists()


def muq_dir(directory: Path, label_rate: int = 25, heads: int = 4) -> tuple[Path, dict[str, torch.Tensor]]:
    """What `MuQ(config).save_pretrained(DIR)` writes (huggingface_hub's PyTorchModelHubMixin):
    config.json = MuQConfig's fields, model.safetensors = MuQModel's state under `model.`."""
    from safetensors.torch import save_file

    w2v2 = Wav2Vec2ConformerConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=heads,
                                   intermediate_size=256, conv_depthwise_kernel_size=15, hidden_act="swish",
                                   position_embeddings_type="rotary")
    config = {"label_rate": label_rate, "num_codebooks": 1, "codebook_dim": 16, "codebook_size": 8192,
              "features": ["melspec_2048"], "hop_length": 240, "n_mels": 128, "conv_dim": 16, "encoder_dim": 64,
              "encoder_depth": 2, "mask_hop": 0.4, "mask_prob": 0.6, "is_flash": False,
              "stat": {"melspec_2048_cnt": 14282760192, "melspec_2048_mean": 6.768, "melspec_2048_std": 18.418},
              "w2v2_config": w2v2.to_dict(), "use_rvq_target": True, "use_vq_target": False,
              "use_encodec_target": False, "rvq_ckpt_path": None, "recon_loss_ratio": None,
              "resume_checkpoint": None, "rvq_n_codebooks": 8, "rvq_multi_layer_num": 1}
    torch.manual_seed(1)
    tiny = musicfm_config("tiny", mel_mean=0.0, mel_std=1.0, time_strides=(2, 2) if label_rate == 25 else (2, 1))
    state = {f"conv.{k}": v for k, v in MelConformer(tiny).conv.state_dict().items()}
    state |= {f"conformer.{k}": v for k, v in Wav2Vec2ConformerEncoder(w2v2).state_dict().items()}
    state = {k: torch.randn_like(v) * 0.1 if v.is_floating_point() and not k.endswith("running_var") else v
             for k, v in state.items()}
    state |= {"linear.weight": torch.randn(8192, 64), "linear.bias": torch.zeros(8192), "cls_token": torch.randn(64),
              "rvq.quantizers.0.in_proj.weight": torch.randn(16, 512), "rvq.quantizers.0.codebook.weight": torch.randn(1024, 16)}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file({f"model.{k}": v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    return directory, state


@pytest.mark.parametrize("label_rate", [25, 50])
def test_a_muq_directory_loads_at_its_label_rate(tmp_path, label_rate):
    directory, state = muq_dir(tmp_path / "MuQ-large-msd-iter", label_rate)
    encoder = load_model(directory, device="cpu")
    for name, value in encoder.backbone.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert encoder.frame_rate_hz == label_rate and encoder.config.conformer.num_heads == 4
    features = encoder.extract(np.zeros(24_000 * 2, np.float32) + 0.01, 24_000, chunk_seconds=None)
    assert features.shape == (3, 2 * label_rate, 64)


def test_a_muq_config_that_muqs_code_would_build_otherwise_is_refused(tmp_path, capsys):
    directory, _ = muq_dir(tmp_path / "MuQ")
    config = json.loads((directory / "config.json").read_text())
    config["w2v2_config"]["position_embeddings_type"] = "relative"
    (directory / "config.json").write_text(json.dumps(config))
    write_tone(tmp_path / "a.wav", 1.0)
    assert main(["extract", str(directory), str(tmp_path / "a.wav"), "-o", str(tmp_path / "f.npz")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "rotary" in error and "config.json" in error
