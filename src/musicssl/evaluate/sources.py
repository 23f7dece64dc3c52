"""What gets probed: a frozen model, the same architecture at random init, or MFCC statistics.

A source turns one window of mono audio at its sample rate into frame features of every layer
it has, `(K, T, D)`, and pools them to one vector per layer, `(K, D)`. The benchmark compares
sources through this interface only, so a baseline is scored exactly like a model.

Model specs understood by `open_source` (the CLI's MODEL arguments):
- a directory: our checkpoint or a transformers HubertModel / Data2VecAudioModel directory;
- `random:<directory or preset>`: the same backbone at random initialisation (seed 0), the
  paper's lower bound for what pre-training adds (`random:hubert_base`, `random:tiny`, ...);
- `mfcc`: mean and standard deviation of 39-dim MFCCs (Kaldi recipe, 100 Hz), one "layer".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from musicssl.extract import Encoder, load_model
from musicssl.frame_features import MfccConfig, mfcc
from musicssl.interop.huggingface import read_hf_config, read_preprocessing
from musicssl.interop.musicfm import is_musicfm_dir
from musicssl.models.backbone import Backbone
from musicssl.models.backbone_config import BackboneConfig, backbone_preset


class Source(ABC):
    """Interface: name, fingerprint (cache key of the weights/recipe), sample_rate,
    frame_rate_hz, num_layers (K), dim, frames(wav) -> (K, T, D), pool(frames) -> (K, D')."""

    name: str
    fingerprint: str
    sample_rate: int
    frame_rate_hz: float
    num_layers: int
    pooled_dim: int
    frame_dim: int
    # Frame t of `frames` is centred on sample round(t * sample_rate / frame_rate_hz) once the
    # window is padded by `center_pad` samples on both sides (beat labels rely on it).
    center_pad: int

    @abstractmethod
    def frames(self, wav: np.ndarray) -> np.ndarray:
        """(N,) mono at `sample_rate` -> (K, T, D) frame features of every layer."""

    def pool(self, frames: np.ndarray) -> np.ndarray:
        return frames.mean(axis=1)  # (K, T, D) -> (K, D): MARBLE's `reduction: mean`

    # Batches of windows of equal length, (B, N): a model source runs them in one forward pass;
    # by default they are taken one at a time.
    def frames_batch(self, windows: np.ndarray) -> np.ndarray:
        """(B, N) -> (B, K, T, D)."""
        return np.stack([self.frames(window) for window in windows])

    def pooled_batch(self, windows: np.ndarray) -> np.ndarray:
        """(B, N) -> (B, K, D'): `pool(frames(window))` of every window."""
        return np.stack([self.pool(self.frames(window)) for window in windows])

    def describe(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "sample_rate": self.sample_rate,
                "frame_rate_hz": self.frame_rate_hz, "num_layers": self.num_layers}


class EncoderSource(Source):
    """All hidden states of a frozen backbone (index 0 = Transformer input, as transformers'
    hidden_states[0]); each window sees only itself, as in MARBLE's extraction, and windows of
    equal length share one forward pass (no padding, so nothing leaks between them)."""

    def __init__(self, encoder: Encoder, name: str, fingerprint: str):
        self.encoder = encoder
        self.name = name
        self.fingerprint = fingerprint
        self.sample_rate = encoder.sample_rate
        self.frame_rate_hz = encoder.frame_rate_hz
        self.num_layers = encoder.num_hidden_states
        self.pooled_dim = self.frame_dim = encoder.dim
        self.center_pad = encoder.config.receptive_field // 2

    def frames(self, wav: np.ndarray) -> np.ndarray:
        return self.encoder.extract(wav, self.sample_rate, layers=None, chunk_seconds=None,
                                    source=self.name).numpy()  # (L+1, T, D)

    def frames_batch(self, windows: np.ndarray) -> np.ndarray:
        return self.encoder.extract_batch(windows, source=self.name).numpy()  # (B, L+1, T, D)

    def pooled_batch(self, windows: np.ndarray) -> np.ndarray:
        return self.encoder.extract_batch(windows, pool=True, source=self.name).numpy()  # (B, L+1, D)

    def describe(self) -> dict:
        return {**super().describe(), "backbone": dataclasses.asdict(self.encoder.config), "dtype": self.encoder.dtype}


class MfccSource(Source):
    """Hand-crafted baseline: per-window mean and std of MFCC + deltas (39 + 39 = 78 dims)."""

    def __init__(self, config: MfccConfig = MfccConfig()):
        self.config = config
        self.name = "mfcc"
        self.fingerprint = _digest(json.dumps(dataclasses.asdict(config), sort_keys=True))
        self.sample_rate = config.sample_rate
        self.frame_rate_hz = config.frame_rate_hz
        self.num_layers = 1
        self.frame_dim = config.dim
        self.pooled_dim = 2 * config.dim
        self.center_pad = config.window_samples // 2

    def frames(self, wav: np.ndarray) -> np.ndarray:
        if wav.size < self.config.window_samples:
            wav = np.pad(wav, (0, self.config.window_samples - wav.size))
        return mfcc(wav, self.config)[None]  # (1, T, 39)

    def pool(self, frames: np.ndarray) -> np.ndarray:
        return np.concatenate([frames.mean(axis=1), frames.std(axis=1)], axis=-1)  # (1, 78)

    def describe(self) -> dict:
        return {**super().describe(), "mfcc": dataclasses.asdict(self.config)}


def _digest(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha1(data).hexdigest()[:16]


def weights_fingerprint(directory: Path) -> str:
    """Hash of config.json and the weight files' bytes: the cache follows the weights, not the
    directory name, so retraining into the same folder never reuses stale features."""
    digest = hashlib.sha1()
    # The preprocessor config sets the input rate and normalisation: it changes the features too.
    names = ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin"]
    if is_musicfm_dir(directory):  # MusicFM's layout: the mel statistics change the features too
        names = sorted(p.name for p in [*directory.glob("*_stats.json"), *directory.glob("*.pt")])
    for name in names:
        path = directory / name
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def random_backbone_config(spec: str) -> BackboneConfig:
    """`spec` is a model directory (its architecture) or a preset name (hubert_base, data2vec_tiny...)."""
    path = Path(spec)
    if path.is_dir():  # the architecture only: config.json, no weights read
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ValueError(f"random:{spec}: {config_path} not found")
        hf, config = read_hf_config(config_path)
        # The directory's input preprocessing too, so the control sees the input the model does.
        preprocessing = read_preprocessing(path, hf, config)
        return dataclasses.replace(config, sample_rate=preprocessing.sample_rate,
                                   normalize_waveform=preprocessing.do_normalize)
    try:
        return backbone_preset(spec)
    except KeyError as err:
        raise ValueError(f"random:{spec}: neither a model directory nor a backbone preset ({err.args[0]})") from None


def model_name(path: Path) -> str:
    """A table row name for a model directory: a pre-training checkpoint RUN/checkpoints/step_N
    is `RUN@step_N`, anything else its folder name."""
    if path.parent.name == "checkpoints" and path.name.startswith("step_"):
        return f"{path.parent.parent.name}@{path.name}"
    return path.name or str(path)


def open_source(spec: str, device: str | None = None, seed: int = 0, dtype: str = "auto") -> Source:
    """A MODEL argument of `musicssl probe` / `musicssl benchmark` -> a feature source.
    `NAME=SPEC` names the table row (e.g. `MusicHuBERT=runs/mh/checkpoints/step_00250000`).
    `dtype` (extract.DTYPES): a bf16 source's fingerprint says so, so its cached features never
    stand in for float32 ones (fp32 fingerprints are what they were before the option)."""
    name, sep, rest = spec.partition("=")
    if sep and name and not Path(spec).exists():
        source = open_source(rest, device, seed, dtype)
        source.name = name
        return source
    if spec == "mfcc":
        return MfccSource()
    if spec.startswith("random:"):
        config = random_backbone_config(spec.split(":", 1)[1])
        torch.manual_seed(seed)
        backbone = Backbone(config)
        encoder = Encoder(backbone, device=device, name=spec, dtype=dtype)
        fingerprint = _digest(json.dumps(dataclasses.asdict(config), sort_keys=True) + f"seed{seed}"
                              + _dtype_tag(encoder))
        return EncoderSource(encoder, name=spec, fingerprint=fingerprint)
    path = Path(spec)
    encoder = load_model(path, device=device, dtype=dtype)
    # The resolved input preprocessing too: a default (no preprocessor config) may change with the code.
    preprocessing = f"{encoder.sample_rate}/{encoder.config.normalize_waveform}/{encoder.normalize_eps}"
    fingerprint = _digest(weights_fingerprint(path) + preprocessing + _dtype_tag(encoder))
    return EncoderSource(encoder, name=model_name(path.resolve()), fingerprint=fingerprint)


def _dtype_tag(encoder: Encoder) -> str:
    return "" if encoder.dtype == "fp32" else f"/{encoder.dtype}"
