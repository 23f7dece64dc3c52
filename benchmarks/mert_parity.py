"""MERT's objective against MERT's own fairseq code: our MERT model (models/mert.py) vs `MERTModel`
of the `mert_fairseq` user dir of a checkout of github.com/yizhilll/MERT, with fairseq's `hubert`
criterion and MERT's loss_weights [10, 1]; and our in-batch mixture sampler vs MERT's draws.
Exits 1 when a comparison fails.

    make parity-mert MERT_SRC=DIR       # builds .venv and .venv-fairseq (+ nnAudio) first
    .venv/bin/python benchmarks/mert_parity.py --mert-src DIR [--skip-base] [--batches 1500]
                                               [--cases NAME,...] [--write-fixtures]

MERT is on no package registry: the project neither ships nor downloads it. Our side runs here,
MERT's in `.venv-fairseq` (benchmarks/mert_side.py); the cases (weights, batch, forced mask, labels,
mixture plan) are in tests/models/mert_cases.py. Both sides get the same weights (in fairseq's names,
benchmarks/fairseq_parity.py's table), batch, mask, labels and mixture, in training mode with every
dropout off. Differences are relative, max |ours - MERT| / max |MERT| over a tensor, with the
tolerances of benchmarks/fairseq_parity.py (1e-5 losses, 1e-4 activations and gradients or 4x a
gradient's fp32 noise floor); the mixed input itself must be equal bit for bit (the same float32
additions in the same order). The mixture's statistics are chi-square tests of homogeneity between
our draws and MERT's, failing below p = 0.01 / (number of tests). `--write-fixtures` stores MERT's
values of the tiny case for tests/models/test_mert_reference.py.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fairseq_parity import (FAIRSEQ_PYTHON, FIXTURES, TOL, Table, compare_gradients, grads_to_ours,
                            logits_to_ours, relative, run_fairseq, summarise, to_fairseq, with_noise_floors)
from fairseq_parity_masks import chi2_statistic, histogram, merge_matrix
from musicssl.models.mert import MixtureConfig, apply_mixture, draw_mixture
from tests.models import mert_cases as cases
from tests.models.fairseq_cases import case_dict

MERT_MODEL = Path("mert_fairseq") / "models" / "mert" / "mert_model.py"
FIXTURE_CASE = "mert_tiny"
FIXTURE_GRADIENTS = ("cqt_head.bias", "final_proj.bias", "backbone.mask_embedding",
                     "backbone.encoder.layers.0.final_layer_norm.weight", "backbone.encoder.layer_norm.bias")
# Mixture statistics: MERT-95M's 5 s clips, batches of 8, at its probability 0.5 and at 0.2 (where
# MERT's inverted test mixes 1 - 0.2 of the clips).
MIXTURE_CLIPS, MIXTURE_SAMPLES = 8, 120_000
MIXTURE_PROBABILITIES = {"p0.5": 0.5, "p0.2": 0.2}


def compare_mert(table: Table, case, inputs: dict, ours: dict, ref: dict) -> None:
    config = case.config()
    extra = config.extra_classes
    for i in range(len(case.codebooks)):
        table.add(case.name, f"logits masked, codebook {i}",
                  relative(ours[f"logits_m_{i}"], logits_to_ours(ref[f"logits_m_{i}"], extra)), TOL["activation"])
        table.add(case.name, f"cross-entropy masked, codebook {i}", relative(ours[f"loss_m_{i}"], ref[f"loss_m_{i}"]),
                  TOL["loss"])
    mixed = apply_mixture(inputs["wav"], cases.table_plan(inputs["mixture"], case.clips), config.mixture.gain)
    table.add(case.name, f"mixed input ({len(inputs['mixture'])} segments)", relative(mixed, ref["mixed_wav"]), 0.0)
    table.add(case.name, "CQT targets (clean audio, every frame)", relative(ours["cqt_targets"], ref["cqt_targets"]),
              TOL["activation"])
    table.add(case.name, "CQT loss (MSE at masked frames)", relative(ours["cqt_loss"], ref["cqt_loss"]), TOL["loss"])
    table.add(case.name, "feature penalty", relative(ours["features_pen"], ref["features_pen"]), TOL["loss"])
    table.add(case.name, "sample size", relative(ours["sample_size"], ref["sample_size"]), 0.0)
    table.add(case.name, "total loss", relative(ours["loss"], ref["loss"]), TOL["loss"])
    rows = [k + extra for k in config.codebooks]
    compare_gradients(table, case.name, ours, grads_to_ours(ref, ours, "hubert", rows, extra))


# ---------------------------------------------------------------------------------------------
# Mixture statistics


def our_mixture_rows(probability: float, batches: int, seed: int) -> np.ndarray:
    """Our sampler's draws in the side's format: rows (batch, clip, count, source, length, position)."""
    rng, rows = np.random.default_rng(seed), []
    config = MixtureConfig(probability=probability)
    for batch in range(batches):
        for clip, segments in enumerate(draw_mixture(MIXTURE_CLIPS, MIXTURE_SAMPLES, config, rng)):
            rows += [(batch, clip, len(segments), s.source, s.length, s.position) for s in segments] or \
                [(batch, clip, 0, -1, -1, -1)]
    return np.array(rows, dtype=np.int64)


def homogeneity_p(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Chi-square test that two samples of integer categories come from one distribution
    (neighbouring categories merged until each expects >= 5): p, degrees of freedom."""
    from scipy.stats import chi2

    values = np.union1d(a, b)
    ha, hb = histogram(a, values), histogram(b, values)
    merge = merge_matrix(ha, hb)
    ha, hb = ha @ merge, hb @ merge
    return float(chi2.sf(chi2_statistic(ha, hb), len(ha) - 1)), len(ha) - 1


