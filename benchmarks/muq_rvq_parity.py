"""Mel-RVQ parity with MuQ's own `ResidualVectorQuantize` (tencent-ailab/MuQ rvq.py, the `muq`
0.1.0 package): the weights a seed gives, the codes, losses and gradients of the same batch,
stale-code replacement, and a few steps of MuQ's fitting loop. Exits 1 when a comparison fails.

    make parity-muq
    .venv/bin/python benchmarks/muq_rvq_parity.py [--write-fixtures]

Our side runs here; MuQ's in its own venv (`.venv-muq`: torch 2.13, einops, numpy, `muq` with
--no-deps), through benchmarks/muq_rvq_side.py, the answers exchanged as an .npz file.
`--write-fixtures` stores MuQ's codes and losses (and a sample of its weights and gradients) in
tests/targets/fixtures/muq_rvq.safetensors, which tests/targets/test_mel_rvq.py checks our code
against without MuQ.

Tolerances: both sides draw the weights from the same torch generator and compute with the same
float32 operations on the same shapes in the same layout, so weights and codes must be equal bit for
bit. Losses and gradients are compared with tests/numerics.py's `float64_calibrated`: within 8x the
reference's own float32 error against MuQ's code run in float64 (with the same codes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from musicssl.models.mel_rvq import MelRVQ, MelRVQConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.*
from tests.numerics import float64_calibrated  # noqa: E402
from tests.targets.muq_cases import ADAM_STEPS, CASES, REPLACEMENT_SEED, STALE_TOLERANCE, case_input  # noqa: E402

REFERENCE_PYTHON = ROOT / os.environ.get("MUQ_VENV", ".venv-muq") / "bin" / "python"
FIXTURE = ROOT / "tests" / "targets" / "fixtures" / "muq_rvq.safetensors"
SAMPLED = 64  # entries per weight / gradient tensor the fixture keeps (the whole base RVQ is ~1.4 MB)
LOSSES = ("loss", "commitment_loss", "codebook_loss", "reconstruction_loss")


def our_model(num_codebooks: int, codebook_size: int, code_dim: int, init_seed: int) -> MelRVQ:
    config = MelRVQConfig(num_codebooks=num_codebooks, codebook_size=codebook_size, code_dim=code_dim,
                          init_seed=init_seed, stale_tolerance=STALE_TOLERANCE, mel_mean=0.0, mel_std=1.0)
    return MelRVQ(config)


def quantizer_state(model: MelRVQ) -> dict[str, torch.Tensor]:
    """MuQ's state dict keys: ours without the mel statistics."""
    return {key: value for key, value in model.state_dict().items() if key.startswith("quantizers.")}


def our_answers(model: MelRVQ, x: torch.Tensor) -> dict[str, object]:
    model.eval()
    with torch.no_grad():
        eval_codes = model(x)["codes"]
    model.train()
    out = model(x)
    losses = model.loss(x, out)
    model.zero_grad()
    losses["loss"].backward()
    grads = {key: parameter.grad.clone() for key, parameter in model.named_parameters()}
    return {"eval_codes": eval_codes, "train_codes": out["codes"], "losses": losses, "grads": grads,
            "reconstruction": out["reconstruction"].detach()}


def our_replacement(case) -> tuple[MelRVQ, torch.Tensor]:
    name, num_codebooks, codebook_size, code_dim, init_seed, batch, tokens, input_seed = case
    model = our_model(num_codebooks, codebook_size, code_dim, init_seed).train()
    for stage in model.quantizers:
        stage.stale_counter.fill_(STALE_TOLERANCE - 1)
    generator = torch.Generator().manual_seed(REPLACEMENT_SEED)
    torch.randint(1, num_codebooks + 1, (batch,), generator=generator)  # MuQ's quantizer-dropout draw comes first
    with torch.no_grad():
        codes = model(torch.from_numpy(case_input(batch, tokens, input_seed)), generator)["codes"]
    return model, codes


def compare_case(case, reference: dict, table: list, fixture: dict) -> None:
    name, num_codebooks, codebook_size, code_dim, init_seed, batch, tokens, input_seed = case
    model = our_model(num_codebooks, codebook_size, code_dim, init_seed)
    state = quantizer_state(model)
    reference_keys = {key[len(f"{name}/state/"):] for key in reference if key.startswith(f"{name}/state/")}
    same_keys = set(state) == reference_keys
    same_weights = same_keys and all(np.array_equal(value.numpy(), reference[f"{name}/state/{key}"])
                                     for key, value in state.items())
    table.append((name, "state dict keys and shapes = MuQ's", "yes" if same_keys else "NO", same_keys))
    table.append((name, f"weights of seed {init_seed} equal bit for bit", "yes" if same_weights else "NO",
                  same_weights))
    x = torch.from_numpy(case_input(batch, tokens, input_seed))
    ours = our_answers(model, x)
    for label in ("eval_codes", "train_codes"):
        theirs = reference[f"{name}/{label}"]
        differing = int((ours[label].numpy() != theirs).sum())
        table.append((name, f"{label} differing (of {theirs.size}; {len(np.unique(theirs))} codes used)",
                      str(differing), differing == 0))
    f64_codes = bool(np.array_equal(reference[f"{name}/train_codes_f64"], reference[f"{name}/train_codes"]))
    table.append((name, "MuQ float64 codes = float32 codes (the truth is valid)", "yes" if f64_codes else "NO",
                  f64_codes))
    for label in LOSSES:
        error, tolerance = float64_calibrated(ours["losses"][label], torch.tensor(reference[f"{name}/{label}"]),
                                              torch.tensor(reference[f"{name}/{label}_f64"]))
        table.append((name, f"{label} {float(reference[f'{name}/{label}']):.6f}: |ours - MuQ| (tol {tolerance:.1e})",
                       f"{error:.1e}", error <= tolerance))
    checks = [float64_calibrated(grad, torch.from_numpy(reference[f"{name}/grad/{key}"]),
                                 torch.from_numpy(reference[f"{name}/grad_f64/{key}"]))
              for key, grad in ours["grads"].items()]
    table.append((name, f"{len(checks)} gradients: max |ours - MuQ| (tightest tol {min(t for _, t in checks):.1e})",
                  f"{max(e for e, _ in checks):.1e}", all(e <= t for e, t in checks)))
    replaced_model, replaced_codes = our_replacement(case)
    same_codes = np.array_equal(replaced_codes.numpy(), reference[f"{name}/replacement_codes"])
    same_books = all(
        np.array_equal(stage.codebook.weight.detach().numpy(), reference[f"{name}/replaced/{index}/codebook"])
        and np.array_equal(stage.stale_counter.numpy(), reference[f"{name}/replaced/{index}/stale_counter"])
        for index, stage in enumerate(replaced_model.quantizers))
    table.append((name, "stale-code replacement: codebooks and counters equal", "yes" if same_books and same_codes
                  else "NO", same_books and same_codes))
    compare_fitting(case, reference, table)
    _keep(name, state, reference, fixture, init_seed)


