"""MuQ's side of `make parity-muq`, run in the reference venv (`.venv-muq`: torch 2.13, einops,
numpy, and the `muq` package installed with --no-deps; no musicssl): MuQ's own
`ResidualVectorQuantize` on the cases of tests/targets/muq_cases.py.

    python benchmarks/muq_rvq_side.py JOB_DIR

Only `muq/muq/modules/rvq.py` is loaded, from its file: the package's __init__ imports MuQ's whole
model (transformers, torchaudio, which does not install beside torch 2.13), and rvq.py needs none
of it. For each case: the weights of `torch.manual_seed(init_seed)` + MuQ's constructor, the
eval-mode codes, a training-mode forward (codes, losses by MuQ's `get_loss`, gradients) in float32
and float64, a forward after which every code is due for replacement, and a few steps of the
fitting script's Adam loop. Answers go to JOB_DIR/muq.npz.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.targets.muq_cases import ADAM_STEPS, CASES, REPLACEMENT_SEED, STALE_TOLERANCE, case_input  # noqa: E402


def import_rvq():
    package = importlib.util.find_spec("muq")  # does not run the package's __init__
    if package is None:
        raise SystemExit("muq is not installed in this venv (pip install --no-deps muq)")
    path = Path(package.submodule_search_locations[0]) / "muq" / "modules" / "rvq.py"
    spec = importlib.util.spec_from_file_location("muq_rvq", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_case(rvq_module, name, num_codebooks, codebook_size, code_dim, init_seed, batch, tokens, input_seed, out):
    torch.manual_seed(init_seed)
    # MuQModel's arguments (muq_model.py L72-79); stale_tolerance is the class default.
    model = rvq_module.ResidualVectorQuantize(input_dim=512, n_codebooks=num_codebooks, codebook_size=codebook_size,
                                              codebook_dim=code_dim, quantizer_dropout=0.0)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for key, value in state.items():
        out[f"{name}/state/{key}"] = value.numpy()
    x = torch.from_numpy(case_input(batch, tokens, input_seed))
    model.eval()
    with torch.no_grad():
        out[f"{name}/eval_codes"] = model(x)[1].numpy()
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
        model.load_state_dict(state)
        model = model.to(dtype).train()
        z = x.to(dtype)
        quantized, codes, _, commitment, codebook, _ = model(z)
        loss = model.get_loss(z, quantized, commitment, codebook)
        model.zero_grad()
        loss.backward()
        out[f"{name}/train_codes{suffix}"] = codes.numpy()
        out[f"{name}/reconstruction{suffix}"] = quantized.detach().numpy()
        for label, value in (("loss", loss), ("commitment_loss", commitment), ("codebook_loss", codebook),
                             ("reconstruction_loss", (z - quantized).abs().mean())):
            out[f"{name}/{label}{suffix}"] = np.asarray(value.item(), dtype=np.float64)
        for key, parameter in model.named_parameters():
            out[f"{name}/grad{suffix}/{key}"] = parameter.grad.numpy().copy()
    # Every code due: one more unused call replaces it, with permutations from the global generator
    # (after the quantizer-dropout draw MuQ's forward makes first).
    model = model.float()
    model.load_state_dict(state)
    model.train()
    for quantizer in model.quantizers:
        quantizer.stale_counter.fill_(STALE_TOLERANCE - 1)
    torch.manual_seed(REPLACEMENT_SEED)
    with torch.no_grad():
        codes = model(x)[1]
    out[f"{name}/replacement_codes"] = codes.numpy()
    for index, quantizer in enumerate(model.quantizers):
        out[f"{name}/replaced/{index}/codebook"] = quantizer.codebook.weight.detach().numpy().copy()
        out[f"{name}/replaced/{index}/stale_counter"] = quantizer.stale_counter.numpy().copy()
    # The fitting script's loop (rvq_trainer.py L274-282): Adam at 1e-4, every code due at step 2.
    model.load_state_dict(state)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(REPLACEMENT_SEED + 1)
    for step in range(ADAM_STEPS):
        if step == 1:
            for quantizer in model.quantizers:
                quantizer.stale_counter.fill_(STALE_TOLERANCE - 1)
        optimizer.zero_grad()
        quantized, codes, _, commitment, codebook, _ = model(x)
        loss = model.get_loss(x, quantized, commitment, codebook)
        loss.backward()
        optimizer.step()
        out[f"{name}/adam/loss/{step}"] = np.asarray(loss.item(), dtype=np.float64)
    for key, value in model.state_dict().items():
        out[f"{name}/adam/state/{key}"] = value.numpy().copy()


def main() -> int:
    job = Path(sys.argv[1])
    rvq_module = import_rvq()
    out: dict[str, np.ndarray] = {}
    for case in CASES:
        run_case(rvq_module, *case, out)
    np.savez(job / "muq.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
