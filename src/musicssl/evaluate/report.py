"""Result files: results.json (every number with its context), results.md (one row per model,
laid out like the paper's Table 1: tasks in its column order, scores x100) and one PNG per task
with the score of every single-layer probe (best learning rate), per model."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicssl.atomic import write_text
from musicssl.evaluate.probe_protocol import WEIGHTED, TaskResult
from musicssl.evaluate.tasks import TASK_NAMES, get_task

PACKAGES = ("musicssl", "torch", "numpy", "scikit-learn", "mir_eval", "soundfile", "soxr")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def display_metrics(task_name: str) -> list[str]:
    """The columns a task contributes to the table: its metrics, minus EMO's averaged R2 (the
    paper shows valence and arousal separately)."""
    protocol = get_task(task_name).protocol
    return [name for name in protocol.metrics if not (protocol.kind == "regression" and name == "r2")]


def column_title(task_name: str, metric: str) -> str:
    title = get_task(task_name).protocol.title
    short = {"roc_auc": "ROC", "ap": "AP", "accuracy": "Acc", "key_score": "Score", "beat_f": "F1",
             "r2_arousal": "R2A", "r2_valence": "R2V"}.get(metric, metric)
    return f"{title} {short}"


def ordered_tasks(results: Sequence[TaskResult]) -> list[str]:
    present = {result.task for result in results}
    return [name for name in TASK_NAMES if name in present]


def primary_average(results: Sequence[TaskResult], model: str) -> float:
    """Mean over tasks of each task's first displayed metric (x100): the demo's headline."""
    scores = [result.test[display_metrics(result.task)[0]] for result in results if result.model == model]
    return 100 * float(np.mean(scores)) if scores else float("nan")


@dataclass(frozen=True)
class Comparison:
    """`model` against `control` on the tasks both have, by each task's first displayed metric."""

    model: str
    control: str
    wins: list[str]
    ties: list[str]
    losses: list[str]
    average_gain: float  # x100, mean over those tasks of model - control

    def line(self) -> str:
        tasks = len(self.wins) + len(self.ties) + len(self.losses)
        ties = f", {len(self.ties)} tied" if self.ties else ""
        lost = f"; lower on {', '.join(self.losses)}" if self.losses else ""
        return (f"{self.model} vs {self.control}: higher on {len(self.wins)} of {tasks} tasks{ties}, "
                f"average {self.average_gain:+.2f}{lost}")


def compare(results: Sequence[TaskResult], model: str, control: str) -> Comparison:
    """Task by task; equal cells at the table's rounding (x100, 0.1) are a tie. The average gain is
    the difference of the two rows' Avg."""
    by_key = {(result.model, result.task): result for result in results}
    wins, ties, losses, gains = [], [], [], []
    for task in ordered_tasks(results):
        if (model, task) not in by_key or (control, task) not in by_key:
            continue
        metric = display_metrics(task)[0]
        ours, theirs = (100 * by_key[(name, task)].test[metric] for name in (model, control))
        shown = round(ours, 1) - round(theirs, 1)
        (wins if shown > 0 else ties if shown == 0 else losses).append(task)
        gains.append(ours - theirs)
    return Comparison(model, control, wins, ties, losses, float(np.mean(gains)) if gains else float("nan"))


def markdown_table(results: Sequence[TaskResult], models: Sequence[str]) -> str:
    tasks = ordered_tasks(results)
    columns = [(task, metric) for task in tasks for metric in display_metrics(task)]
    header = ["model"] + [column_title(task, metric) for task, metric in columns] + ["Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(result.model, result.task): result for result in results}
    for model in models:
        cells = [model]
        for task, metric in columns:
            result = by_key.get((model, task))
            if result is None:
                cells.append("-")
                continue
            value = 100 * result.test[metric]
            spread = 100 * result.test_std.get(metric, 0.0)
            cells.append(f"{value:.1f}" + (f" ± {spread:.1f}" if spread > 0 else ""))
        cells.append(f"{primary_average(results, model):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_table(results: Sequence[TaskResult]) -> str:
    lines = ["| model | task | layer | lr | valid monitor | sizes (train/valid/test) |", "|---|---|---|---|---|---|"]
    for result in results:
        sizes = "/".join(str(result.sizes.get(name, "?")) for name in ("train", "valid", "test"))
        lines.append(f"| {result.model} | {result.task} | {result.layer} | {result.learning_rate:g} | "
                     f"{result.monitor} {100 * result.valid[result.monitor]:.1f} | {sizes} |")
    return "\n".join(lines) + "\n"


def write_markdown(results: Sequence[TaskResult], models: Sequence[str], path: Path, command: str = "",
                   failures: Sequence[str] = ()) -> None:
    """`failures`: one line per (model, task) not in the table and why (a dataset that cannot be
    read, a split too small or unreadable): listed under the table, never left out silently."""
    text = ["# Probing results", ""]
    if command:
        text += ["Made by:", "", "```", command, "```", ""]
    text += ["Test scores x100 of the (layer, learning rate) chosen on validation; mean ± std over seeds "
             "when there are several. Avg = mean of each task's first column.", "",
             markdown_table(results, models), "", "## Chosen configurations", "", selection_table(results)]
    if failures:
        text += ["", "## Not probed", ""] + [f"- {line}" for line in failures]
    notes = {f"- {result.task}: {note}" for result in results for note in result.notes}  # per dataset, not model
    if notes:
        text += ["", "## Notes from the dataset loaders", ""] + sorted(notes)
    write_text(path, "\n".join(text) + "\n")


def write_json(results: Sequence[TaskResult], sources: dict, probe_config: dict, path: Path,
               extra: dict | None = None) -> None:
    payload = {"versions": versions(), "probe_config": probe_config, "models": sources,
               "results": [result.to_dict() for result in results], **(extra or {})}
    write_text(path, json.dumps(payload, indent=1, default=_jsonable))


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def layer_curve(result: TaskResult, split: str) -> tuple[list[int], list[float]]:
    """Per single layer: the best learning rate's score (mean over seeds) on `split`, chosen by
    validation."""
    layers = sorted({run.layer for run in result.runs if run.layer != WEIGHTED})
    scores = []
    for layer in layers:
        by_lr: dict[float, list] = {}
        for run in result.runs:
            if run.layer == layer:
                by_lr.setdefault(run.learning_rate, []).append(run)
        best = max(by_lr.values(), key=lambda runs: np.mean([run.valid[result.monitor] for run in runs]))
        scores.append(float(np.mean([getattr(run, split)[result.monitor] for run in best])))
    return layers, scores


def write_plots(results: Sequence[TaskResult], directory: Path) -> list[Path]:
    """One PNG per task; returns the files written ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for task in ordered_tasks(results):
        figure, axis = plt.subplots(figsize=(6, 3.5))
        for result in (r for r in results if r.task == task):
            layers, scores = layer_curve(result, "test")
            if len(layers) > 1:
                axis.plot(layers, [100 * s for s in scores], marker="o", label=result.model)
            elif layers:
                axis.axhline(100 * scores[0], linestyle="--", label=result.model)
        axis.set_xlabel("layer")
        axis.set_ylabel(f"test {get_task(task).protocol.metrics[0]} x100")
        axis.set_title(get_task(task).protocol.title)
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = directory / f"{task}_layers.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
