"""MusicFM's side of `make parity-bestrq`, run in the reference venv (torch + einops + numpy, no
musicssl): MusicFM's own RandomProjectionQuantizer and MusicFM25Hz.masking on the cases that
benchmarks/bestrq_parity.py wrote.

    python benchmarks/musicfm_side.py JOB_DIR MUSICFM_SRC

JOB_DIR/cases.json lists the cases, JOB_DIR/inputs.npz holds their frames; the answers go to
JOB_DIR/musicfm.npz. MUSICFM_SRC is a checkout of github.com/minzwon/musicfm; its modules import
each other as `musicfm.modules...`, so it is reached through a link named `musicfm`. torchaudio is
stubbed when absent: only MelSTFT uses it. Where the venv has a real torchaudio (`make parity-mel`),
the `targets` case runs MusicFM's whole target path on a waveform: MelSTFT (torchaudio's
MelSpectrogram + AmplitudeToDB), the last frame dropped, the global statistics, 4 frames stacked,
the quantiser (MusicFM25Hz.preprocessing / normalize / rearrange, its own functions).
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch


def import_musicfm(source: Path):
    link_root = Path(tempfile.mkdtemp())
    (link_root / "musicfm").symlink_to(source.resolve(), target_is_directory=True)
    sys.path.insert(0, str(link_root))
    try:
        import torchaudio  # noqa: F401
    except ImportError:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    from musicfm.model.musicfm_25hz import MusicFM25Hz
    from musicfm.modules.conv import Conv2dSubsampling
    from musicfm.modules.random_quantizer import RandomProjectionQuantizer
    return RandomProjectionQuantizer, MusicFM25Hz, Conv2dSubsampling


def conv_front_end(conv_class, case: dict, mel: np.ndarray) -> dict[str, np.ndarray]:
    """MusicFM's Conv2dSubsampling (seeded weights, BatchNorm statistics moved off their init, eval
    mode) on a (B, M, T) mel: its state dict and its output (B, T / 4, D)."""
    torch.manual_seed(case["seed"])
    conv = conv_class(1, case["channels"], case["dim"], strides=[2, 2], n_bands=case["n_mels"])
    with torch.no_grad():
        for module in conv.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0, 0.2)
        output = conv.eval()(torch.from_numpy(mel))
    state = {f"conv/state/{name}": value.numpy() for name, value in conv.state_dict().items()}
    return {**state, "conv/output": output.numpy()}


def waveform_targets(model_class, case: dict, wav: np.ndarray) -> dict[str, np.ndarray]:
    """MusicFM's own target functions on (B, n) float32 audio at 24 kHz: its dB-mel (B, M, T)
    after `preprocessing` (the last frame dropped) and its tokens (B, T / 4)."""
    from musicfm.modules.features import MelSTFT
    from musicfm.modules.random_quantizer import RandomProjectionQuantizer
    key = "melspec_2048"
    # the three functions read only these fields of the model (the rest needs its weights)
    fields = types.SimpleNamespace(
        **{f"preprocessor_{key}": MelSTFT(n_fft=2048, hop_length=240, is_db=True),
           f"quantizer_{key}": RandomProjectionQuantizer(512, 16, 4096, seed=case["seed"]),
           "stat": {f"{key}_mean": case["mean"], f"{key}_std": case["std"]}})
    mel = model_class.preprocessing(fields, torch.from_numpy(wav), features=[key])
    stacked = model_class.rearrange(fields, model_class.normalize(fields, {key: mel[key].clone()}))
    tokens = getattr(fields, f"quantizer_{key}")(stacked[key])
    filterbank = getattr(fields, f"preprocessor_{key}").mel_stft.mel_scale.fb
    return {"targets/mel": mel[key].numpy(), "targets/tokens": tokens.numpy(), "targets/filterbank": filterbank.numpy()}


def main() -> int:
    job, source = Path(sys.argv[1]), Path(sys.argv[2])
    quantizer_class, model_class, conv_class = import_musicfm(source)
    cases = json.loads((job / "cases.json").read_text())
    inputs = np.load(job / "inputs.npz")
    out: dict[str, np.ndarray] = {}
    for case in cases["quantizer"]:
        name = case["name"]
        quantizer = quantizer_class(case["input_dim"], case["code_dim"], case["codebook_size"], seed=case["seed"])
        out[f"{name}/projection"] = quantizer.random_projection.numpy()
        out[f"{name}/codebook"] = quantizer.codebook.numpy()
        out[f"{name}/tokens"] = quantizer(torch.from_numpy(inputs[name])).numpy()
    masking = cases["masking"]
    torch.manual_seed(masking["seed"])
    # MusicFM25Hz.masking reads only these three fields of the model (the rest needs its weights).
    settings = types.SimpleNamespace(mask_hop=masking["mask_hop"], mask_prob=masking["mask_prob"], hop_length=240)
    wav = torch.zeros(masking["batch"], masking["samples"])
    noised, token_indices = model_class.masking(settings, wav)
    tokens = torch.zeros(masking["batch"], masking["samples"] // 960, dtype=torch.bool)  # 25 Hz tokens at 24 kHz
    tokens[tuple(token_indices.t())] = True
    out["masking/token_mask"] = tokens.numpy()
    out["masking/noise"] = noised[noised != 0].numpy()
    out.update(conv_front_end(conv_class, cases["conv"], inputs["conv/mel"]))
    if "targets" in cases and hasattr(sys.modules["torchaudio"], "transforms"):  # a real torchaudio
        out.update(waveform_targets(model_class, cases["targets"], inputs["targets/wav"]))
    np.savez(job / "musicfm.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