def compare_fitting(case, reference: dict, table: list) -> None:
    """rvq_fit's step (features aside) against MuQ's fitting loop: Adam at 1e-4, every code due at
    the second step; the permutations from a generator that also makes MuQ's quantizer-dropout draw."""
    name, num_codebooks, codebook_size, code_dim, init_seed, batch, tokens, input_seed = case
    model = our_model(num_codebooks, codebook_size, code_dim, init_seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(REPLACEMENT_SEED + 1)
    x = torch.from_numpy(case_input(batch, tokens, input_seed))
    same_losses = True
    for step in range(ADAM_STEPS):
        if step == 1:
            for stage in model.quantizers:
                stage.stale_counter.fill_(STALE_TOLERANCE - 1)
        torch.randint(1, num_codebooks + 1, (batch,), generator=generator)
        losses = model.loss(x, model(x, generator))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        same_losses &= float(losses["loss"].detach()) == float(reference[f"{name}/adam/loss/{step}"])
    same_state = all(np.array_equal(value.numpy(), reference[f"{name}/adam/state/{key}"])
                     for key, value in quantizer_state(model).items())
    table.append((name, f"{ADAM_STEPS} Adam steps with a replacement: losses and weights equal bit for bit",
                  "yes" if same_losses and same_state else "NO", same_losses and same_state))


def _keep(name: str, state: dict, reference: dict, fixture: dict, seed: int) -> None:
    """The fixture: MuQ's codes and losses whole, SAMPLED entries of each weight and gradient."""
    fixture[f"{name}/eval_codes"] = reference[f"{name}/eval_codes"].astype(np.int16)
    fixture[f"{name}/train_codes"] = reference[f"{name}/train_codes"].astype(np.int16)
    for label in LOSSES:
        fixture[f"{name}/{label}"] = reference[f"{name}/{label}"].reshape(1)
        fixture[f"{name}/{label}_f64"] = reference[f"{name}/{label}_f64"].reshape(1)
    rng = np.random.default_rng(seed)
    for key in state:
        size = reference[f"{name}/state/{key}"].size
        positions = np.sort(rng.choice(size, min(SAMPLED, size), replace=False))
        fixture[f"{name}/positions/{key}"] = positions
        fixture[f"{name}/state/{key}"] = reference[f"{name}/state/{key}"].reshape(-1)[positions]
        if f"{name}/grad/{key}" in reference:
            fixture[f"{name}/grad/{key}"] = reference[f"{name}/grad/{key}"].reshape(-1)[positions]
            fixture[f"{name}/grad_f64/{key}"] = reference[f"{name}/grad_f64/{key}"].reshape(-1)[positions]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-fixtures", action="store_true")
    args = parser.parse_args()
    if not REFERENCE_PYTHON.exists():
        print(f"parity-muq: {REFERENCE_PYTHON} is missing; `make parity-muq` builds it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as job_dir:
        # MuQ prints a line per replacement; its weight_norm import warns of a deprecation
        subprocess.run([str(REFERENCE_PYTHON), str(ROOT / "benchmarks" / "muq_rvq_side.py"), job_dir], check=True,
                       env={**os.environ, "PYTHONPATH": "", "PYTHONWARNINGS": "ignore::FutureWarning"},
                       stdout=subprocess.DEVNULL)
        reference = dict(np.load(Path(job_dir) / "muq.npz"))
    table: list[tuple[str, str, str, bool]] = []
    fixture: dict[str, np.ndarray] = {}
    for case in CASES:
        compare_case(case, reference, table, fixture)
    for case, what, value, ok in table:
        print(f"{'ok  ' if ok else 'FAIL'} {case:5s} {what:88s} {value}")
    failed = [row for row in table if not row[3]]
    if args.write_fixtures and not failed:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: np.ascontiguousarray(value) for key, value in fixture.items()}, str(FIXTURE))
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size // 1024} KB)")
    print(f"{len(table) - len(failed)} of {len(table)} comparisons passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
