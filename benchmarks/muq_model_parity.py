"""MuQ parity of the encoder and of the directories we write: a random-weight MusicFM encoder
(MuQ's modules) exported in MuQ's layout (interop/musicfm.py `export_muq`, what every MusicFM/MuQ
run's checkpoints are), opened by MuQ's own `MuQ.from_pretrained` in its venv
(benchmarks/muq_model_side.py) and by ours, on the same 24 kHz waveform: every hidden state.

    make parity-muq-model            # builds .venv-muqmodel (torch 2.13 CPU, transformers, einops,
                                     # easydict, huggingface_hub, safetensors, muq --no-deps)

Tolerance: both sides are float32 computations of the same function in other orders (our conformer
against transformers'); ours in float64 is the truth, and ours must be no further from MuQ's than a
small multiple of MuQ's own float32 error against that truth (tests/numerics.float64_calibrated).
Exits 1 when a hidden state differs by more.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from musicssl.interop.musicfm import export_muq, load_muq
from musicssl.models.conformer import ConformerConfig
from musicssl.models.musicfm import MelConformer, MusicFMConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.numerics import float64_calibrated  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = ROOT / os.environ.get("MUQ_MODEL_VENV", ".venv-muqmodel") / "bin" / "python"


def random_encoder() -> MelConformer:
    """A small encoder (2 x 64, 4 heads, conv 16) with every weight and BatchNorm statistic drawn."""
    torch.manual_seed(3)
    conformer = ConformerConfig(dim=64, num_layers=2, num_heads=4, ffn_dim=128, kernel=7, dropout=0.0,
                                attention_dropout=0.0, activation_dropout=0.0, conv_dropout=0.0, layerdrop=0.0)
    encoder = MelConformer(MusicFMConfig(conv_dim=16, conformer=conformer, mel_mean=6.768, mel_std=18.418))
    with torch.no_grad():
        for name, tensor in encoder.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.5 if "norm" in name or "bn" in name else 0.1)
    return encoder.eval()


def main() -> int:
    if not REFERENCE_PYTHON.exists():
        print(f"parity-muq-model: {REFERENCE_PYTHON} is missing; run `make parity-muq-model`", file=sys.stderr)
        return 1
    encoder = random_encoder()
    t = np.arange(3 * 24_000) / 24_000
    wav = (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 2 * t))
           + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)[None]
    with tempfile.TemporaryDirectory() as job_dir:
        job = Path(job_dir)
        export_muq(encoder, job / "model")
        np.savez(job / "inputs.npz", wav=wav)
        subprocess.run([str(REFERENCE_PYTHON), str(ROOT / "benchmarks" / "muq_model_side.py"), str(job)],
                       check=True, env={**os.environ, "PYTHONPATH": ""})
        theirs = dict(np.load(job / "muq.npz"))
        loaded = load_muq(job / "model")
    with torch.no_grad():
        ours = loaded(torch.from_numpy(wav)).layers
        truth = copy.deepcopy(loaded).double()(torch.from_numpy(wav)).layers
    failed = 0
    for index, (mine, true) in enumerate(zip(ours, truth)):
        reference = torch.from_numpy(theirs[f"layer{index}"])
        if reference.shape != mine.shape:
            print(f"FAIL layer {index}: MuQ {tuple(reference.shape)}, ours {tuple(mine.shape)}")
            failed += 1
            continue
        error, tolerance = float64_calibrated(mine, reference, true)
        ok = error <= tolerance
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} layer {index} {tuple(mine.shape)}: max |ours - MuQ| {error:.2e} "
              f"(tolerance {tolerance:.2e})")
    print(f"{len(ours) - failed} of {len(ours)} hidden states within tolerance; MuQ.from_pretrained read our "
          "directory", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
