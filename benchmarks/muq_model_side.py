"""MuQ's side of benchmarks/muq_model_parity.py, run in its own venv (torch, transformers, einops,
easydict, huggingface_hub, safetensors, `muq` installed with --no-deps; no musicssl):
`MuQ.from_pretrained(DIR)` on the directory our exporter wrote, and its hidden states of a waveform.

    python benchmarks/muq_model_side.py JOB_DIR

JOB_DIR/model is the MuQ-layout directory, JOB_DIR/inputs.npz holds `wav` (1, n) at 24 kHz; the
hidden states go to JOB_DIR/muq.npz. torchaudio has no build for torch 2.13: MuQ's MelSTFT is given
a stand-in with torchaudio's MelSpectrogram + AmplitudeToDB defaults (periodic Hann window,
centred reflect-padded frames, power 2, HTK mel without norm, 10 log10(max(x, 1e-10))), the same
formula as ours, so the mel is not what this compares: the conv front end, transformers'
conformer and MuQ's loading of our directory are.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import torch


def torchaudio_stand_in() -> types.ModuleType:
    def fbanks(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
        hz_to_mel = lambda hz: 2595.0 * math.log10(1.0 + hz / 700.0)  # noqa: E731
        freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
        mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
        hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
        widths, slopes = hz[1:] - hz[:-1], hz[None, :] - freqs[:, None]
        return torch.clamp(torch.minimum(-slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]), min=0.0)

    class MelSpectrogram(torch.nn.Module):
        def __init__(self, sample_rate=16000, n_fft=400, hop_length=None, n_mels=128, **_):
            super().__init__()
            self.n_fft, self.hop = n_fft, hop_length or n_fft // 2
            self.register_buffer("window", torch.hann_window(n_fft))
            self.register_buffer("fb", fbanks(sample_rate, n_fft, n_mels))

        def forward(self, wav):
            spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, center=True, pad_mode="reflect",
                              return_complex=True).abs().pow(2.0)  # (..., F, T)
            return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)  # (..., M, T)

    class AmplitudeToDB(torch.nn.Module):
        def forward(self, x):
            return 10.0 * torch.log10(torch.clamp(x, min=1e-10))

    module, transforms = types.ModuleType("torchaudio"), types.ModuleType("torchaudio.transforms")
    module.__path__ = []  # a package: MuQ imports torchaudio.transforms
    transforms.MelSpectrogram, transforms.AmplitudeToDB = MelSpectrogram, AmplitudeToDB

    class Unused(torch.nn.Module):  # muq/__init__ imports MuQ-MuLan, which names these; MuQ never builds one
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the torchaudio stand-in has no such transform")

    for name in ("Spectrogram", "TimeStretch", "FrequencyMasking", "TimeMasking"):
        setattr(transforms, name, Unused)
    module.transforms = transforms
    return module


def main() -> int:
    job = Path(sys.argv[1])
    # transformers looks torchaudio up (importlib.util.find_spec) when it is imported: before the stand-in
    import transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer  # noqa: F401

    stand_in = torchaudio_stand_in()
    sys.modules.setdefault("torchaudio", stand_in)
    sys.modules.setdefault("torchaudio.transforms", stand_in.transforms)
    # muq/__init__ also imports MuQ-MuLan (x_clip, nnAudio, ...): register the package bare, load MuQ only
    import importlib.util

    package = types.ModuleType("muq")
    package.__path__ = list(importlib.util.find_spec("muq").submodule_search_locations)
    sys.modules["muq"] = package
    from muq.muq.muq import MuQ

    model = MuQ.from_pretrained(str(job / "model")).eval()
    wav = torch.from_numpy(np.load(job / "inputs.npz")["wav"])
    with torch.no_grad():
        states = model(wav, output_hidden_states=True).hidden_states
    np.savez(job / "muq.npz", **{f"layer{i}": s.numpy() for i, s in enumerate(states)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
