"""fairseq's side of the parity (benchmarks/fairseq_parity.py runs it in `.venv-fairseq`).

    .venv-fairseq/bin/python benchmarks/fairseq_side.py JOB_DIR

JOB_DIR/jobs.json lists the jobs; each names its input file (safetensors, fairseq parameter
names) and gets an output file beside it. Imports only torch, numpy, safetensors and fairseq:
nothing from musicssl, so every number it writes is fairseq's own.

Jobs:
- hubert: HubertModel + the `hubert` criterion, the mask forced through `compute_mask_indices`.
- data2vec: Data2VecAudioModel (fairseq.examples.data2vec), mask passed as `mask_indices`,
  teacher loaded into its EMAModule; then one `set_num_updates` (EMA step).
- schedules: PolynomialDecayLRSchedule / TriStageLRSchedule `step_update`, and the data2vec
  EMA decay read after `set_num_updates`.
- masks: `compute_mask_indices` statistics over many draws.
- hubert_speed: HubertModel + the `hubert` criterion trained as fairseq's trainer steps it (its own
  mask draws, AdamW), timed, for benchmarks/pretrain_speed.py --against fairseq.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logging.disable(logging.WARNING)  # fairseq logs every model config at INFO


def conv_layers(backbone: dict) -> str:
    return str([tuple(layer) for layer in backbone["conv_layers"]])


def encoder_fields(backbone: dict) -> dict:
    """Wav2Vec2Config / HubertConfig fields of our backbone config (dropouts as given)."""
    return dict(
        extractor_mode="default" if backbone["extractor_norm"] == "group" else "layer_norm",
        conv_feature_layers=conv_layers(backbone), conv_bias=backbone["conv_bias"],
        encoder_layers=backbone["num_layers"], encoder_embed_dim=backbone["dim"],
        encoder_ffn_embed_dim=backbone["ffn_dim"], encoder_attention_heads=backbone["num_heads"],
        conv_pos=backbone["pos_conv_kernel"] * backbone["pos_conv_depth"], conv_pos_groups=backbone["pos_conv_groups"],
        layer_norm_first=backbone["layer_norm_first"], dropout=backbone["dropout"],
        attention_dropout=backbone["attention_dropout"], activation_dropout=backbone["activation_dropout"],
        dropout_input=backbone["input_dropout"], dropout_features=0.0, encoder_layerdrop=backbone["layerdrop"],
        feature_grad_mult=backbone["feature_grad_mult"])


# ---------------------------------------------------------------------------------------------
# HuBERT


class _Labels:
    """A dictionary of exactly `n` classes without specials (our extra_classes=0)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def label_dictionaries(model_cfg: dict) -> list:
    """One fairseq dictionary per codebook: 4 specials first (cluster c is row c + 4) or none."""
    from fairseq.data import Dictionary

    dictionaries = []
    for k in [model_cfg["num_classes"], *model_cfg["extra_codebooks"]]:
        if model_cfg["extra_classes"] == 4:
            d = Dictionary()  # <s>, <pad>, </s>, <unk>, then the k cluster ids: cluster c is c + 4
            for c in range(k):
                d.add_symbol(str(c))
        elif model_cfg["extra_classes"] == 0:
            d = _Labels(k)
        else:
            raise ValueError(f"extra_classes {model_cfg['extra_classes']} has no fairseq dictionary")
        dictionaries.append(d)
    return dictionaries


