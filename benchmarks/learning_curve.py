"""Does pre-training learn past the demo's budget? A learning curve of tiny MusicHuBERT and
Music2Vec: pre-train on generated music, keep checkpoints along the way, probe each on the
generated tasks (several probe seeds) beside MFCC statistics, print a table and draw a plot.

    python benchmarks/learning_curve.py --out runs/curve                      # 0..4000 updates
    python benchmarks/learning_curve.py --out runs/curve --steps 0,1000,2000,4000,8000
    python benchmarks/learning_curve.py --out runs/curve_smoke --synth-preset smoke --steps 0,4 --quick

Each model is its demo recipe (src/musicssl/demo.py: overrides, labels, probe), trained once for
the longest step count with a checkpoint at every requested step; step 0 is the run's own random
init (RUN/initial). Every stage skips what is done, so a killed run resumes. Output in --out:
`curve.md` (the table: test score x100 per task, mean over probe seeds with their std, and the
7-task average), `curve.json`, `curve.png` (score vs updates, one panel per task plus the
average), and the benchmark's own results.md / results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import torch

from musicssl.demo import DEMO_PRESETS, DEMO_TASKS, DemoConfig, make_manifest_and_labels
from musicssl.evaluate.report import column_title, display_metrics, ordered_tasks

MODELS = {"musichubert": "MusicHuBERT", "music2vec": "Music2Vec"}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def prepare(out: Path, config: DemoConfig, progress: bool) -> tuple[Path, list[Path]]:
    """Generated corpus and probe datasets, manifest, MFCC (+ pitch) labels: the demo's stages 1-2."""
    from musicssl.data.synth import synthesize

    if not (out / "data" / "synth.json").exists():
        synthesize(out / "data", config.synth_preset, seed=config.seed, progress=progress)
    return make_manifest_and_labels(out, config, progress)


def checkpoint_every(steps: list[int]) -> int:
    """The largest interval that lands on every requested step."""
    positive = [s for s in steps if s > 0]
    return math.gcd(*positive) if positive else 1


def pretrain_run(kind: str, out: Path, manifest: Path, labels: list[Path], steps: list[int], config: DemoConfig,
                 seed: int, progress: bool) -> dict[int, Path]:
    """Train to max(steps) keeping every checkpoint; returns step -> checkpoint directory."""
    from musicssl.train.launch import pretrain
    from musicssl.train.trainer import INITIAL, checkpoint_dirs

    run_dir = out / kind
    overrides = config.hubert_overrides if kind == "musichubert" else config.music2vec_overrides
    every = checkpoint_every(steps)
    pretrain(kind, "tiny", str(manifest), [str(d) for d in labels] if kind == "musichubert" else None, str(run_dir),
             [f"trainer.max_steps={max(steps)}", f"trainer.checkpoint_every={every}", "trainer.keep_checkpoints=0",
              f"trainer.seed={seed}", *overrides], progress=progress)
    found = {int(path.name.split("_")[-1]): path for path in checkpoint_dirs(run_dir)}
    found[0] = run_dir / INITIAL
    missing = [s for s in steps if s not in found]
    if missing:
        raise RuntimeError(f"{run_dir}: no checkpoint for steps {missing} (found {sorted(found)})")
    return {s: found[s] for s in steps}


def curve_rows(results, names: dict[str, tuple[str, int]]) -> list[dict]:
    """One row per (model, step): each task's first metric x100, its probe-seed std, and the average."""
    tasks = ordered_tasks(results)
    by_key = {(r.model, r.task): r for r in results}
    rows = []
    for name, (model, step) in names.items():
        scores = {}
        for task in tasks:
            if (name, task) in by_key:
                metric = display_metrics(task)[0]
                result = by_key[(name, task)]
                scores[task] = (100 * result.test[metric], 100 * result.test_std[metric])
        average = sum(mean for mean, _ in scores.values()) / max(len(scores), 1)
        rows.append({"model": model, "step": step, "scores": scores, "average": average})
    return rows


