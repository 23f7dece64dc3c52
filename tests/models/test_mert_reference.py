"""Our MERT objective pinned to MERT's own code: the values `MERTModel` (yizhilll/MERT's mert_fairseq)
with fairseq's hubert criterion computed on the seeded tiny case of tests/models/mert_cases.py,
stored in fixtures/mert_reference.safetensors by `make parity-mert MERT_SRC=DIR
PARITY_ARGS=--write-fixtures`, compared here against our code without fairseq or MERT.

Tolerances are test_fairseq_reference.py's (derived there for the same tiny network): 1e-5 of the
value on losses, 1e-4 on logits and gradients. The CQT targets (MERT's nnAudio CQT of the clean
audio): the transform's own rounding against nnAudio is bounded and tested in test_cqt.py
(gamma(65,536) x the sum of |terms|; measured 1.3e-6 of the largest magnitude there, 0 here); this
test only has to catch a wiring error (the mixed audio instead of the clean, frames shifted or
transposed), which moves targets by a sizeable share of their largest value, so it uses that test's
own second check, 1e-3 of the largest target.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from tests.models import mert_cases as cases
from tests.models.test_fairseq_reference import GRAD_RTOL, LOSS_RTOL, _assert_gradients, assert_relative

FIXTURE = Path(__file__).parent / "fixtures" / "mert_reference.safetensors"
CQT_RTOL = 1e-3
CASE = "mert_tiny"


def test_mert_equals_merts_fairseq_model_and_criterion():
    stored = load_file(FIXTURE)
    ref = {k.split("/", 1)[1]: v for k, v in stored.items() if k.startswith(f"{CASE}/")}
    assert ref, f"{FIXTURE} has no values for {CASE}; run `make parity-mert MERT_SRC=DIR PARITY_ARGS=--write-fixtures`"
    case = cases.MERT_CASES[CASE]
    ours = cases.run_ours_mert(case, cases.mert_inputs(case))
    assert ours["sample_size"].item() == ref["sample_size"].item()
    for key in ["loss", "features_pen", "cqt_loss"] + [k for k in ref if k.startswith("loss_m_")]:
        assert_relative(ours[key], ref[key], LOSS_RTOL, key)
    for i in range(len(case.codebooks)):
        logits = ours[f"logits_m_{i}"]
        assert_relative(logits[:4], ref[f"logits_m_{i}.rows"], GRAD_RTOL, f"logits_m_{i}")
        assert_relative(logits.logsumexp(-1), ref[f"logits_m_{i}.logsumexp"], GRAD_RTOL, f"logsumexp of logits_m_{i}")
    assert_relative(ours["cqt_targets"][:, ::16], ref["cqt_targets.rows"], CQT_RTOL, "CQT targets")
    _assert_gradients(ours, ref)
