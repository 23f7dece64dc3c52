"""Runs the steps of a study plan (or of one shard) by calling the library's functions, the same
ones the step's command calls. A done step is skipped; a step whose inputs are not there waits
for them up to `wait_seconds` (another shard is making them) and is then skipped, said and
listed; a failing step is listed and the others go on. Every function resumes on its own
(labels refuse other arguments in the same folder, pre-training continues from its newest
checkpoint), so running the same command again is the way to finish a study."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from musicssl.study.plan import Step, is_done

POLL_SECONDS = 30.0


class NothingToProbe(ValueError):
    """The bench root has none of a probe step's datasets: the step is skipped, not failed."""


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # "name: why"
    failed: list[str] = field(default_factory=list)    # "name: error"


def probe_config(flags: list[str]):
    """The ProbeConfig `musicssl benchmark` builds from these flags (cli/arguments.py `_probe_config`)."""
    from musicssl.evaluate.probe_protocol import LEARNING_RATES, ProbeConfig

    values = dict(zip(flags[::2], flags[1::2]))
    layers = None
    if "--layers" in values and values["--layers"] != "all":
        layers = tuple(part if part == "weighted" else int(part) for part in values["--layers"].split(","))
    rates = tuple(float(part) for part in values["--lrs"].split(",")) if "--lrs" in values else LEARNING_RATES
    return ProbeConfig(layers=layers, learning_rates=rates,
                       seeds=tuple(1234 + i for i in range(int(values.get("--seeds", 1)))),
                       max_epochs=int(values["--max-epochs"]) if "--max-epochs" in values else None,
                       batch_size=int(values.get("--batch-size", 64)),
                       layer_weight_init=values.get("--layer-weight-init", "normal"))


def run_step(step: Step, device: str | None = None, progress: bool = True) -> None:
    a = step.args
    if step.kind == "manifest":
        from musicssl.data.manifest import build_manifest

        build_manifest(a["audio_dir"], a["out"], valid_percent=a["valid_percent"], seed=a["seed"], progress=progress)
    elif step.kind in ("labels_mfcc", "labels_layer"):
        from musicssl.targets.kmeans import KMeansConfig
        from musicssl.targets.labels import LayerFeatures, MfccFeatures, make_labels

        features = (MfccFeatures(f"mfcc{a['dims']}", device=device) if step.kind == "labels_mfcc"
                    else LayerFeatures(a["model"], a["layer"], device=device))
        make_labels(a["data"], a["out"], features, KMeansConfig(k=a["k"], seed=0, sample_fraction=None),
                    fit_fraction=a["fit_fraction"], progress=progress)
    elif step.kind == "pretrain":
        from musicssl.train.launch import pretrain

        pretrain(a["method"], a["preset"], a["data"], a["labels"] or None, a["out"], a["overrides"],
                 variant=a["variant"], progress=progress)
    elif step.kind == "probe":
        from musicssl.evaluate.benchmark import BenchmarkError, run_benchmark
        from musicssl.evaluate.tasks import get_task

        options: dict[str, dict[str, str]] = {}
        for option in a["options"]:
            key, _, value = option.partition("=")
            task, _, name = key.partition(".")
            options.setdefault(task, {})[name] = value
        data_dirs = {task: Path(a["data_root"]) / get_task(task).default_dir for task in a["tasks"]}
        if not any(folder.is_dir() for folder in data_dirs.values()):
            raise NothingToProbe(f"no dataset folder of {', '.join(a['tasks'])} under {a['data_root']}")
        try:
            run_benchmark([a["model"]], data_dirs, a["out"], probe_config(a["flags"]), options=options,
                          device=device, progress=progress, command=step.command, skip_missing=True)
        except BenchmarkError as error:  # the others ran and are written; the failures are the report's
            print(f"{step.name}: {len(error.failures)} task(s) failed: {'; '.join(error.failures)}", file=sys.stderr)
    else:
        raise ValueError(f"{step.name}: unknown step kind {step.kind!r}")


def run_steps(plan: list[Step], steps: list[Step], study: str | Path, wait_seconds: float = 0.0,
              device: str | None = None, progress: bool = True, runner=run_step) -> Outcome:
    """Run `steps` (all of `plan`, or one shard of it) in order. `runner` is what runs one step
    (tests pass a fake)."""
    outcome = Outcome()
    by_name = {step.name: step for step in plan}
    own = {step.name for step in steps}
    for step in steps:
        if is_done(step, study):
            outcome.done.append(step.name)
            continue
        missing = _missing_inputs(step, by_name, study)
        deadline = time.monotonic() + wait_seconds
        while missing and not (set(missing) & own) and time.monotonic() < deadline:
            print(f"{step.name}: waiting for {', '.join(missing)} (another shard)", file=sys.stderr, flush=True)
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            missing = _missing_inputs(step, by_name, study)
        if missing:
            outcome.skipped.append(f"{step.name}: inputs not there: {', '.join(missing)}")
            print(f"skipped {outcome.skipped[-1]}", file=sys.stderr, flush=True)
            continue
        print(f"\n== {step.name}\n{step.command}", file=sys.stderr, flush=True)
        try:
            runner(step, device=device, progress=progress)
        except NothingToProbe as nothing:
            outcome.skipped.append(f"{step.name}: {nothing}")
            print(f"skipped {outcome.skipped[-1]}", file=sys.stderr, flush=True)
            continue
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
            outcome.failed.append(f"{step.name}: {' '.join(str(error).split())}")
            print(f"failed {outcome.failed[-1]}", file=sys.stderr, flush=True)
            continue
        if is_done(step, study):
            outcome.ran.append(step.name)
        else:  # e.g. pre-training stopped early: the next run of the command resumes it
            outcome.failed.append(f"{step.name}: ended without its completion marker")
    return outcome


def _missing_inputs(step: Step, by_name: dict[str, Step], study: str | Path) -> list[str]:
    return [need for need in step.needs if need in by_name and not is_done(by_name[need], study)]


def check_inputs(data: str | Path, bench_root: str | Path, speech: str | Path | None = None,
                 min_speech_rate: int = 16_000) -> None:
    """Refuse, before planning, what no step could use: a missing folder, a folder with no audio,
    speech below 16 kHz (upsampled telephone speech has nothing above 4 kHz: the control would
    differ from the music by bandwidth, not only by domain)."""
    import soundfile

    from musicssl.audio import find_audio_files

    for flag, folder in (("--data", data), ("--bench-root", bench_root), ("--speech", speech)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such folder")
    for flag, folder in (("--data", data), ("--speech", speech)):
        if folder is None:
            continue
        files = find_audio_files(Path(folder))
        if not files:
            raise ValueError(f"{flag} {folder}: no audio files found")
        if flag == "--speech":
            for path in files[:8]:
                try:
                    rate = soundfile.info(str(path)).samplerate
                except RuntimeError:  # unreadable: the manifest lists it with its reason
                    continue
                if rate < min_speech_rate:
                    raise ValueError(f"--speech {path}: {rate} Hz; the speech control is trained at "
                                     f"{min_speech_rate} Hz: give speech at {min_speech_rate} Hz or more "
                                     "(or make some with `musicssl synth speech`)")
