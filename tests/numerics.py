"""Tolerances derived from the computation, not from one machine's result.

Two runs of the same float computation agree only up to rounding, and where the rounding lands
depends on the summation order, which the BLAS / ATen kernel picks per CPU (AVX2, AVX-512, the
plain `ATEN_CPU_CAPABILITY=default` kernels, a GPU). So a test that compares two computations
either compares them where they are bit-for-bit the same computation (same kernels, same shapes),
or uses one of the bounds below.

- A sum of n terms, in any order, is off by at most gamma(n) * sum(|terms|) (Higham, *Accuracy
  and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5), gamma(n) = n u / (1 - n u), with
  u = 2^-24 in float32 and 2^-53 in float64. Two such sums differ by at most twice that.
- A deep network has no useful a-priori bound, so its float32 output is compared against the
  same network in float64 (exact to ~1e-15 here): `float64_calibrated` asserts that our float32
  output is no further from the float64 truth than a small multiple of the float32 rounding the
  reference itself shows, on this CPU, in this run.
"""

from __future__ import annotations

import numpy as np
import torch

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n: the relative error bound of an n-term sum in any order."""
    if n * u >= 1:
        raise ValueError(f"gamma({n}) is unbounded at u={u}")
    return n * u / (1 - n * u)


def matmul_bound(a: np.ndarray, b: np.ndarray, u: float = U32) -> np.ndarray:
    """Elementwise bound on |fl(a @ b) - a @ b| for any summation order (a: (M, n), b: (n, P))."""
    a64, b64 = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    return gamma(a64.shape[-1], u) * (a64 @ b64)


def float64_calibrated(ours: torch.Tensor, reference: torch.Tensor, truth: torch.Tensor,
                       factor: float = 8.0) -> tuple[float, float]:
    """(error, tolerance): our float32 `ours` vs the float32 `reference`, where `truth` is the
    reference computed in float64. The tolerance is `factor` times the reference's own float32
    error against the truth, plus a few ulps of the output's magnitude (so that a reference
    that happens to round exactly does not ask for exactness): both are rounding of the same
    computation, so on any CPU a correct `ours` is within a small multiple of it. A mapping
    bug is orders of magnitude larger."""
    ours, reference, truth = (t.detach().double() for t in (ours, reference, truth))
    reference_error = float((reference - truth).abs().max())
    floor = 4 * U32 * float(truth.abs().max())
    error = float((ours - reference).abs().max())
    return error, factor * (reference_error + floor)


def adam_step_bound(step: int, betas: tuple[float, float]) -> float:
    """The largest |m_hat / sqrt(v_hat)| Adam can take at update `step` (1-based), whatever the
    gradients: m_hat = sum a_i g_i and v_hat = sum b_i g_i^2 with the bias-corrected weights
    a_i, b_i (each summing to 1), so by Cauchy-Schwarz |m_hat| <= sqrt(sum a_i^2 / b_i) sqrt(v_hat)."""
    beta1, beta2 = betas
    ages = np.arange(step)  # how many updates ago each gradient came
    a = (1 - beta1) * beta1**ages / (1 - beta1**step)
    b = (1 - beta2) * beta2**ages / (1 - beta2**step)
    return float(np.sqrt(np.sum(a * a / b)))


def adamw_divergence_bound(learning_rates: list[float], betas: tuple[float, float]) -> float:
    """How far one parameter of two AdamW runs can drift apart when their gradients differ (by
    rounding or otherwise): each update moves a parameter by lr_t times a normalised step of at
    most `adam_step_bound`, in either direction, so two runs differ by at most twice the sum.
    (Weight decay shrinks a difference, it cannot grow it.) A test of equality that has only this
    is weak, by the nature of Adam near a zero gradient: use it only where the two runs' batches
    are composed differently, so that bit-for-bit equality is not to be had."""
    return 2 * sum(lr * adam_step_bound(t + 1, betas) for t, lr in enumerate(learning_rates))
