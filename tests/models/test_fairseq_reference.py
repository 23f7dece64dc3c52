"""Our objectives pinned to fairseq's: values fairseq-fixed computed on the tiny parity cases
(tests/models/fairseq_cases.py), stored in fixtures/fairseq_reference.safetensors by
`make parity-fairseq` (`benchmarks/fairseq_parity.py --write-fixtures`), compared here against
our code without fairseq.

Tolerances (the issue's bounds, checked against the rounding they must absorb). Both sides are
fp32 and differ only in the order of operations (fused attention, a matmul head vs broadcast
cosines, summation orders), i.e. by rounding: eps32 = 1.2e-7 per operation. A value computed
through the tiny network's k ~ 40 sequential operations (7 convs, 4 blocks of ~8), with dot
products of length n <= 512, carries a relative error of about eps32 * sqrt(k * n) = 1.7e-5 at
worst: inside 1e-4 for activations and gradients. A loss summed over M ~ 60 frames whose terms
carry that error with random signs is off by about 1.7e-5 / sqrt(M) = 2e-6 relative: inside 1e-5.
A wrong sign, scale, target or mask moves a loss by far more (one masked frame more or less moves
the summed cross-entropy by ~1/60). The EMA step is elementwise: the teacher after it agrees to a
few ulps of its size (8 * 2^-24, derived at EMA_RTOL).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.models import fairseq_cases as cases

FIXTURE = Path(__file__).parent / "fixtures" / "fairseq_reference.safetensors"
LOSS_RTOL = 1e-5  # the tolerance on losses (fp32)
GRAD_RTOL = 1e-4  # on gradients (fp32); also activations (logits, targets), outputs of the same network
# The EMA step d t + (1 - d) s, elementwise: on each side up to 4 roundings (1 - d, the two
# products, the sum; an FMA kernel skips one, a plain one does not: the CPU decides), each of at
# most an ulp of the teacher's scale. Two sides: 8 ulps of the largest value (measured 4.6 on
# torch's unvectorised kernels, ATEN_CPU_CAPABILITY=default).
EMA_RTOL = 8 * 2.0**-24


def reference(case: str) -> dict[str, torch.Tensor]:
    stored = load_file(FIXTURE)
    values = {k.split("/", 1)[1]: v for k, v in stored.items() if k.startswith(f"{case}/")}
    assert values, f"{FIXTURE} has no values for {case}; run `make parity-fairseq` (it writes the fixtures)"
    return values


def assert_relative(ours: torch.Tensor, ref: torch.Tensor, rtol: float, what: str) -> None:
    """max |ours - ref| <= rtol * max |ref| over the tensor (elementwise rtol would fail on values
    that cancel to ~0, whose absolute rounding follows the tensor's scale, not their own)."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != fairseq's {tuple(ref.shape)}"
    error = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    assert error <= rtol * scale, f"{what}: max difference {error:.3g} > {rtol} x {scale:.3g}"


@pytest.mark.parametrize("name", ["hubert_tiny_100hz", "hubert_tiny_two_sets_50hz"])
def test_musichubert_equals_fairseq_hubert_and_its_criterion(name):
    case, ref = cases.HUBERT_CASES[name], reference(name)
    ours = cases.run_ours_hubert(case, cases.hubert_inputs(case))
    assert ours["sample_size"].item() == ref["sample_size"].item()
    for key in ["loss", "features_pen"] + [k for k in ref if k.startswith("loss_")]:
        assert_relative(ours[key], ref[key], LOSS_RTOL, key)
    for i in range(len(case.codebooks)):
        for kind in ("m", "u"):
            logits = ours[f"logits_{kind}_{i}"]
            assert_relative(logits[:4], ref[f"logits_{kind}_{i}.rows"], GRAD_RTOL, f"logits_{kind}_{i}")
            assert_relative(logits.logsumexp(-1), ref[f"logits_{kind}_{i}.logsumexp"], GRAD_RTOL,
                            f"logsumexp of logits_{kind}_{i}")
    _assert_gradients(ours, ref)


def test_music2vec_equals_fairseq_data2vec_audio():
    case, ref = cases.MUSIC2VEC_CASES["music2vec_tiny"], reference("music2vec_tiny")
    ours = cases.run_ours_music2vec(case, cases.music2vec_inputs(case))
    assert ours["sample_size"].item() == ref["sample_size"].item()
    for key in ("loss", "target_var", "pred_var"):
        assert_relative(ours[key], ref[key], LOSS_RTOL, key)
    assert_relative(ours["target"][:4], ref["target.rows"], GRAD_RTOL, "targets at masked frames")
    assert_relative(ours["prediction"][:4], ref["prediction.rows"], GRAD_RTOL, "predictions at masked frames")
    for key in [k for k in ref if k.startswith("layer_result_")]:
        assert_relative(ours[key[:-len(".rows")]][0, :4], ref[key], GRAD_RTOL, key)
    _assert_gradients(ours, ref)
    # The EMA step: the decay in float64 exactly, the teacher after it to a few fp32 ulps of its size.
    assert ours["ema_decay"].item() == pytest.approx(ref["ema_decay"].item(), rel=1e-15)
    for key in [k for k in ref if k.startswith("ema_norm.")]:
        assert_relative(ours[f"ema.{key[len('ema_norm.'):]}"].double().norm(), ref[key], EMA_RTOL, key)
    for key in ("ema.layer_norm.weight", "ema.layers.0.feed_forward.fc2.bias"):
        assert_relative(ours[key], ref[key], EMA_RTOL, key)


def _assert_gradients(ours: dict, ref: dict) -> None:
    norms = {k[len("grad_norm."):]: v for k, v in ref.items() if k.startswith("grad_norm.")}
    assert set(norms) == {k[len("grad."):] for k in ours if k.startswith("grad.")}, "gradients of other parameters"
    for name, norm in norms.items():
        if name.endswith("attention.k_proj.bias"):
            # Zero exactly (a bias shared by all keys shifts a query's scores by a constant, which
            # softmax ignores): both sides hold rounding noise, bounded by the key weight's scale.
            weight_norm = norms[name[:-len("bias")] + "weight"].item()
            assert ours[f"grad.{name}"].double().norm() <= GRAD_RTOL * weight_norm and norm <= GRAD_RTOL * weight_norm
            continue
        assert_relative(ours[f"grad.{name}"].double().norm(), norm, GRAD_RTOL, f"gradient norm of {name}")
    for key in [k for k in ref if k.startswith("grad.")]:
        assert_relative(ours[key], ref[key], GRAD_RTOL, key)


@pytest.mark.parametrize("name", sorted(cases.SCHEDULES) + sorted(cases.EMA_SCHEDULES))
def test_schedules_equal_fairseq_schedulers(name):
    ref = reference("schedules")
    steps = ref[f"{name}.steps"].tolist()
    if name in cases.SCHEDULES:
        ours = cases.ours_schedule(cases.SCHEDULES[name], steps)
    else:
        ours = cases.ours_ema_schedule(*cases.EMA_SCHEDULES[name], steps)
    # The same float64 formulas as fairseq's: equal up to float64 rounding of a few operations.
    torch.testing.assert_close(ours, ref[f"{name}.values"], rtol=1e-12, atol=0)
