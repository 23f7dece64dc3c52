"""EnCodec 24 kHz parity: our encoder and quantiser (src/musicssl/models/encodec.py, loaded by
src/musicssl/interop/encodec.py) against the `encodec` package 0.1.1 on the random weights and
waveforms of tests/models/encodec_cases.py. Exits 1 when a comparison fails.

    make parity-encodec
    .venv/bin/python benchmarks/encodec_parity.py [--write-fixtures]

`encodec` runs in its own venv (`.venv-encodec`) through benchmarks/encodec_side.py, which saves its
model's state dict as EnCodec publishes it (a .th pickle, the decoder and all 32 codebooks included);
we read that file with our allow-list unpickler, so the loader is under test too. Latents must be
within the float32 rounding the reference itself shows against our float64 run (tests/numerics.py
`float64_calibrated`), codes equal except at distance ties (counted; each flip must be within the
rounding bound of `compare_codes`). `--write-fixtures` stores the "pinned" case's answers in
tests/models/fixtures/encodec_reference.safetensors (the weights are regenerated from their seed).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from musicssl.interop.encodec import load_encodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.*
from tests.models.encodec_cases import CASES, WEIGHT_SEED, case_input, compare_codes  # noqa: E402
from tests.numerics import float64_calibrated  # noqa: E402

REFERENCE_PYTHON = ROOT / os.environ.get("ENCODEC_VENV", ".venv-encodec") / "bin" / "python"
FIXTURE = ROOT / "tests" / "models" / "fixtures" / "encodec_reference.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-fixtures", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    failed = []
    with tempfile.TemporaryDirectory() as job_dir:
        subprocess.run([str(REFERENCE_PYTHON), str(ROOT / "benchmarks" / "encodec_side.py"), job_dir], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        reference = dict(np.load(Path(job_dir) / "encodec.npz"))
        checkpoint = Path(job_dir) / "encodec_24khz_random.th"
        print(f"checkpoint: {checkpoint.stat().st_size / 2**20:.1f} MB, EnCodec's published format")
        ours, _ = load_encodec(checkpoint)
    truth = copy.deepcopy(ours).double()
    codebooks = ours.codebooks.numpy()
    for name, samples, seed in CASES:
        wav = torch.from_numpy(case_input(samples, seed))
        with torch.no_grad():
            out, out64 = ours(wav), truth(wav.double())
        latents, codes = out["latents"][0], out["codes"][0].numpy()
        theirs_latents, theirs_codes = torch.from_numpy(reference[f"{name}/latents"]), reference[f"{name}/codes"]
        if latents.shape != theirs_latents.shape or codes.shape != theirs_codes.shape:
            print(f"{name}: shapes differ: ours {tuple(latents.shape)} {codes.shape}, encodec "
                  f"{tuple(theirs_latents.shape)} {theirs_codes.shape}")
            failed.append(name)
            continue
        error, tolerance = float64_calibrated(latents, theirs_latents, out64["latents"][0])
        bitwise = torch.equal(latents, theirs_latents)
        print(f"{name}: {samples} samples -> {latents.shape[1]} frames; latents max |ours - encodec| {error:.3g} "
              f"(tolerance {tolerance:.3g}, max |latent| {float(theirs_latents.abs().max()):.3g})"
              f"{', equal bit for bit' if bitwise else ''}: {'within' if error <= tolerance else 'OUTSIDE'}")
        ties, failures = compare_codes(codes, theirs_codes, out64["latents"][0].numpy(), codebooks, tolerance)
        print(f"{name}: codes {codes.size - int((codes != theirs_codes).sum())} of {codes.size} equal; "
              f"{ties} frame(s) flipped at a distance tie; {len(failures)} flip(s) outside the rounding bound")
        for failure in failures:
            print(f"  {failure}")
        failed += ([] if error <= tolerance else [f"{name} latents"]) + ([] if not failures else [f"{name} codes"])
    if args.write_fixtures and not failed:
        _, samples, seed = CASES[0]
        save_file({"pinned/codes": np.ascontiguousarray(reference["pinned/codes"], dtype=np.int64),
                   "pinned/latents": np.ascontiguousarray(reference["pinned/latents"])}, str(FIXTURE),
                  metadata={"encodec": "0.1.1", "weight_seed": str(WEIGHT_SEED), "samples": str(samples),
                            "seed": str(seed)})
        print(f"wrote {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size / 1024:.0f} KB)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