def clip_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.unique(rows[:, 0] * MIXTURE_CLIPS + rows[:, 1], return_index=True)[1]]  # one row per clip


def compare_mixtures(table: Table, ours: dict, mert: dict) -> None:
    """At p 0.5, five tests: the share of clips mixed, the segment count of a mixed clip, the
    segment length (12 bins of MERT-95M's 12,001 lengths), the position in its clip and the offset in
    the pool (each scaled to [0, 1) by its range, 10 bins). At p 0.2 each side against its own
    meaning (exact binomial tests): ours mixes p, MERT's code 1 - p; the difference is a kept row."""
    from scipy.stats import binomtest

    config, alpha = MixtureConfig(), 0.01 / 7
    pool = (MIXTURE_CLIPS - 1) * MIXTURE_SAMPLES
    a, b = ours["p0.5"], mert["p0.5"]
    ca, cb = clip_rows(a), clip_rows(b)
    p, dof = homogeneity_p((ca[:, 2] > 0).astype(int), (cb[:, 2] > 0).astype(int))
    table.add_test("mixture p 0.5", f"share mixed {np.mean(ca[:, 2] > 0):.4f} vs {np.mean(cb[:, 2] > 0):.4f}",
                   p, alpha, f"{len(ca)} clips a side, chi-square {dof} dof")
    mixed_a, mixed_b = ca[ca[:, 2] > 0], cb[cb[:, 2] > 0]
    p, dof = homogeneity_p(mixed_a[:, 2], mixed_b[:, 2])
    table.add_test("mixture p 0.5", f"segments per mixed clip {mixed_a[:, 2].mean():.3f} vs {mixed_b[:, 2].mean():.3f}",
                   p, alpha, f"chi-square {dof} dof")
    sa, sb = a[a[:, 2] > 0], b[b[:, 2] > 0]
    span = config.max_samples - config.min_samples + 1
    statistics = {
        "segment length": lambda s: (s[:, 4] - config.min_samples) * 12 // span,
        "position in the clip": lambda s: s[:, 5] * 10 // (MIXTURE_SAMPLES - s[:, 4] + 1),
        "offset in the other clips": lambda s: s[:, 3] * 10 // (pool - config.max_samples + 1),
    }
    means = {"segment length": 4, "position in the clip": 5, "offset in the other clips": 3}
    for name, binned in statistics.items():
        p, dof = homogeneity_p(binned(sa), binned(sb))
        column = means[name]
        table.add_test("mixture p 0.5", f"{name} {sa[:, column].mean():.0f} vs {sb[:, column].mean():.0f}", p, alpha,
                       f"{len(sa)} / {len(sb)} segments, chi-square {dof} dof")
    ca, cb = clip_rows(ours["p0.2"]), clip_rows(mert["p0.2"])
    na, nb = int((ca[:, 2] > 0).sum()), int((cb[:, 2] > 0).sum())
    table.add_test("mixture p 0.2", f"ours mixes p: {na / len(ca):.4f}", binomtest(na, len(ca), 0.2).pvalue, alpha,
                   "exact binomial test against 0.2")
    table.add_test("mixture p 0.2", f"MERT's code mixes 1 - p: {nb / len(cb):.4f}", binomtest(nb, len(cb), 0.8).pvalue,
                   alpha, "exact binomial test against 0.8 (`rand > mixture_prob`, mert_model.py:1090)")
    table.kept = "MERT's test is inverted; we mix with the probability the option names"
    table.add("mixture p 0.2", "share mixed, ours - MERT's", abs(na / len(ca) - nb / len(cb)), 0.0, table.kept)
    table.kept = ""


# ---------------------------------------------------------------------------------------------


def fixture_values(case, ours: dict, ref: dict) -> dict[str, torch.Tensor]:
    """MERT's values of the tiny case in our names and class order, trimmed to a few KB."""
    extra = case.config().extra_classes
    out = {}
    for i in range(len(case.codebooks)):
        logits = logits_to_ours(ref[f"logits_m_{i}"], extra)
        out[f"logits_m_{i}.rows"] = logits[:4]
        out[f"logits_m_{i}.logsumexp"] = logits.logsumexp(-1)
        out[f"loss_m_{i}"] = ref[f"loss_m_{i}"]
    out |= {k: ref[k] for k in ("features_pen", "loss", "sample_size", "cqt_loss")}
    out["cqt_targets.rows"] = ref["cqt_targets"][:, ::16].contiguous()  # every 16th frame of each clip
    grads = grads_to_ours(ref, ours, "hubert", [k + extra for k in case.config().codebooks], extra)
    out |= {f"grad_norm.{k[5:]}": v.double().norm() for k, v in grads.items()}
    out |= {f"grad.{name}": grads[f"grad.{name}"] for name in FIXTURE_GRADIENTS}
    return out


