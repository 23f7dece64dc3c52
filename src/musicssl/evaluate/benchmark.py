"""Probe several models on several tasks and write the report: what `musicssl probe` and
`musicssl benchmark` run.

Every finished (model, task) is saved at once to `OUT/runs/<model>/<task>.json`; a rerun with
the same probe settings reuses it, and features come from the cache, so a killed benchmark
resumes where it stopped.

Sharded extraction (many GPUs, array jobs): with `shard=(i, n)` (`--shard i --num-shards n`)
a process extracts its share of every (model, task) into its own cache files and stops; the
same command without `--shard`, once all shards are done, finds every item cached and probes.
Under torchrun (RANK, WORLD_SIZE in the environment) each rank extracts its share; rank 0 then
waits until the other shards' items are all in the cache and probes; the other ranks exit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from musicssl.atomic import write_text
from musicssl.config import read_json
from musicssl.evaluate.features import FeatureCache
from musicssl.evaluate.probe import probe_task
from musicssl.evaluate.probe_protocol import ProbeConfig, RunResult, TaskResult
from musicssl.evaluate.report import write_json, write_markdown, write_plots
from musicssl.evaluate.sources import model_name, open_source
from musicssl.evaluate.tasks import get_task
from musicssl.evaluate.tasks.base import Splits, Task, split_problem


class BenchmarkError(ValueError):
    """Some (model, task) probes failed or were skipped; the others were written. `failures`:
    one line per (model, task), as results.md lists them."""

    def __init__(self, message: str, failures: Sequence[str] = ()):
        super().__init__(message)
        self.failures = list(failures)


def _explicit_name(spec: str) -> str | None:
    """The NAME of a `NAME=SPEC` argument, as `open_source` reads it (a path with '=' is a path)."""
    name, sep, _ = spec.partition("=")
    return name if sep and name and not Path(spec).exists() else None


def _name_parts(spec: str) -> tuple[str, tuple[str, ...]]:
    """(the name `open_source` gives a spec, the folders above what that name covers, outermost first)."""
    if spec == "mfcc" or spec.startswith("random:"):
        return spec, ()
    path = Path(spec).resolve()
    name = model_name(path)
    covered = 3 if "@" in name and path.parent.name == "checkpoints" else 1  # RUN/checkpoints/step_N
    return name, path.parts[1:-covered]


def row_names(specs: Sequence[str]) -> list[str]:
    """One distinct row name per MODEL argument: NAME for `NAME=SPEC`, else the model's name
    with as many parent folders as it takes to tell it apart (`a/run@step_8` vs `b/run@step_8`).
    Two rows under one name would overwrite each other's scores and saved runs: a name that is
    still shared (NAME= given twice, or one model twice) is refused before any work."""
    explicit = [_explicit_name(spec) for spec in specs]
    parts = [None if name else _name_parts(spec) for spec, name in zip(specs, explicit)]
    depth = [0] * len(specs)

    def name_at(i: int) -> str:
        if explicit[i]:
            return explicit[i]
        base, above = parts[i]
        return "/".join(above[len(above) - depth[i]:] + (base,)) if depth[i] else base

    while True:
        names = [name_at(i) for i in range(len(specs))]
        grow = [i for i in range(len(specs)) if parts[i] and names.count(names[i]) > 1
                and depth[i] < len(parts[i][1])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    safe = [_safe_name(name) for name in names]
    for i, name in enumerate(names):
        j = safe.index(safe[i])
        if j != i:
            raise ValueError(f"{specs[j]} and {specs[i]}: both would be the row {names[j]!r} of the results; "
                             "name them NAME=PATH (or give each model once)")
    return names


def _safe_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_") or "model"


def _open_sources(models: Sequence[str], device: str | None, dtype: str = "auto"):
    """Each MODEL argument opened, under its row name (`row_names`), lazily: one model in memory."""
    for spec, name in zip(models, row_names(models)):
        source = open_source(spec, device=device, dtype=dtype)
        source.name = name
        yield source


def load_task(name: str, data_dir: Path, options: dict[str, str] | None = None) -> tuple[Task, Splits]:
    task = get_task(name)
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"{data_dir}: no such dataset folder for task {name} ({task.source})")
    splits = task.load(Path(data_dir), **(options or {}))
    return task, splits


def load_tasks(data_dirs: dict[str, Path], options: dict[str, dict[str, str]] | None,
               skip_missing: bool = False) -> tuple[dict[str, tuple[Task, Splits]], dict[str, str]]:
    """Open every dataset; (the readable ones, {task: problem}). Raises one DatasetsError
    naming every problem unless `skip_missing` (and at least one dataset opened)."""
    loaded, problems = {}, {}
    for name, path in data_dirs.items():
        try:
            loaded[name] = load_task(name, path, (options or {}).get(name))
        except (ValueError, OSError) as error:  # DatasetError, no folder, a bad option
            problems[name] = str(error)
    if problems:
        listing = "".join(f"\n  {name}: {problem}" for name, problem in problems.items())
        if not skip_missing or not loaded:
            hint = "; --skip-missing runs the others" if loaded else ""
            raise DatasetsError(f"{len(problems)} of {len(data_dirs)} datasets cannot be read{hint}:{listing}")
        print(f"skipping {len(problems)} of {len(data_dirs)} datasets (--skip-missing):{listing}", file=sys.stderr)
    return loaded, problems


class DatasetsError(ValueError):
    """One or more requested datasets cannot be read; the message lists all of them."""


def _saved_path(out: Path, model: str, task: str) -> Path:
    return out / "runs" / _safe_name(model) / f"{task}.json"


def _reuse_key(config: ProbeConfig, source, data_dir: Path, options: dict[str, str] | None) -> dict:
    """What a saved result must match to be reused: the probe settings, the weights (not the
    model's name: retraining into the same run folder, or a name given to other weights, must
    probe again) and the dataset with its options."""
    return json.loads(json.dumps({"probe_config": dataclasses.asdict(config), "fingerprint": source.fingerprint,
                                  "data": str(Path(data_dir).resolve()), "options": options or {}}))


def _load_saved(path: Path, key: dict) -> TaskResult | None:
    if not path.exists():
        return None
    payload = read_json(path)
    if any(payload.get(field) != value for field, value in key.items()):
        return None  # other settings, weights or data: run again
    result = payload["result"]
    result["runs"] = [RunResult(**run) for run in result["runs"]]
    return TaskResult(**result)


def run_benchmark(models: Sequence[str], data_dirs: dict[str, Path], out: str | Path, config: ProbeConfig,
                  cache_dir: str | Path | None = None, options: dict[str, dict[str, str]] | None = None,
                  device: str | None = None, progress: bool = True, command: str = "",
                  shard: tuple[int, int] | None = None, skip_missing: bool = False,
                  task_configs: dict[str, ProbeConfig] | None = None, dtype: str = "auto") -> list[TaskResult]:
    """`data_dirs`: task name -> dataset folder. `dtype`: the encoders' (extract.DTYPES). Writes results.json, results.md, plots/.
    `task_configs`: task name -> the probe configuration for that task instead of `config`.
    Every dataset is opened before any work: the problems of all are reported in one error,
    or with `skip_missing` the readable ones run and the others are listed in the report.
    `shard`: extract this share only and return [] (see the module's docstring)."""
    out = Path(out)
    row_names(models)  # a name given twice is refused before anything is read or written
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; the output is a folder (results.md, results.json, runs/)")
    out.mkdir(parents=True, exist_ok=True)
    config = config if config.device or not device else config.replace(device=device)  # probes where features run
    task_configs = {name: task_config if task_config.device or not device else task_config.replace(device=device)
                    for name, task_config in (task_configs or {}).items()}
    cache_dir = Path(cache_dir) if cache_dir else out / "cache"
    loaded, skipped = load_tasks(data_dirs, options, skip_missing)
    shard, wait = _shard_of(shard)
    if shard[1] > 1:
        _extract_shard(models, loaded, cache_dir, shard, device, progress, dtype)
        if not wait:
            print(f"shard {shard[0]} of {shard[1]}: features extracted to {cache_dir}; once every shard is done, "
                  "the same command without --shard probes them", file=sys.stderr)
            return []
    results: list[TaskResult] = []
    sources: dict[str, dict] = {}
    names: list[str] = []
    failures: list[str] = []
    notes = [f"{name}: skipped (--skip-missing), {problem}" for name, problem in skipped.items()]
    for source in _open_sources(models, device, dtype):
        sources[source.name] = source.describe()
        names.append(source.name)
        for name, (task, splits) in loaded.items():
            saved = _saved_path(out, source.name, name)
            task_config = task_configs.get(name, config)
            key = _reuse_key(task_config, source, data_dirs[name], (options or {}).get(name))
            result = _load_saved(saved, key)
            if result is None:
                cache = FeatureCache(cache_dir, source, name, task.protocol)
                if wait:
                    _wait_for_shards(cache, splits.train + splits.valid + splits.test)
                try:
                    result = _probe_checked(task, splits, cache, task_config, progress)
                except ValueError as error:  # a tiny or damaged split, a metric undefined: report, go on
                    failures.append(f"{source.name} / {name}: {error}")
                    print(f"{source.name} / {name}: FAILED: {error}", file=sys.stderr)
                    _write_reports(results, names, sources, config, out, command, data_dirs, plots=False,
                                   failures=notes + failures, task_configs=task_configs)
                    continue
                write_text(saved, json.dumps({**key, "result": result.to_dict()}, default=str))
            _print_result(result)
            results.append(result)
            _write_reports(results, names, sources, config, out, command, data_dirs, plots=False,
                           failures=notes + failures, task_configs=task_configs)
    _write_reports(results, names, sources, config, out, command, data_dirs, plots=True, failures=notes + failures,
                   task_configs=task_configs)
    if failures:
        raise BenchmarkError(f"{len(failures)} of {len(models) * len(loaded)} probes failed: " + "; ".join(failures)
                             + f" (the others are in {out}/results.md)", failures)
    return results


def _probe_checked(task: Task, splits: Splits, cache: FeatureCache, config: ProbeConfig, progress: bool):
    """`probe_task`, once the features exist and every split has enough readable items to be
    probed and scored; else ValueError saying which split and which files could not be read."""
    cache.extract(splits.train + splits.valid + splits.test, progress=progress)
    errors = cache.errors()
    problem = split_problem(task, splits, errors)
    if problem:
        keys = {item.key for split in (splits.train, splits.valid, splits.test) for item in split}
        unreadable = [f"{key}: {error}" for key, error in errors.items() if key in keys]
        raise ValueError(f"skipped: {problem}" + (f"; unreadable: {'; '.join(unreadable[:3])}" if unreadable else ""))
    return probe_task(task, splits, cache, config, progress=progress)


def _shard_of(shard: tuple[int, int] | None) -> tuple[tuple[int, int], bool]:
    """(this process's shard, whether it waits for the others and probes): `shard` as given
    (array jobs: never waits), else torchrun's RANK / WORLD_SIZE (rank 0 waits), else (0, 1)."""
    if shard is not None:
        return shard, False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return (rank, world), world > 1 and rank == 0


def _extract_shard(models: Sequence[str], loaded: dict, cache_dir: Path, shard: tuple[int, int],
                   device: str | None, progress: bool, dtype: str = "auto") -> None:
    for source in _open_sources(models, device, dtype):  # the names the probing run looks the cache up by
        for name, (task, splits) in loaded.items():
            cache = FeatureCache(cache_dir, source, name, task.protocol, shard=shard)
            cache.extract(splits.train + splits.valid + splits.test, progress=progress)


def _wait_for_shards(cache: FeatureCache, items, poll_seconds: float = 5.0) -> None:
    """Until the other ranks have indexed every item (torchrun stops all ranks if one fails)."""
    while cache.missing(items):
        print(f"waiting for {len(cache.missing(items))} items from the other shards ({cache.directory})",
              file=sys.stderr)
        time.sleep(poll_seconds)
        cache.refresh()


def _write_reports(results, names, sources, config, out: Path, command: str, data_dirs: dict, plots: bool,
                   failures: Sequence[str] = (), task_configs: dict[str, ProbeConfig] | None = None) -> None:
    extra = {"command": command, "data": {name: str(Path(path).resolve()) for name, path in data_dirs.items()},
             "failures": list(failures)}
    if task_configs:  # the tasks probed otherwise than `config` says
        extra["task_probe_configs"] = {name: dataclasses.asdict(value) for name, value in task_configs.items()}
    write_json(results, sources, dataclasses.asdict(config), out / "results.json", extra)
    write_markdown(results, names, out / "results.md", command, failures)
    if plots:
        write_plots(results, out / "plots")


def _print_result(result: TaskResult) -> None:
    scores = ", ".join(f"{key} {100 * value:.1f}" for key, value in result.test.items()
                       if not key.startswith(("clip_", "beat_precision", "beat_recall")))
    print(f"{result.model} / {result.task}: layer {result.layer}, lr {result.learning_rate:g}: test {scores}",
          file=sys.stderr)
