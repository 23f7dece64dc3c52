"""nnAudio's side of benchmarks/cqt_parity.py, run in the nnAudio venv (.venv-nnaudio: torch 2.13,
nnAudio and its scipy): MERT's CQT module on each case of tests/models/cqt_cases.py, written to
JOB_DIR/nnaudio.npz with a digest of its float32 kernels."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from nnAudio import features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models.cqt_cases import CASES, NNAUDIO_ARGUMENTS, case_input  # noqa: E402


def main(job_dir: str) -> None:
    torch.set_num_threads(1)
    cqt = features.cqt.CQT(**NNAUDIO_ARGUMENTS)  # MERT calls nnAudio's CQT (an alias of CQT1992v2)
    answers = {"kernel_width": np.array(cqt.kernel_width), "lengths": cqt.lenghts.numpy(),
               "kernel_digest": np.frombuffer(hashlib.sha256(cqt.cqt_kernels_real.numpy().tobytes()
                                                             + cqt.cqt_kernels_imag.numpy().tobytes()).digest(),
                                              dtype=np.uint8)}
    with torch.no_grad():
        for name, batch, samples, seed in CASES:
            answers[f"{name}/cqt"] = cqt(torch.from_numpy(case_input(batch, samples, seed))).numpy()
    np.savez(Path(job_dir) / "nnaudio.npz", **answers)


if __name__ == "__main__":
    main(sys.argv[1])
