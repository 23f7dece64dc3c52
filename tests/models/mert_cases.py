"""The fixed cases of the MERT parity (benchmarks/mert_parity.py, `make parity-mert`) and of the test
that pins our side to the values MERT's own code gave (tests/models/test_mert_reference.py).

A case is the MusicHuBERT case of tests/models/fairseq_cases.py (weights drawn per parameter name,
forced mask, labels) on MERT's model: 24 kHz clips of equal length (MERT's task crops a batch to its
shortest clip, so it never pads), 8 codebooks at 75 Hz, the CQT head, and one in-batch mixture plan
drawn by our sampler, which MERT's side is made to follow (benchmarks/mert_side.py). This module
runs OUR side only (no fairseq or MERT import).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from musicssl.models.backbone_config import replace_backbone_config
from musicssl.models.masking import mask_spans
from musicssl.models.mert import MERT, MERTConfig, MixtureConfig, Segment, draw_mixture, mert_config
from tests.models.fairseq_cases import NO_DROPOUT, _generator, _padding, _weights, case_audio, case_weights


@dataclass(frozen=True)
class MERTCase:
    name: str
    preset: str = "tiny"  # "tiny" | "95m"
    codebooks: tuple[int, ...] = (64,) * 8  # MERT-v1: 8 x 1,024; smaller k keeps the fixture small
    clips: int = 3
    samples: int = 36_000  # 1.5 s at 24 kHz: 112 frames; room for MERT's 0.5-1.0 s segments
    mixture: MixtureConfig = field(default_factory=MixtureConfig)  # MERT-95M's
    mixture_seed: int = 0
    layer_norm_first: bool = False  # MERT-330M's pre-LN
    attention_relax: float = 0.0  # MERT-330M's 32: MERT's TransformerEncoder_extend layers
    label_shortfall: int = 0  # labels this many short of the CNN frames: MERT then trims frames
    seed: int = 0
    kept: str = ""  # why this case differs from MERT on purpose ("" = it must not differ)

    def config(self) -> MERTConfig:
        config = mert_config(self.preset, self.codebooks, final_dim=64, mixture=self.mixture,
                             attention_relax=self.attention_relax)
        return replace_backbone_config(config, isolate_padding=False, layer_norm_first=self.layer_norm_first,
                                       **NO_DROPOUT)


MERT_CASES = {c.name: c for c in [
    MERTCase("mert_tiny", mixture_seed=11),  # clips mixed with 3 and 2 segments (some spanning two clips), one clean
    MERTCase("mert_tiny_1024", codebooks=(1024,) * 8, mixture_seed=20),  # MERT-v1's 8 x 1,024 codes
    MERTCase("mert_95m", "95m", clips=2, samples=48_000, mixture_seed=2),
    # MERT-330M's recipe on the tiny model: pre-LN, attention_relax 32, segments of 0.5-1.5 s
    MERTCase("mert_tiny_330m_recipe", samples=48_000, mixture=MixtureConfig(max_samples=36_000), mixture_seed=2,
             layer_norm_first=True, attention_relax=32.0),
    # Kept on purpose (rows marked "kept", never failing):
    MERTCase("mert_tiny_short_labels", label_shortfall=1, mixture_seed=11,
             kept="labels short of the CNN frames: MERT drops the last CNN frame before the encoder "
                  "(forward_targets), we keep it in the encoder and out of the losses, as for HuBERT"),
]}


def mert_inputs(case: MERTCase) -> dict[str, Tensor]:
    """Weights (our names), batch, forced mask, labels (8 codebooks, exactly one per frame, so
    neither side trims) and the mixture plan as a (segments, 4) table: clip, source, length, position."""
    config = case.config()
    model = MERT(config)
    wav, lengths = case_audio(case.name, (case.samples,) * case.clips)
    frames, padding = _padding(model, wav, lengths)
    mask = mask_spans(case.clips, frames, config.mask, padding, generator=case.seed)
    g = _generator(case.name, "labels")
    labels = torch.stack([torch.randint(0, k, (case.clips, frames - case.label_shortfall), generator=g)
                          for k in config.codebooks], -1)
    plan = draw_mixture(case.clips, case.samples, config.mixture, np.random.default_rng(case.mixture_seed))
    return {"wav": wav, "lengths": lengths, "mask": mask, "labels": labels, "mixture": plan_table(plan),
            **{f"weight.{k}": v for k, v in case_weights(model, case.name).items()}}


def plan_table(plan) -> Tensor:
    rows = [(clip, s.source, s.length, s.position) for clip, segments in enumerate(plan) for s in segments]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)


def table_plan(table: Tensor, clips: int) -> list[list[Segment]]:
    plan = [[] for _ in range(clips)]
    for clip, source, length, position in table.tolist():
        plan[clip].append(Segment(source, length, position))
    return plan


def run_ours_mert(case: MERTCase, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our MERT on a case in training mode: each codebook's masked logits (M, K) in our class order and
    cross-entropy, the CQT targets (B, T_cqt, 336) of the clean audio and the CQT loss (MSE), the
    feature penalty, sample size, total loss and every parameter's gradient (`grad.<name>`)."""
    model = MERT(case.config())
    model.load_state_dict(_weights(inputs))
    model.train()
    logits: list[Tensor] = []
    head = model.logits
    model.logits = lambda hidden: (out := head(hidden), logits.extend(out))[0]  # masked first, then unmasked
    targets = {}
    model.cqt.register_forward_hook(lambda module, args, output: targets.update(cqt=output.detach()))
    plan = table_plan(inputs["mixture"], case.clips)
    result = model(inputs["wav"], inputs["lengths"], inputs["labels"], mask=inputs["mask"], mixture=plan)
    result["loss"].backward()
    sets = len(case.codebooks)
    suffixes = [""] + [f"_{i}" for i in range(1, sets)]
    out = {f"logits_m_{i}": logits[i].detach() for i in range(sets)}
    out |= {f"loss_m_{i}": result[f"masked_ce_sum{s}"].detach() for i, s in enumerate(suffixes)}
    out |= {"cqt_targets": targets["cqt"].transpose(1, 2).contiguous(),  # (B, T_cqt, K), as MERT's compute_cqt
            "cqt_loss": (result["cqt_se_sum"] / result["cqt_frames"]).detach(),
            "features_pen": result["feature_penalty"], "loss": result["loss"].detach(),
            "sample_size": torch.tensor(float(result["sample_size"]))}
    out |= {f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out