def table(rows: list[dict], tasks: list[str]) -> str:
    header = "| model | updates | " + " | ".join(column_title(t, display_metrics(t)[0]) for t in tasks) + " | Avg |"
    lines = [header, "|" + "---|" * (len(tasks) + 3)]
    for row in rows:
        cells = [f"{row['scores'][t][0]:.1f} ± {row['scores'][t][1]:.1f}" if t in row["scores"] else "-" for t in tasks]
        step = "-" if row["step"] is None else str(row["step"])
        lines.append(f"| {row['model']} | {step} | " + " | ".join(cells) + f" | {row['average']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], tasks: list[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = tasks + ["average"]
    columns = 4
    figure, axes = plt.subplots(math.ceil(len(panels) / columns), columns, figsize=(16, 3.2 * math.ceil(len(panels) / columns)),
                                squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        for model in dict.fromkeys(r["model"] for r in rows if r["step"] is not None):
            points = sorted((r["step"], r) for r in rows if r["model"] == model)
            x = [step for step, _ in points]
            if panel == "average":
                axis.plot(x, [r["average"] for _, r in points], marker="o", label=model)
            else:
                mean = [r["scores"][panel][0] for _, r in points]
                std = [r["scores"][panel][1] for _, r in points]
                axis.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=model)
        for row in rows:
            if row["step"] is None:  # a baseline without updates: a horizontal line
                value = row["average"] if panel == "average" else row["scores"].get(panel, (math.nan,))[0]
                axis.axhline(value, color="gray", linestyle="--", label=row["model"])
        axis.set_title(panel if panel == "average" else column_title(panel, display_metrics(panel)[0]))
        axis.set_xlabel("updates")
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/curve")
    parser.add_argument("--steps", default="0,500,1000,2000,4000", help="updates at which to probe (0 = init)")
    parser.add_argument("--models", default="musichubert,music2vec")
    parser.add_argument("--synth-preset", default="demo")
    parser.add_argument("--seed", type=int, default=1337, help="pre-training seed (the demo's)")
    parser.add_argument("--probe-seeds", default="1,2,3")
    parser.add_argument("--quick", action="store_true", help="the smoke demo's probe (for a test run)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from musicssl.evaluate.benchmark import run_benchmark

    out = Path(args.out)
    steps = sorted({int(s) for s in args.steps.split(",")})
    base = DEMO_PRESETS["smoke" if args.quick else "demo"]
    config = dataclasses.replace(base, synth_preset=args.synth_preset)
    probe = dataclasses.replace(config.probe, seeds=tuple(int(s) for s in args.probe_seeds.split(",")),
                                beat_decoder=config.beat_decoder)
    started, timings = time.perf_counter(), {}
    manifest, labels = prepare(out, config, progress=True)
    timings["prepare"] = round(time.perf_counter() - started, 1)

    names: dict[str, tuple[str, int | None]] = {}
    for kind in args.models.split(","):
        clock = time.perf_counter()
        checkpoints = pretrain_run(kind, out, manifest, labels, steps, config, args.seed, progress=True)
        timings[f"pretrain {kind}"] = round(time.perf_counter() - clock, 1)
        for step, path in checkpoints.items():
            names[f"{MODELS[kind]}@{step}={path}"] = (MODELS[kind], step)
    models = list(names) + ["MFCC stats=mfcc"]
    options: dict[str, dict[str, str]] = {}
    for task, key, value in config.task_options:
        options.setdefault(task, {})[key] = value
    data = out / "data"
    clock = time.perf_counter()
    results = run_benchmark(models, {task: data / folder for task, folder in DEMO_TASKS.items()}, out, probe,
                            options=options, device=args.device, progress=True,
                            command="python benchmarks/learning_curve.py " + " ".join(
                                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)))
    timings["probe"] = round(time.perf_counter() - clock, 1)
    labelled = {name.split("=", 1)[0]: value for name, value in names.items()}
    labelled["MFCC stats"] = ("MFCC stats", None)
    rows = curve_rows(results, labelled)
    tasks = ordered_tasks(results)
    text = table(rows, tasks)
    cpu = f"{cpu_name()}, {args.threads} threads, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
    summary = (f"{text}\n\nTest scores x100: mean ± std over probe seeds {probe.seeds}; pre-training seed "
               f"{args.seed}; {cpu}; timings (s): {json.dumps(timings)}\n")
    (out / "curve.md").write_text(summary)
    (out / "curve.json").write_text(json.dumps({"rows": rows, "timings": timings, "cpu": cpu}, indent=1))
    drawn = plot(rows, tasks, out / "curve.png")
    print(summary + (f"plot: {out / 'curve.png'}" if drawn else "plot skipped: matplotlib is not installed"))


if __name__ == "__main__":
    main()
