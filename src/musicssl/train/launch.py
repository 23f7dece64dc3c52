"""`musicssl pretrain`: resolve the run config, build data and task, run the loop."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from musicssl.atomic import write_text
from musicssl.config import ConfigError, from_dict, to_dict
from musicssl.data.pretrain import UpdateLoader, build_pretrain_data
from musicssl.data.label_files import expand_label_dirs, read_label_set
from musicssl.data.manifest import check_sample_rate, read_manifest
from musicssl.data.prepare import is_prepared
from musicssl.interop.mert import load_mert
from musicssl.models.backbone import Backbone
from musicssl.models.mel_rvq import MelRVQConfig
from musicssl.targets.rvq_fit import load_mel_rvq
from musicssl.train.checkpoint import check_resumable, checkpoint_dirs, find_resumable, read_run_config
from musicssl.train.interrupt import stop_on_signals
from musicssl.train.label_identity import RECORD_KEY, check_resumed_labels, label_identities
from musicssl.train.lock import run_lock
from musicssl.train.mert import MERTRun, MERTTask, continue_from, mert_run, preset_differences
from musicssl.train.tasks import (MUSICFM_PRESETS, MUSICHUBERT_PRESETS, BestRQRun, BestRQTask, Music2VecRun,
                                  Music2VecTask, MusicFMRun, MusicFMTask, MusicHubertRun, MusicHubertTask, bestrq_run, check_corpus_holds_a_crop,
                                  measure_mel_statistics, muq_run, music2vec_run, resolve_run)
from musicssl.train.trainer import setup_distributed, train

RUN_TYPES = {"musichubert": MusicHubertRun, "music2vec": Music2VecRun, "bestrq": BestRQRun, "musicfm": MusicFMRun,
             "muq": MusicFMRun, "mert": MERTRun}
TASKS = {"musichubert": MusicHubertTask, "music2vec": Music2VecTask, "bestrq": BestRQTask, "musicfm": MusicFMTask,
         "muq": MusicFMTask, "mert": MERTTask}
LABELLED = ("musichubert", "mert")  # methods trained on label directories
MEL_TARGETS = ("bestrq", "musicfm", "muq")  # methods whose targets need mel statistics (MuQ: its RVQ's)
RESUMABLE_OVERRIDES = ("trainer.max_steps", "trainer.checkpoint_every", "trainer.log_every",
                       "trainer.keep_checkpoints", "data.num_workers", "data.crop_only", "trainer.compile",
                       "trainer.fused_adamw")


def _fitted_rvq(method: str, rvq_dir: str | None):
    if method != "muq":
        if rvq_dir:
            raise ValueError(f"--rvq is MuQ's (pretrain muq); {method} does not use a Mel-RVQ")
        return None
    if not rvq_dir:
        raise ValueError("pretrain muq predicts the codes of a fitted Mel-RVQ: run `musicssl rvq fit --data DATA "
                         "-o RVQ_DIR` first, then pass --rvq RVQ_DIR")
    return load_mel_rvq(rvq_dir, sample_rate=24_000)


def resolve(method: str, preset: str, labels: str | Sequence[str] | None, overrides: list[str], resume_from: Path | None,
            variant: str = "vanilla", rvq: MelRVQConfig | None = None,
            init: tuple[Path, Backbone] | None = None):
    """A new run: preset + overrides. A resumed run: the checkpoint's config (the architecture
    never comes from the command line), with only bookkeeping overrides allowed. `init`: MERT's
    `--init DIR` (DIR, its backbone), whose architecture a new run takes."""
    if resume_from is not None:
        from musicssl.config import apply_overrides

        run = from_dict(RUN_TYPES[method], read_run_config(resume_from))
        # Restating the original command is fine; changing the recipe mid-run is not.
        bad = [o for o in overrides if not o.startswith(RESUMABLE_OVERRIDES)
               and apply_overrides(run, [o]) != run]
        if bad:
            raise ValueError(f"cannot change {bad} when resuming; allowed: {', '.join(RESUMABLE_OVERRIDES)} "
                             "(other settings only with the values the run was started with)")
        if method in LABELLED and labels:
            ks = tuple(read_label_set(directory).k for directory in _label_dirs(labels))
            if ks != run.model.codebooks:
                raise ValueError(f"{resume_from}: the run predicts codebooks of k = {run.model.codebooks}, "
                                 f"--labels gives k = {ks}; resume with the label directories it started with")
            check_resumed_labels(resume_from, _label_dirs(labels))
        if rvq is not None and run.model.rvq != rvq:
            raise ValueError(f"{resume_from}: the run was trained with another Mel-RVQ than --rvq gives; resume with "
                             "the directory it started with")
        return apply_overrides(run, overrides)
    if method == "music2vec":
        run, variant_overrides = music2vec_run(preset, variant)
        return resolve_run(run, variant_overrides + overrides)
    if method == "bestrq":
        return resolve_run(bestrq_run(preset), overrides)
    if method == "musicfm":
        return resolve_run(MUSICFM_PRESETS[preset](), overrides)
    if method == "muq":
        return resolve_run(muq_run(preset, rvq), overrides)
    if method == "mert":
        if not labels:
            raise ValueError("mert needs --labels: 8 codebooks at 75 Hz, e.g. one directory from `musicssl labels rvq`")
        preset_run = mert_run(preset, [read_label_set(directory) for directory in _label_dirs(labels)])
        run = resolve_run(preset_run, overrides)
        if init is not None:
            run = continue_from(init[1].config, init[0] / "config.json", resolve_run(preset_run, []), run)
        return run
    recipe = MUSICHUBERT_PRESETS[preset]  # an unknown preset fails before any label is read
    if not labels:
        raise ValueError("musichubert needs --labels: a label directory from `musicssl labels`")
    label_sets = [read_label_set(directory) for directory in _label_dirs(labels)]
    rates = {label_set.grid.rate_hz for label_set in label_sets}
    if len(rates) > 1:
        raise ValueError(f"label sets at different rates {sorted(rates)} Hz cannot be trained together")
    return resolve_run(recipe(tuple(s.k for s in label_sets), rates.pop()), overrides)


def with_mel_statistics(run: BestRQRun | MusicFMRun, dataset, say: bool) -> BestRQRun | MusicFMRun:
    """The run with the corpus's dB-mel mean and std in its model config (every rank measures the
    same crops, so all get the same values)."""
    mean, std = measure_mel_statistics(dataset, run.model, run.data.seed)
    if say:
        print(f"mel statistics of {run.model.stats_crops} crops: mean {mean:.3f} dB, std {std:.3f} dB",
              file=sys.stderr)
    return dataclasses.replace(run, model=run.model.with_mel_statistics(mean, std))


def _label_dirs(labels: str | Sequence[str]) -> list[str]:
    """The label directories, a `labels rvq` codebook directory standing for its codebooks."""
    return [str(directory) for directory in expand_label_dirs(labels)]


def pretrain(method: str, preset: str, data: str, labels: str | Sequence[str] | None, out: str, overrides: list[str],
             resume: str | None = None, variant: str = "vanilla", progress: bool = True,
             rvq: str | None = None, init: str | None = None) -> Path | None:
    """Train into `out` (resuming its newest intact checkpoint), holding `out/.lock` throughout;
    a SIGINT/SIGTERM stops at the next update boundary with a checkpoint (`Interrupted`). `rvq`:
    MuQ's fitted Mel-RVQ directory (`musicssl rvq fit`). `init`: MERT's `--init DIR`, a MERT-v1
    directory whose backbone a new run starts from (the heads start fresh)."""
    env, device = setup_distributed()
    run_dir = Path(out)
    with run_lock(run_dir, env.is_main, env.world_size), stop_on_signals() as stop:
        return _pretrain_locked(method, preset, data, labels, run_dir, overrides, resume, variant, progress,
                                env, device, stop, rvq, init)


def _pretrain_locked(method, preset, data, labels, run_dir: Path, overrides, resume, variant, progress, env, device,
                     stop, rvq_dir=None, init_dir=None) -> Path | None:
    check_manifest_has_rows(data)  # before the run folder gets a config.json
    rvq = _fitted_rvq(method, rvq_dir)
    resume_from = resume_point(run_dir, resume, method, env)
    # --init: read (and refused if it is not an intact MERT-v1 directory) before anything is written;
    # a resumed run's checkpoint already holds the continued weights
    init = (Path(init_dir), load_mert(init_dir)) if init_dir and resume_from is None else None
    run = resolve(method, preset, labels, overrides, resume_from, variant, rvq.config if rvq else None, init)
    differences = preset_differences(preset, init[1].config) if init else []
    if differences and env.is_main:
        print(f"--init {init[0]}: the directory's architecture with the {preset} recipe: "
              f"{', '.join(differences[:4])}{' ...' if len(differences) > 4 else ''}", file=sys.stderr)
    backbone = run.model.backbone
    if method in MEL_TARGETS and resume_from is None:  # before the data summary lines: one error line
        manifest = read_manifest(Path(data) / "train.tsv")
        if not is_prepared(data):  # a prepared corpus checks its own rate when it opens
            check_sample_rate(Path(data) / "train.tsv", backbone.sample_rate, manifest)
        check_corpus_holds_a_crop(manifest, run.data.crop_seconds, backbone.sample_rate)
    dataset, plan = build_pretrain_data(data, "train", _label_dirs(labels) if labels else None, backbone.sample_rate,
                                        run.data, backbone.normalize_waveform, env.world_size, env.rank)
    if method in MEL_TARGETS and run.model.mel_mean is None:  # a new run: its targets' statistics, kept in its config
        run = with_mel_statistics(run, dataset, env.is_main)
    if env.is_main:  # after the data and labels are read: a refused run leaves no output behind
        run_dir.mkdir(parents=True, exist_ok=True)
        record = {RECORD_KEY: label_identities(_label_dirs(labels))} if labels else {}
        record |= {"rvq": str(Path(rvq_dir).resolve())} if rvq else {}
        record |= {"init": str(init[0].resolve())} if init else _recorded_init(run_dir) if resume_from else {}
        write_text(run_dir / "config.json", json.dumps({"method": method, **to_dict(run), **record}, indent=2) + "\n")
    loader = UpdateLoader(dataset, plan, run.data.num_workers, pin_memory=device.type == "cuda")
    torch.manual_seed(run.trainer.seed + env.rank)  # dropout differs across ranks, repeats across runs
    task = TASKS[method](run.model, backbone.sample_rate, run.trainer.seed)
    if rvq is not None:  # the fitted codebooks; a resumed run's checkpoint must hold the same
        task.model.quantizer.load_state_dict(rvq.state_dict())
    if init is not None:  # the published backbone (its mask embedding too); the heads keep their fresh draw
        task.backbone().load_state_dict(init[1].state_dict())
    if env.is_main:
        print(f"{method}: {sum(p.numel() for p in task.model.parameters()):,} parameters, world size "
              f"{env.world_size}, {plan.accumulation_steps} micro-batch(es) per update, device {device}",
              file=sys.stderr)
    train(task, loader, run.trainer, run_dir, run, env, device, resume_from, progress, stop_requested=stop)
    final = checkpoint_dirs(run_dir)
    return final[-1] if final and env.is_main else None


def _recorded_init(run_dir: Path) -> dict:
    """A resumed run keeps the `--init` directory its first start recorded (config.json is rewritten)."""
    try:
        init = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("init")
    except (OSError, ValueError, AttributeError):
        return {}
    return {"init": init} if init else {}


def resume_point(run_dir: Path, resume: str | None, method: str, env) -> Path | None:
    """`--resume PATH` if it is an intact checkpoint, else the run's newest intact checkpoint (an
    older one when the newest is damaged, said in one line), else None: a new run. The run must
    have been trained with `method`."""
    _check_method(run_dir / "config.json", method, run_dir)
    say = (lambda line: print(line, file=sys.stderr)) if env.is_main else (lambda line: None)
    resume_from = check_resumable(Path(resume)) if resume else find_resumable(run_dir, say)
    if resume_from is not None:
        _check_method_of_checkpoint(resume_from, method)
    return resume_from


def _check_method(config_file: Path, method: str, run_dir: Path) -> None:
    """RUN/config.json names the run's method (written at every start, read only for this check)."""
    if not config_file.is_file():
        return
    try:
        trained = json.loads(config_file.read_text(encoding="utf-8")).get("method")
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"{config_file}: not valid JSON ({error}); restore it or delete it "
                          "(the checkpoints hold the run's config)") from None
    if trained is not None and trained != method:
        raise ConfigError(f"{run_dir} was trained with {trained}; you asked for {method}")


def _check_method_of_checkpoint(checkpoint: Path, method: str) -> None:
    """A checkpoint's run config fits one method's dataclasses (`--resume` may name another run's)."""
    config = read_run_config(checkpoint)
    fits = [name for name, run_type in RUN_TYPES.items() if _fits(run_type, config)]
    if fits and method not in fits:
        raise ConfigError(f"{checkpoint} was trained with {fits[0]}; you asked for {method}")


def _fits(run_type: type, config: dict) -> bool:
    try:
        from_dict(run_type, config)
    except (ValueError, TypeError):
        return False
    return True


def check_manifest_has_rows(data: str) -> None:
    """An empty train.tsv otherwise fails deep in the sampler with a message about its arguments."""
    manifest = Path(data) / "train.tsv"
    if not manifest.is_file():
        return  # read_manifest says so
    try:
        with manifest.open(encoding="utf-8") as handle:
            next(handle, None)  # the root line
            empty = not any(line.strip() for line in handle)  # stops at the first row
    except UnicodeDecodeError as error:
        raise ConfigError(f"{manifest}: not a UTF-8 text manifest ({error.reason} at byte {error.start})") from None
    if empty:
        raise ConfigError(f"manifest {manifest} has no rows; `musicssl manifest` lists a folder of audio")
