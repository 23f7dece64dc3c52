"""Probe several models on several tasks and write the report: what `musicssl probe` and
`musicssl benchmark` run.

Every finished (model, task) is saved at once to `OUT/runs/<model>/<task>.json`; a rerun with
the same probe settings reuses it, and features come from the cache, so a killed benchmark
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from musicssl.evaluate.features import FeatureCache
from musicssl.evaluate.probe import ProbeConfig, RunResult, TaskResult, probe_task
from musicssl.evaluate.report import write_json, write_markdown, write_plots
from musicssl.evaluate.sources import open_source
from musicssl.evaluate.tasks import get_task
from musicssl.evaluate.tasks.base import Splits, Task


class BenchmarkError(ValueError):
    """Some (model, task) probes failed; the others were written."""


def load_task(name: str, data_dir: Path, options: dict[str, str] | None = None) -> tuple[Task, Splits]:
    task = get_task(name)
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"{data_dir}: no such dataset folder for task {name} ({task.source})")
    splits = task.load(Path(data_dir), **(options or {}))
    return task, splits


def _saved_path(out: Path, model: str, task: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_") or "model"
    return out / "runs" / safe / f"{task}.json"


def _reuse_key(config: ProbeConfig, source, data_dir: Path, options: dict[str, str] | None) -> dict:
    """What a saved result must match to be reused: the probe settings, the weights (not the
    model's name: retraining into the same run folder, or a name given to other weights, must
    probe again) and the dataset with its options."""
    return json.loads(json.dumps({"probe_config": dataclasses.asdict(config), "fingerprint": source.fingerprint,
                                  "data": str(Path(data_dir).resolve()), "options": options or {}}))


def _load_saved(path: Path, key: dict) -> TaskResult | None:
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    if any(payload.get(field) != value for field, value in key.items()):
        return None  # other settings, weights or data: run again
    result = payload["result"]
    result["runs"] = [RunResult(**run) for run in result["runs"]]
    return TaskResult(**result)


def run_benchmark(models: Sequence[str], data_dirs: dict[str, Path], out: str | Path, config: ProbeConfig,
                  cache_dir: str | Path | None = None, options: dict[str, dict[str, str]] | None = None,
                  device: str | None = None, progress: bool = True, command: str = "") -> list[TaskResult]:
    """`data_dirs`: task name -> dataset folder. Writes results.json, results.md, plots/."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = config if config.device or not device else config.replace(device=device)  # probes where features run
    cache_dir = Path(cache_dir) if cache_dir else out / "cache"
    loaded = {name: load_task(name, path, (options or {}).get(name)) for name, path in data_dirs.items()}
    results: list[TaskResult] = []
    sources: dict[str, dict] = {}
    names: list[str] = []
    failures: list[str] = []
    for spec in models:
        source = open_source(spec, device=device)
        sources[source.name] = source.describe()
        names.append(source.name)
        for name, (task, splits) in loaded.items():
            saved = _saved_path(out, source.name, name)
            key = _reuse_key(config, source, data_dirs[name], (options or {}).get(name))
            result = _load_saved(saved, key)
            if result is None:
                cache = FeatureCache(cache_dir, source, name, task.protocol)
                try:
                    result = probe_task(task, splits, cache, config, progress=progress)
                except ValueError as error:  # e.g. a metric undefined on a tiny split: report, go on
                    failures.append(f"{source.name} / {name}: {error}")
                    print(f"{source.name} / {name}: FAILED: {error}", file=sys.stderr)
                    continue
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps({**key, "result": result.to_dict()}, default=str))
            _print_result(result)
            results.append(result)
            _write_reports(results, names, sources, config, out, command, data_dirs, plots=False, failures=failures)
    _write_reports(results, names, sources, config, out, command, data_dirs, plots=True, failures=failures)
    if failures:
        raise BenchmarkError(f"{len(failures)} of {len(models) * len(loaded)} probes failed: " + "; ".join(failures)
                             + f" (the others are in {out}/results.md)")
    return results


def _write_reports(results, names, sources, config, out: Path, command: str, data_dirs: dict, plots: bool,
                   failures: Sequence[str] = ()) -> None:
    extra = {"command": command, "data": {name: str(Path(path).resolve()) for name, path in data_dirs.items()},
             "failures": list(failures)}
    write_json(results, sources, dataclasses.asdict(config), out / "results.json", extra)
    write_markdown(results, names, out / "results.md", command)
    if plots:
        write_plots(results, out / "plots")


def _print_result(result: TaskResult) -> None:
    scores = ", ".join(f"{key} {100 * value:.1f}" for key, value in result.test.items()
                       if not key.startswith(("clip_", "beat_precision", "beat_recall")))
    print(f"{result.model} / {result.task}: layer {result.layer}, lr {result.learning_rate:g}: test {scores}",
          file=sys.stderr)
