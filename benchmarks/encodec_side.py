"""The `encodec` package's side of benchmarks/encodec_parity.py, run in its venv (.venv-encodec: torch
2.13, einops, numpy, encodec 0.1.1 without its dependencies): `EncodecModel.encodec_model_24khz(
pretrained=False)` with the random weights of tests/models/encodec_cases.py, saved as EnCodec
publishes its checkpoints (`torch.save(model.state_dict())`) to JOB_DIR/encodec_24khz_random.th, and
its latents and 6 kbps codes of each case in JOB_DIR/encodec.npz."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch

# encodec/utils.py imports torchaudio at the top for `convert_audio` and `save_audio` (resampling and
# file output), which the encoder and quantiser never call. torchaudio from the registry is a CUDA
# build that does not load beside the CPU torch 2.13, so an empty stand-in module takes its place:
# any use of it would fail loudly (AttributeError), none happens here.
sys.modules["torchaudio"] = types.ModuleType("torchaudio")
from encodec import EncodecModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models.encodec_cases import CASES, case_input, published_tensor  # noqa: E402


def main(job_dir: str) -> None:
    torch.set_num_threads(1)
    model = EncodecModel.encodec_model_24khz(pretrained=False)  # eval mode, weight norm, causal, not normalised
    model.set_target_bandwidth(6.0)  # 8 codebooks; unset, encode would use all 32
    model.load_state_dict({key: published_tensor(key, tuple(value.shape))
                           for key, value in model.state_dict().items()})
    torch.save(model.state_dict(), Path(job_dir) / "encodec_24khz_random.th")
    answers = {}
    with torch.no_grad():
        for name, samples, seed in CASES:
            wav = torch.from_numpy(case_input(samples, seed))[None]  # (1, 1, n)
            frames = model.encode(wav)  # segment None: one frame of (codes (1, 8, T), scale None)
            assert len(frames) == 1 and frames[0][1] is None
            answers[f"{name}/codes"] = frames[0][0][0].T.numpy()  # (T, 8)
            answers[f"{name}/latents"] = model.encoder(wav)[0].numpy()  # (128, T)
    np.savez(Path(job_dir) / "encodec.npz", **answers)


if __name__ == "__main__":
    main(sys.argv[1])
