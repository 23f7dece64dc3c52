"""CQT parity with nnAudio's `CQT1992v2` as MERT builds it (the `nnAudio` package on PyPI): the
kernels (a digest of the float32 tensors) and the magnitudes of every case of
tests/models/cqt_cases.py. Exits 1 when a comparison fails.

    make parity-cqt
    .venv/bin/python benchmarks/cqt_parity.py [--write-fixtures]

nnAudio runs in its own venv (`.venv-nnaudio`: torch 2.13, nnAudio with its scipy), through
benchmarks/cqt_side.py, the answers exchanged as an .npz file. Our kernels are the same float64
numpy operations rounded once to float32, so they must be equal bit for bit; the full-width transform
(`ConstantQTransform(full_width=True)`) is then the same float32 convolution on the same shapes, so on
one machine its magnitudes are equal bit for bit too (what this script asks); the default, each
octave's kernels cut to their non-zero span, sums the same products in another order and must be
within the rounding bound of two such sums. `--write-fixtures` stores the "pinned" case's magnitudes and the
kernel digest in tests/models/fixtures/cqt_reference.safetensors, which tests/models/test_cqt.py
checks our code against without nnAudio (there within a derived bound, since another CPU's
convolution kernel may sum in another order).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

from musicssl.models.cqt import ConstantQTransform

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.*
from tests.models.cqt_cases import CASES, case_input  # noqa: E402
from tests.numerics import gamma  # noqa: E402

REFERENCE_PYTHON = ROOT / os.environ.get("NNAUDIO_VENV", ".venv-nnaudio") / "bin" / "python"
FIXTURE = ROOT / "tests" / "models" / "fixtures" / "cqt_reference.safetensors"


def kernel_digest(cqt: ConstantQTransform) -> bytes:
    kernels = cqt._on(torch.device("cpu"))
    return hashlib.sha256(kernels["real"].numpy().tobytes() + kernels["imag"].numpy().tobytes()).digest()


def rounding_bound(cqt: ConstantQTransform, wav: torch.Tensor) -> np.ndarray:
    """Two orders of summing the same 65,536 products each: 2 gamma(W) x the sum of |terms| (tests/numerics.py)."""
    kernels = cqt._on(wav.device)
    x = F.pad(wav.double().abs()[:, None], (cqt.width // 2, cqt.width // 2))
    terms = [F.conv1d(x, kernels[part].double().abs(), stride=cqt.config.hop) * kernels["scale"].double()
             for part in ("real", "imag")]
    return (2 * gamma(cqt.width) * torch.sqrt(terms[0] ** 2 + terms[1] ** 2)).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-fixtures", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as job_dir:
        subprocess.run([str(REFERENCE_PYTHON), str(ROOT / "benchmarks" / "cqt_side.py"), job_dir], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        reference = dict(np.load(Path(job_dir) / "nnaudio.npz"))
    cqt, octaves = ConstantQTransform(full_width=True), ConstantQTransform()
    failed = []
    same_kernels = (kernel_digest(cqt) == reference["kernel_digest"].tobytes()
                    and cqt.width == int(reference["kernel_width"]))
    verdict = "equal bit for bit" if same_kernels else "DIFFER"
    print(f"kernels (336 x {cqt.width}, float32 real and imaginary): {verdict}")
    failed += [] if same_kernels else ["kernels"]
    for name, batch, samples, seed in CASES:
        wav = torch.from_numpy(case_input(batch, samples, seed))
        with torch.no_grad():
            ours, fast = cqt(wav).numpy(), octaves(wav).numpy()
        theirs = reference[f"{name}/cqt"]
        equal = ours.shape == theirs.shape and np.array_equal(ours, theirs)
        difference = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("inf")
        print(f"{name}: {batch} x {samples} samples -> {tuple(ours.shape)}, full width: max |ours - nnAudio| "
              f"{difference:.3g} (max magnitude {float(np.abs(theirs).max()):.3g}): "
              f"{'equal bit for bit' if equal else 'DIFFER'}")
        bound = rounding_bound(octaves, wav) + 8 * 2.0**-24 * np.abs(theirs)
        error = np.abs(fast.astype(np.float64) - theirs)
        within = fast.shape == theirs.shape and bool((error <= bound).all())
        print(f"{name}: octave spans (the default): max |ours - nnAudio| {float(error.max()):.3g}, at most "
              f"{float((error / bound).max()):.2g} of the rounding bound: {'within' if within else 'OUTSIDE'}")
        failed += ([] if equal else [name]) + ([] if within else [f"{name} (octave spans)"])
    if args.write_fixtures and not failed:
        save_file({"pinned/cqt": reference["pinned/cqt"], "kernel_digest": reference["kernel_digest"],
                   "kernel_lengths": reference["lengths"]}, str(FIXTURE), metadata={"nnaudio": "0.3.4"})
        print(f"wrote {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size / 1024:.0f} KB)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
