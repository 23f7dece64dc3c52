"""MERT's side of the parity (benchmarks/mert_parity.py runs it in `.venv-fairseq`, `make parity-mert`).

    .venv-fairseq/bin/python benchmarks/mert_side.py JOB_DIR

JOB_DIR/jobs.json lists the jobs (as benchmarks/fairseq_side.py's); each names MERT's checkout
(`mert_src`, a copy of github.com/yizhilll/MERT) whose fairseq user dir `mert_fairseq` it imports.
Imports only torch, numpy, safetensors, fairseq, nnAudio (MERT's CQT) and MERT's code: nothing from
musicssl, so every number it writes is MERT's own.

Jobs:
- mert: MERTModel (mert_fairseq/models/mert/mert_model.py) + fairseq's `hubert` criterion with
  MERT's loss_weights [10, 1] (features_pen, cqt_pred_m; MERT_RVQ-VAE_CQT_95M.yaml:47-50). The mask
  is forced through `compute_mask_indices` (as the hubert job); the in-batch mixture through the
  `torch.rand` / `torch.randint` calls MERT's forward makes, answered from our plan after checking
  that each call asks for the range our sampler drew from (`Draws`).
- mixture: MERT's forward with its own torch RNG, stopped right after the mixture, on many batches;
  every draw recorded (`Draws`) and decoded into the segments each clip received.
- speed: MERT's training step (its own mask and mixture draws), timed, for
  benchmarks/pretrain_speed.py --method mert.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import torch

from fairseq_side import (criterion_sample, encoder_fields, label_dictionaries, load_weights, run_criterion, run_jobs,
                          timed_steps)


def import_mert(mert_src: str):
    """MERT's model module from the checkout. It imports torchaudio for its mel head
    (`model_mel_pred`, used only with audio_mel_loss_m, off in both MERT recipes), and no torchaudio
    release pairs with torch 2.13: the one fairseq-fixed pulls in (2.11) fails to load its library
    beside torch 2.13 (OSError). Then an empty stand-in satisfies the import; building the mel head
    would fail loudly."""
    try:
        importlib.import_module("torchaudio")
    except (ImportError, OSError):
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
        sys.modules["torchaudio"].transforms = types.ModuleType("torchaudio.transforms")
    sys.path.insert(0, mert_src)
    from mert_fairseq.models.mert import mert_model

    # MERT was written against fairseq 0.12.2, whose TransformerEncoder calls build_encoder_layer(args);
    # 0.12.3 adds a `layer_idx` keyword, which MERT's override (the attention_relax / deepnorm
    # encoder, mert_model.py:1387) does not take and none of its layers reads: dropped here.
    extend = mert_model.TransformerEncoder_extend
    if not hasattr(extend, "_build_layer_0_12_2"):
        extend._build_layer_0_12_2 = extend.build_encoder_layer
        extend.build_encoder_layer = lambda self, args, **kwargs: self._build_layer_0_12_2(args)
    return mert_model


def mert_model(mert, job: dict, mixture_prob: float, cqt: bool = True):
    model_cfg, backbone = job["model"], job["backbone"]
    mixture = model_cfg["mixture"]
    cfg = mert.MERTConfig(
        label_rate=model_cfg["label_rate_hz"], final_dim=model_cfg["final_dim"], untie_final_proj=True,
        logit_temp=model_cfg["logit_temperature"], mask_prob=model_cfg["mask"]["mask_prob"],
        mask_length=model_cfg["mask"]["mask_length"], skip_masked=False, skip_nomask=True,  # [95M]:70-71
        audio_cqt_loss_m=cqt, audio_cqt_bins=model_cfg["cqt"]["n_bins"], mixture_prob=mixture_prob,
        inbatch_noise_augment_len_range=str([mixture["min_samples"], mixture["max_samples"]]),
        inbatch_noise_augment_number_range=str([mixture["min_segments"], mixture["max_segments"]]),
        inbatch_noise_augment_volume=mixture["gain"],
        attention_relax=model_cfg["attention_relax"] if model_cfg["attention_relax"] > 0 else -1.0,  # MERT's "off"
        **encoder_fields(backbone))
    task = types.SimpleNamespace(sample_rate=backbone["sample_rate"])
    return mert.MERTModel(cfg, task, label_dictionaries(model_cfg))


class Draws:
    """Stands in for `torch` in MERT's module: every attribute is torch's except `rand` and `randint`.
    With a script (a list of ("rand", value) / ("randint", low, high, values)), each call must ask
    for the scripted range and size and gets the scripted values; without one, torch's own values are
    returned and logged. MERT's mixture catches every exception (mert_model.py:1096), so a call
    that does not fit the script is recorded in `errors` as well as raised."""

    def __init__(self, script: list | None = None):
        self.script, self.log, self.errors = script, [], []

    def __getattr__(self, name):
        return getattr(torch, name)

    def _expect(self, call: tuple):
        expected = self.script.pop(0) if self.script else None
        if expected is None or expected[:-1] != call:
            self.errors.append(f"MERT asked for {call}, the plan has {expected and expected[:-1]}")
            raise RuntimeError(self.errors[-1])
        return expected[-1]

    def rand(self, *size, **kwargs):
        if self.script is None:
            value = torch.rand(*size, **kwargs)
        else:
            value = torch.tensor(self._expect(("rand", tuple(size))), dtype=torch.float32)
        self.log.append(("rand", value.tolist()))
        return value

    def randint(self, low, high, size, **kwargs):
        low, high, size = int(low), int(high), tuple(int(s) for s in size)
        if self.script is None:
            value = torch.randint(low, high, size, **kwargs)
        else:
            value = torch.tensor(self._expect(("randint", low, high, size)), dtype=torch.int64)
        self.log.append(("randint", low, high, value.tolist()))
        return value


def plan_script(plan: np.ndarray, clips: int, clip_samples: int, mixture: dict) -> list:
    """The draws MERT's forward makes for our plan (rows: clip, source, length, position), in its
    order (mert_model.py:1089-1094, :830-845): per clip `rand(1)` (mixed when > mixture_prob = 0.5,
    so 0.75 / 0.25), then for a mixed one the segment count, every source offset, every length and
    each segment's position."""
    pool = (clips - 1) * clip_samples
    script = []
    for clip in range(clips):
        rows = plan[plan[:, 0] == clip]
        script.append(("rand", (1,), [0.75 if len(rows) else 0.25]))
        if len(rows):
            n = len(rows)
            script += [("randint", mixture["min_segments"], mixture["max_segments"] + 1, (1,), [n]),
                       ("randint", 0, pool - mixture["max_samples"] + 1, (n,), rows[:, 1].tolist()),
                       ("randint", mixture["min_samples"], mixture["max_samples"] + 1, (n,), rows[:, 2].tolist())]
            script += [("randint", 0, clip_samples - length + 1, (1,), [position]) for length, position in rows[:, 2:]]
    return script