def write_fixture(values: dict, mert_src: Path) -> None:
    versions = subprocess.run([str(FAIRSEQ_PYTHON), "-c", "import importlib.metadata as m; print(*(m.version(p) for p "
                               "in ('fairseq-fixed', 'torch', 'nnAudio')))"],
                              capture_output=True, text=True, check=True).stdout.split()
    digest = hashlib.sha256((mert_src / MERT_MODEL).read_bytes()).hexdigest()[:16]
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / "mert_reference.safetensors"
    save_file({k: v.contiguous() for k, v in sorted(values.items())}, path,
              metadata={"fairseq-fixed": versions[0], "torch": versions[1], "nnAudio": versions[2],
                        "mert_model.py sha256": digest, "made_by": "benchmarks/mert_parity.py --write-fixtures"})
    print(f"wrote {len(values)} reference tensors to {path}")


def run_mert(job_dir: Path, jobs: list[dict]) -> None:
    run_fairseq(job_dir, jobs, side="mert_side.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mert-src", type=Path, required=True, help="a checkout of github.com/yizhilll/MERT")
    parser.add_argument("--batches", type=int, default=1500, help="mixture batches (of 8 clips) per side and setting")
    parser.add_argument("--skip-base", action="store_true", help="tiny models only (no 95M case)")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--write-fixtures", action="store_true",
                        help=f"also store MERT's values of {FIXTURE_CASE} for tests/models/test_mert_reference.py")
    args = parser.parse_args()
    if not (args.mert_src / MERT_MODEL).is_file():
        sys.exit(f"{args.mert_src / MERT_MODEL} not found: --mert-src (MERT_SRC) must name a checkout of "
                 "github.com/yizhilll/MERT (its mert_fairseq user dir)")
    mert_src = args.mert_src.resolve()
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mert_parity_") as tmp:
        job_dir, jobs, todo = Path(tmp), [], []
        for case in cases.MERT_CASES.values():
            if (args.skip_base and case.preset != "tiny") or (args.cases and case.name not in args.cases.split(",")):
                continue
            inputs = cases.mert_inputs(case)
            ours = with_noise_floors(cases.run_ours_mert, case, inputs)
            save_file({k: v.contiguous() for k, v in ours.items()}, job_dir / f"{case.name}.ours")
            extra = case.config().extra_classes
            save_file({k: v.contiguous() for k, v in inputs.items()}, job_dir / f"{case.name}.inputs")
            fs_inputs = to_fairseq(inputs, "hubert", [k + extra for k in case.config().codebooks], extra)
            save_file({k: v.contiguous() for k, v in fs_inputs.items()}, job_dir / f"{case.name}.in")
            jobs.append({"kind": "mert", "name": case.name, "input": f"{case.name}.in", "output": f"{case.name}.out",
                         "mert_src": str(mert_src), **case_dict(case)})
            todo.append(case)
        mixture_case = case_dict(cases.MERT_CASES["mert_tiny"])
        jobs.append({"kind": "mixture", "name": "mixture", "output": "mixture.out", "mert_src": str(mert_src),
                     "probabilities": MIXTURE_PROBABILITIES, "batches": args.batches, "clips": MIXTURE_CLIPS,
                     "clip_samples": MIXTURE_SAMPLES, "seed": 1, **mixture_case})
        print(f"our side done ({time.perf_counter() - started:.0f} s); running MERT's", flush=True)
        run_mert(job_dir, jobs)

        table = Table()
        print(f"\n{'case':34s} {'comparison':44s} {'max diff':>10s} {'tol':>8s}")
        for case in todo:
            ours, ref = load_file(job_dir / f"{case.name}.ours"), load_file(job_dir / f"{case.name}.out")
            inputs = load_file(job_dir / f"{case.name}.inputs")
            table.kept = case.kept
            if case.kept:
                print(f"{case.name}: differs on purpose: {case.kept}")
            compare_mert(table, case, inputs, ours, ref)
            table.kept = ""
            if args.write_fixtures and case.name == FIXTURE_CASE:
                write_fixture({f"{case.name}/{k}": v for k, v in fixture_values(case, ours, ref).items()}, mert_src)
        mert_rows = {k: v.numpy() for k, v in load_file(job_dir / "mixture.out").items()}
        ours_rows = {name: our_mixture_rows(p, args.batches, seed=2) for name, p in MIXTURE_PROBABILITIES.items()}
        compare_mixtures(table, ours_rows, mert_rows)
    return summarise(table, started)


if __name__ == "__main__":
    sys.exit(main())