def load_weights(model: torch.nn.Module, inputs: dict, ignore: tuple[str, ...] = ()) -> None:
    """The `weight.*` inputs into `model`, every parameter and nothing else (buffers named in `ignore`
    are the model's own, e.g. a fixed transform's kernels)."""
    weights = {k[len("weight."):]: v for k, v in inputs.items() if k.startswith("weight.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(ignore)] if ignore else missing
    if missing or unexpected:
        raise KeyError(f"weights do not fit fairseq {type(model).__name__}: missing {missing}, unexpected {unexpected}")


def criterion_sample(inputs: dict, extra_classes: int) -> dict:
    """The `hubert` criterion's sample: sample-level padding, one target list per codebook in
    dictionary indices."""
    wav, lengths, labels = inputs["wav"], inputs["lengths"], inputs["labels"]  # labels (B, T_label, S)
    padding = torch.arange(wav.shape[1], device=wav.device)[None] >= lengths[:, None]  # sample-level (B, N)
    return {"net_input": {"source": wav, "padding_mask": padding},
            "target_list": [labels[..., i] + extra_classes for i in range(labels.shape[-1])],
            "id": torch.arange(wav.shape[0])}


def run_criterion(model, criterion, sample: dict, codebooks: int) -> tuple[dict, dict]:
    """criterion(model, sample) and its backward: loss, sample size, feature penalty, each codebook's
    logits and loss (masked, and unmasked where the model computes them) and every gradient; and
    the model's raw output."""
    captured = {}
    model.register_forward_hook(lambda module, args, output: captured.update(output))
    loss, sample_size, logs = criterion(model, sample)
    loss.backward()
    out = {"loss": loss.detach(), "sample_size": torch.tensor(float(sample_size)),
           "features_pen": captured["features_pen"].detach()}
    for i in range(codebooks):
        for kind in ("m", "u"):
            if captured[f"logit_{kind}_list"][i] is not None:
                out[f"logits_{kind}_{i}"] = captured[f"logit_{kind}_list"][i].detach().float()
                out[f"loss_{kind}_{i}"] = torch.tensor(logs[f"loss_{kind}_{i}"])
    out |= {f"grad.{n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out, captured


def hubert_model(job: dict, inputs: dict):
    """HubertModel of a job's config with its `weight.*` inputs, the `hubert` criterion, and the
    number of codebooks."""
    from fairseq.criterions.hubert_criterion import HubertCriterion
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel

    model_cfg, backbone = job["model"], job["backbone"]
    mask_cfg = model_cfg["mask"]
    cfg = HubertConfig(label_rate=model_cfg["label_rate_hz"], final_dim=model_cfg["final_dim"],
                       untie_final_proj=True, logit_temp=model_cfg["logit_temperature"],
                       mask_prob=mask_cfg["mask_prob"], mask_length=mask_cfg["mask_length"],
                       skip_masked=False, skip_nomask=False, **encoder_fields(backbone))
    dictionaries = label_dictionaries(model_cfg)
    model = HubertModel(cfg, types.SimpleNamespace(sample_rate=backbone["sample_rate"]), dictionaries)
    load_weights(model, inputs)
    criterion = HubertCriterion(None, model_cfg["masked_weight"], model_cfg["unmasked_weight"],
                                loss_weights=[model_cfg["feature_penalty_weight"]])
    return model.train(), criterion, len(dictionaries)


def hubert_job(job: dict, inputs: dict) -> dict:
    from fairseq.models.hubert import hubert as hubert_module

    model, criterion, codebooks = hubert_model(job, inputs)
    forced = inputs["mask"].numpy().astype(bool)
    drawn = hubert_module.compute_mask_indices
    hubert_module.compute_mask_indices = lambda shape, *args, **kwargs: forced[:, :shape[1]]
    try:
        sample = criterion_sample(inputs, job["model"]["extra_classes"])
        return run_criterion(model, criterion, sample, codebooks)[0]
    finally:
        hubert_module.compute_mask_indices = drawn


def timed_steps(model, criterion, sample_of, job: dict) -> dict:
    """Seconds of each training step as fairseq's trainer takes it (criterion, backward of
    loss / sample_size, an AdamW step) after `warm_up` untimed ones; `sample_of(batch)` builds the
    criterion's sample from the job's batch on the job's device."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = {k: v.to(device) for k, v in job["batch"].items()}
    times = []
    for step in range(job["warm_up"] + job["steps"]):
        sample = sample_of(batch)
        start = time.perf_counter()
        loss, sample_size, _ = criterion(model, sample)
        (loss / sample_size).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= job["warm_up"]:
            times.append(time.perf_counter() - start)
    return {"seconds": torch.tensor(times, dtype=torch.float64)}


def hubert_speed_job(job: dict, inputs: dict) -> dict:
    model, criterion, _ = hubert_model(job, inputs)
    batch = {k: v for k, v in inputs.items() if not k.startswith("weight.")}
    extra = job["model"]["extra_classes"]
    return timed_steps(model, criterion, lambda b: criterion_sample(b, extra), dict(job, batch=batch))


# ---------------------------------------------------------------------------------------------
# data2vec


def data2vec_model(model_cfg: dict, backbone: dict, case: dict | None = None):
    from fairseq.examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel

    mask_cfg = model_cfg["mask"]
    cfg = Data2VecAudioConfig(
        pos_conv_depth=backbone["pos_conv_depth"], average_top_k_layers=model_cfg["average_top_k_layers"],
        instance_norm_target_layer=model_cfg["instance_norm_target_layer"],
        layer_norm_targets=model_cfg["layer_norm_targets"], instance_norm_targets=model_cfg["instance_norm_targets"],
        loss_beta=model_cfg["loss_beta"], loss_scale=model_cfg["loss_scale"], ema_decay=model_cfg["ema_decay"],
        ema_end_decay=model_cfg["ema_end_decay"], ema_anneal_end_step=model_cfg["ema_anneal_end_step"],
        max_update=400_000, ema_transformer_only=True, ema_layers_only=True, mask_prob=mask_cfg["mask_prob"],
        mask_length=mask_cfg["mask_length"], require_same_masks=mask_cfg["require_same_masks"], mask_dropout=0.0,
        min_target_var=model_cfg["min_target_std"], min_pred_var=model_cfg["min_prediction_std"],
        **encoder_fields(backbone))
    return Data2VecAudioModel(cfg)


def data2vec_job(job: dict, inputs: dict) -> dict:
    import fairseq.examples.data2vec.models.data2vec_audio as d2v

    model = data2vec_model(job["model"], job["backbone"])
    weights = {k[len("weight."):]: v for k, v in inputs.items() if k.startswith("weight.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise KeyError(f"weights do not fit fairseq Data2VecAudioModel: missing {missing}, unexpected {unexpected}")
    model.set_num_updates(0)  # fairseq builds the teacher (EMAModule) here
    teacher = {k[len("ema."):]: v for k, v in inputs.items() if k.startswith("ema.")}
    model.ema.restore(teacher, build_fp32_params=True)
    model.train()

    captured = {}
    name = "mse_loss" if job["model"]["loss_beta"] == 0 else "smooth_l1_loss"
    loss_fn = getattr(torch.nn.functional, name)

    def capture(x, y, *args, **kwargs):
        captured.update(prediction=x.detach(), target=y.detach())
        return loss_fn(x, y, *args, **kwargs)

    d2v.F = types.SimpleNamespace(**{k: getattr(torch.nn.functional, k) for k in dir(torch.nn.functional)
                                      if not k.startswith("__")})
    setattr(d2v.F, name, capture)
    pre_encoder = {}
    model.post_extract_proj.register_forward_hook(lambda m, a, output: pre_encoder.update(x=output.detach().clone()))
    wav, lengths = inputs["wav"], inputs["lengths"]
    padding = torch.arange(wav.shape[1])[None] >= lengths[:, None]
    result = model(wav, padding_mask=padding if bool(padding.any()) else None, mask=True,
                   mask_indices=inputs["mask"].bool())
    loss = result["losses"]["regression"]
    loss.backward()
    out = {"loss": loss.detach(), "sample_size": torch.tensor(float(result["sample_size"])),
           "prediction": captured["prediction"], "target": captured["target"],
           "target_var": result["target_var"].float(), "pred_var": result["pred_var"].float()}
    with torch.no_grad():
        layers = model.cfg.encoder_layers
        _, layer_results = model.ema.model.extract_features(pre_encoder["x"], padding_mask=None,
                                                            min_layer=layers - model.average_top_k_layers)
    out |= {f"layer_result_{i}": r[2].transpose(0, 1).contiguous() for i, r in enumerate(layer_results)}  # TBC -> BTC
    out |= {f"grad.{n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    model.set_num_updates(job["case"]["ema_step"])  # one EMA step with the decay of that update
    out["ema_decay"] = torch.tensor(model.ema.get_decay(), dtype=torch.float64)
    out |= {f"ema.{k}": v.clone() for k, v in model.ema.model.state_dict().items()}
    return out


# ---------------------------------------------------------------------------------------------
# Schedules


def schedules_job(job: dict, inputs: dict) -> dict:
    from fairseq.optim.lr_scheduler.polynomial_decay_schedule import (PolynomialDecayLRSchedule,
                                                                       PolynomialDecayLRScheduleConfig)
    from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRSchedule, TriStageLRScheduleConfig
    from fairseq.optim.fairseq_optimizer import FairseqOptimizer

    class Optimizer(FairseqOptimizer):  # the scheduler asserts a FairseqOptimizer
        def __init__(self):
            super().__init__(None)
            self.current = None

        def set_lr(self, lr):
            self.current = lr

        def get_lr(self):
            return self.current

    out = {}
    for name, spec in job["schedules"].items():
        steps = inputs[f"steps.{name}"].tolist()
        if spec["kind"] == "polynomial":
            cfg = PolynomialDecayLRScheduleConfig(warmup_updates=spec["warmup_steps"], end_learning_rate=spec["end_lr"],
                                                  power=spec["power"], total_num_update=spec["total_steps"],
                                                  lr=[spec["peak_lr"]])
            scheduler = PolynomialDecayLRSchedule(cfg, Optimizer())
        else:
            cfg = TriStageLRScheduleConfig(phase_ratio=tuple(spec["phase_ratio"]), init_lr_scale=spec["init_lr_scale"],
                                           final_lr_scale=spec["final_lr_scale"], max_update=spec["total_steps"],
                                           lr=[spec["peak_lr"]])
            scheduler = TriStageLRSchedule(cfg, Optimizer())
        out[name] = torch.tensor([scheduler.step_update(s) for s in steps], dtype=torch.float64)
    for name, (start, end, anneal) in job["ema"].items():
        model_cfg = dict(job["model"], ema_decay=start, ema_end_decay=end, ema_anneal_end_step=anneal)
        model = data2vec_model(model_cfg, job["backbone"])
        model.set_num_updates(0)  # builds the teacher
        model.train()
        decays = []
        for s in inputs[f"steps.{name}"].tolist():
            model.set_num_updates(s)
            decays.append(model.ema.get_decay())
        out[name] = torch.tensor(decays, dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------------------
# Masks


def masks_job(job: dict, inputs: dict) -> dict:
    """`draws` calls of compute_mask_indices per setting on a (B, T) batch with the given padding.
    fairseq seeds each sample's generator from fresh entropy; for a reproducible run every
    default_rng(None) it makes is seeded from one SeedSequence instead (the algorithm is untouched)."""
    from fairseq.data import data_utils

    sequence = np.random.SeedSequence(job["seed"])
    real = np.random.default_rng
    np.random.default_rng = lambda seed=None: real(sequence.spawn(1)[0] if seed is None else seed)
    padding = inputs["padding"].bool()
    out = {}
    for name, setting in job["settings"].items():
        masks = np.stack([data_utils.compute_mask_indices(
            tuple(padding.shape), padding, setting["mask_prob"], setting["mask_length"], "static", 0.0,
            min_masks=setting["min_masks"], require_same_masks=setting["require_same_masks"])
            for _ in range(job["draws"])])
        out[name] = torch.from_numpy(np.packbits(masks, axis=-1))  # (draws, B, ceil(T / 8)) uint8
    return out


JOBS = {"hubert": hubert_job, "data2vec": data2vec_job, "schedules": schedules_job, "masks": masks_job,
        "hubert_speed": hubert_speed_job}


def run_jobs(job_dir: Path, jobs: dict, side: str) -> None:
    """Run JOB_DIR/jobs.json's jobs with `jobs[kind]`, each output written beside its input."""
    torch.manual_seed(0)
    for job in json.loads((job_dir / "jobs.json").read_text()):
        inputs = load_file(job_dir / job["input"]) if job.get("input") else {}
        out = jobs[job["kind"]](job, inputs)
        save_file({k: v.contiguous() for k, v in out.items()}, job_dir / job["output"])
        print(f"{side}: {job['name']} done", file=sys.stderr)


if __name__ == "__main__":
    run_jobs(Path(sys.argv[1]), JOBS, "fairseq")