def mert_job(job: dict, inputs: dict) -> dict:
    from fairseq.criterions.hubert_criterion import HubertCriterion

    mert = import_mert(job["mert_src"])
    model_cfg = job["model"]
    if model_cfg["mixture"]["probability"] != 0.5:
        raise ValueError("the forced mixture assumes MERT's probability 0.5 (its test is inverted elsewhere)")
    model = mert_model(mert, job, mixture_prob=0.5)
    load_weights(model, inputs, ignore=("encoder_cqt_model.spec_layer.",))  # nnAudio's fixed kernels
    model.train()

    forced = inputs["mask"].numpy().astype(bool)
    mert.compute_mask_indices = lambda shape, *args, **kwargs: forced[:, :shape[1]]
    wav = inputs["wav"].clone()  # MERT mixes its input in place
    draws = Draws(plan_script(inputs["mixture"].numpy(), wav.shape[0], wav.shape[1], model_cfg["mixture"]))
    mert.torch = draws
    captured = {}
    cqt_model = model.encoder_cqt_model
    compute_cqt = cqt_model.compute_cqt
    cqt_model.compute_cqt = lambda x: (out := compute_cqt(x), captured.update(cqt=out.detach().clone()))[0]
    criterion = HubertCriterion(None, model_cfg["masked_weight"], model_cfg["unmasked_weight"],
                                loss_weights=[model_cfg["feature_penalty_weight"], model_cfg["cqt_weight"]])
    sample = criterion_sample(dict(inputs, wav=wav), model_cfg["extra_classes"])
    out, result = run_criterion(model, criterion, sample, len(model.num_classes))
    mert.torch = torch
    if draws.errors or draws.script:
        raise RuntimeError(f"MERT's mixture did not follow the plan: {draws.errors or draws.script}")
    out |= {"cqt_targets": captured["cqt"], "cqt_loss": result["cqt_pred_m"].detach(), "mixed_wav": wav}
    return out


