"""`musicssl pretrain`: resolve the run config, build data and task, run the loop."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from musicssl.atomic import write_text
from musicssl.config import from_dict, to_dict
from musicssl.data.pretrain import UpdateLoader, build_pretrain_data
from musicssl.data.label_files import read_label_set
from musicssl.train.checkpoint import checkpoint_dirs, read_run_config
from musicssl.train.tasks import (MUSICHUBERT_PRESETS, Music2VecRun, Music2VecTask, MusicHubertRun, MusicHubertTask,
                                  music2vec_run, resolve_run)
from musicssl.train.trainer import setup_distributed, train

RUN_TYPES = {"musichubert": MusicHubertRun, "music2vec": Music2VecRun}
TASKS = {"musichubert": MusicHubertTask, "music2vec": Music2VecTask}
RESUMABLE_OVERRIDES = ("trainer.max_steps", "trainer.checkpoint_every", "trainer.log_every",
                       "trainer.keep_checkpoints", "data.num_workers", "data.crop_only", "trainer.compile",
                       "trainer.fused_adamw")


def resolve(method: str, preset: str, labels: str | Sequence[str] | None, overrides: list[str], resume_from: Path | None,
            variant: str = "vanilla"):
    """A new run: preset + overrides. A resumed run: the checkpoint's config (the architecture
    never comes from the command line), with only bookkeeping overrides allowed."""
    if resume_from is not None:
        from musicssl.config import apply_overrides

        run = from_dict(RUN_TYPES[method], read_run_config(resume_from))
        # Restating the original command is fine; changing the recipe mid-run is not.
        bad = [o for o in overrides if not o.startswith(RESUMABLE_OVERRIDES)
               and apply_overrides(run, [o]) != run]
        if bad:
            raise ValueError(f"cannot change {bad} when resuming; allowed: {', '.join(RESUMABLE_OVERRIDES)} "
                             "(other settings only with the values the run was started with)")
        if method == "musichubert" and labels:
            ks = tuple(read_label_set(directory).k for directory in _label_dirs(labels))
            if ks != run.model.codebooks:
                raise ValueError(f"{resume_from}: the run predicts codebooks of k = {run.model.codebooks}, "
                                 f"--labels gives k = {ks}; resume with the label directories it started with")
        return apply_overrides(run, overrides)
    if method == "music2vec":
        run, variant_overrides = music2vec_run(preset, variant)
        return resolve_run(run, variant_overrides + overrides)
    recipe = MUSICHUBERT_PRESETS[preset]  # an unknown preset fails before any label is read
    if not labels:
        raise ValueError("musichubert needs --labels: a label directory from `musicssl labels`")
    label_sets = [read_label_set(directory) for directory in _label_dirs(labels)]
    rates = {label_set.grid.rate_hz for label_set in label_sets}
    if len(rates) > 1:
        raise ValueError(f"label sets at different rates {sorted(rates)} Hz cannot be trained together")
    return resolve_run(recipe(tuple(s.k for s in label_sets), rates.pop()), overrides)


def _label_dirs(labels: str | Sequence[str]) -> list[str]:
    return [labels] if isinstance(labels, str) else list(labels)


def pretrain(method: str, preset: str, data: str, labels: str | Sequence[str] | None, out: str, overrides: list[str],
             resume: str | None = None, variant: str = "vanilla", progress: bool = True) -> Path | None:
    env, device = setup_distributed()
    run_dir = Path(out)
    existing = checkpoint_dirs(run_dir)
    resume_from = Path(resume) if resume else (existing[-1] if existing else None)
    run = resolve(method, preset, labels, overrides, resume_from, variant)
    backbone = run.model.backbone
    dataset, plan = build_pretrain_data(data, "train", labels, backbone.sample_rate, run.data,
                                        backbone.normalize_waveform, env.world_size, env.rank)
    if env.is_main:  # after the data and labels are read: a refused run leaves no output behind
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.json", json.dumps({"method": method, **to_dict(run)}, indent=2) + "\n")
    loader = UpdateLoader(dataset, plan, run.data.num_workers, pin_memory=device.type == "cuda")
    torch.manual_seed(run.trainer.seed + env.rank)  # dropout differs across ranks, repeats across runs
    task = TASKS[method](run.model, backbone.sample_rate, run.trainer.seed)
    if env.is_main:
        print(f"{method}: {sum(p.numel() for p in task.model.parameters()):,} parameters, world size "
              f"{env.world_size}, {plan.accumulation_steps} micro-batch(es) per update, device {device}",
              file=sys.stderr)
    train(task, loader, run.trainer, run_dir, run, env, device, resume_from, progress)
    final = checkpoint_dirs(run_dir)
    return final[-1] if final and env.is_main else None