class _Stop(Exception):
    pass


def _stop(source):
    raise _Stop  # MERT's forward_features: the mixture is done, the rest is not needed here


def mixture_job(job: dict, inputs: dict) -> dict:
    """`batches` batches of `clips` silent clips through MERT's forward at each probability: the
    segments each clip received, as rows (batch, clip, count, source, length, position), and a
    clean clip as a row with count 0."""
    mert = import_mert(job["mert_src"])
    torch.manual_seed(job["seed"])
    out = {}
    for name, probability in job["probabilities"].items():
        model = mert_model(mert, job, mixture_prob=probability, cqt=False)
        model.forward_features = _stop
        rows = []
        for batch in range(job["batches"]):
            mert.torch = draws = Draws()
            try:
                model(torch.zeros(job["clips"], job["clip_samples"]), padding_mask=None, mask=False)
            except _Stop:
                pass
            finally:
                mert.torch = torch
            rows += decode(draws.log, batch, probability, job["clips"])
        out[name] = torch.tensor(rows, dtype=torch.int64)
    return out


def decode(log: list, batch: int, probability: float, clips: int) -> list:
    """One batch's recorded draws -> rows (batch, clip, count, source, length, position); a clean
    clip is one row (batch, clip, 0, -1, -1, -1). MERT mixes a clip when its rand(1) > probability."""
    rows, i = [], 0
    for clip in range(clips):
        kind, (value,) = log[i][:2]
        i += 1
        if kind != "rand":
            raise ValueError(f"batch {batch}, clip {clip}: expected MERT's rand(1), got {log[i - 1]}")
        if value <= probability:
            rows.append((batch, clip, 0, -1, -1, -1))
            continue
        (count,), sources, lengths = log[i][3], log[i + 1][3], log[i + 2][3]
        positions = [log[i + 3 + j][3][0] for j in range(count)]
        i += 3 + count
        rows += [(batch, clip, count, s, n, p) for s, n, p in zip(sources, lengths, positions)]
    if i != len(log):
        raise ValueError(f"batch {batch}: {len(log) - i} draws left over (did MERT's mixture raise?)")
    return rows


def speed_job(job: dict, inputs: dict) -> dict:
    """MERT's training step as fairseq's trainer takes it, timed (benchmarks/pretrain_speed.py
    --method mert): MERTModel with its own mask and mixture draws and the hubert criterion
    (fairseq_side.timed_steps)."""
    from fairseq.criterions.hubert_criterion import HubertCriterion

    mert = import_mert(job["mert_src"])
    model_cfg = job["model"]
    model = mert_model(mert, job, mixture_prob=model_cfg["mixture"]["probability"])  # 0.5: the same either way
    load_weights(model, inputs, ignore=("encoder_cqt_model.spec_layer.",))
    criterion = HubertCriterion(None, model_cfg["masked_weight"], model_cfg["unmasked_weight"],
                                loss_weights=[model_cfg["feature_penalty_weight"], model_cfg["cqt_weight"]])
    batch = {k: v for k, v in inputs.items() if not k.startswith("weight.")}
    extra = model_cfg["extra_classes"]
    # MERT mixes the batch's audio in place: each step gets a fresh copy
    return timed_steps(model, criterion, lambda b: criterion_sample(dict(b, wav=b["wav"].clone()), extra),
                       dict(job, batch=batch))


JOBS = {"mert": mert_job, "mixture": mixture_job, "speed": speed_job}


if __name__ == "__main__":
    run_jobs(Path(sys.argv[1]), JOBS, "MERT")
