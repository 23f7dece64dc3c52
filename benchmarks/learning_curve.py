"""Does pre-training learn past the demo's budget? A learning curve of tiny MusicHuBERT and
Music2Vec (BEST-RQ too, with `--models musichubert,music2vec,bestrq`): pre-train on generated
music, keep checkpoints along the way, probe each on the generated tasks (several probe seeds)
beside MFCC statistics, print a table and draw a plot.

    python benchmarks/learning_curve.py --out runs/curve                      # 0..4000 updates
    python benchmarks/learning_curve.py --out runs/curve8k --synth-preset curve \
        --steps 0,1000,2000,4000,8000 --max-steps music2vec=4000          # README's run
    python benchmarks/learning_curve.py --out runs/curve_smoke --synth-preset smoke --steps 0,3,6 --quick

Each model is its demo recipe (src/musicssl/demo.py: overrides, labels; probe: one learning rate
and the weighted sum on every task, the demo's beats probe), trained once for
the longest step count with a checkpoint at every requested step; step 0 is the run's own random
init (RUN/initial). Every stage skips what is done, so a killed run resumes. Output in --out:
`curve.md` (the table: test score x100 per task, mean over probe seeds with their std, and the
7-task average), `curve.json`, `curve.png` (score vs updates, one panel per task plus the
average), and the benchmark's own results.md / results.json.

Then why the curve goes where it goes, in `why.md` / `why.json` (skip with --no-why):
- the pretext task at each checkpoint: masked accuracy of each codebook (MusicHuBERT) or the
  regression loss and the spread of targets and predictions (Music2Vec), averaged over the
  logged steps of the last `--pretext-window` updates before it;
- per-layer probes: every layer and the weighted sum, on `--layer-tasks` (the same probe
  settings and seeds, features from the same cache);
- collapse statistics per layer (musicssl.evaluate.diagnostics) of the GTZAN clips' cached rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from musicssl.demo import DEMO_PRESETS, DEMO_TASKS, DemoConfig, make_manifest_and_labels
from musicssl.evaluate.report import column_title, display_metrics, ordered_tasks

from curve_stability import MODELS, method_inputs  # noqa: E402  (benchmarks/ is on sys.path when run)

# what each recipe logs about its pretext task (train/trainer.py's log.jsonl)
TOKEN_KEYS = ("accuracy/masked", "loss/masked_ce", "targets/usage", "targets/perplexity", "targets/top_share")
PRETEXT_KEYS = {"musichubert": ("accuracy/masked", "accuracy/masked_1", "loss/masked_ce", "loss/masked_ce_1"),
                "music2vec": ("loss", "target_std", "prediction_std"),
                "bestrq": TOKEN_KEYS, "musicfm": TOKEN_KEYS, "muq": TOKEN_KEYS,
                "mert": ("accuracy/masked", "loss/masked_ce", "loss/cqt_mse", "mixture/mixed_share")}
# The BEST-RQ family and MERT (`--models bestrq,musicfm,muq,mert`): their `tiny` presets with
# MusicHuBERT's demo batch (20 s of audio per update), so the curves compare objectives at the same
# audio per update.
TOKEN_OVERRIDES = ("data.batch_seconds=20",)


def recipe_overrides(kind: str, config: DemoConfig) -> tuple[str, ...]:
    """The demo's overrides of each model's `tiny` preset (the BEST-RQ family's are this benchmark's own)."""
    return {"musichubert": config.hubert_overrides, "music2vec": config.music2vec_overrides}.get(kind, TOKEN_OVERRIDES)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def prepare(out: Path, config: DemoConfig, progress: bool) -> tuple[Path, list[Path]]:
    """Generated corpus and probe datasets, manifest, MFCC (+ pitch) labels: the demo's stages 1-2."""
    from musicssl.synth.datasets import synthesize

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
    from musicssl.train.checkpoint import INITIAL, checkpoint_dirs

    run_dir = out / kind
    overrides = recipe_overrides(kind, config)
    every = checkpoint_every(steps)
    inputs = method_inputs(kind, out, manifest, labels, progress)
    pretrain(kind, "tiny", str(inputs.manifest), [str(d) for d in inputs.labels] or None, str(run_dir),
             [f"trainer.max_steps={max(steps)}", f"trainer.checkpoint_every={every}", "trainer.keep_checkpoints=0",
              f"trainer.seed={seed}", *overrides], progress=progress,
             rvq=str(inputs.rvq) if inputs.rvq else None)
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
    parser.add_argument("--models", default="musichubert,music2vec",
                        help="of musichubert, music2vec, bestrq, musicfm, muq, mert")
    parser.add_argument("--max-steps", default="", help="a model's own last step, e.g. music2vec=4000: its "
                        "run (and learning-rate schedule) ends there and it is probed at the steps up to it")
    parser.add_argument("--synth-preset", default="demo")
    parser.add_argument("--seed", type=int, default=1337, help="pre-training seed (the demo's)")
    parser.add_argument("--probe-seeds", default="1,2,3")
    parser.add_argument("--quick", action="store_true", help="the smoke demo's probe (for a test run)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-why", dest="why", action="store_false", help="skip why.md (pretext, layers, collapse)")
    parser.add_argument("--layer-tasks", default="nsynth_pitch,nsynth_instrument,gtzan",
                        help="tasks of the per-layer probes (why.md)")
    parser.add_argument("--pretext-window", type=int, default=100, help="updates averaged before each checkpoint")
    parser.add_argument("--pretrain-seeds", default="", help="the stability table instead of one curve: "
                        "pre-train each model once per seed and kernel (benchmarks/curve_stability.py)")
    parser.add_argument("--kernels", default="", help="ATEN_CPU_CAPABILITY values for the stability table, "
                        "e.g. avx2,avx512 (default: this CPU's own)")
    parser.add_argument("--set", dest="recipe", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                        help="stability table: a pre-training override on top of the demo recipe (repeatable), "
                        "e.g. musichubert:trainer.schedule.warmup_steps=640")
    parser.add_argument("--jobs", type=int, default=1, help="stability table: runs pre-trained at once, each "
                        "with --threads threads (2 cores: --jobs 2 --threads 1)")
    parser.add_argument("--monitor-every", type=int, default=100, help="collapse alarm interval (stability table)")
    parser.add_argument("--no-probe", dest="probe", action="store_false",
                        help="stability table without the 7-task averages (pretext and collapse only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from musicssl.evaluate.benchmark import run_benchmark

    out = Path(args.out)
    steps = sorted({int(s) for s in args.steps.split(",")})
    base = DEMO_PRESETS["smoke" if args.quick else "demo"]
    config = dataclasses.replace(base, synth_preset=args.synth_preset)
    # the probe the curve was measured with: one learning rate and the learnt weighted sum on every
    # task (the demo's beats probe; the demo's full grid would cost ~30 min a checkpoint on beats)
    probe = dataclasses.replace(config.beats_probe or config.probe,
                                seeds=tuple(int(s) for s in args.probe_seeds.split(",")),
                                beat_decoder=config.beat_decoder)
    started, timings = time.perf_counter(), {}
    manifest, labels = prepare(out, config, progress=True)
    timings["prepare"] = round(time.perf_counter() - started, 1)

    options: dict[str, dict[str, str]] = {}
    for task, key, value in config.task_options:
        options.setdefault(task, {})[key] = value
    if args.pretrain_seeds:
        stability(args, out, config, steps, manifest, labels, probe, options)
        return

    names: dict[str, tuple[str, int | None]] = {}
    caps = {kind: int(value) for kind, value in (pair.split("=") for pair in args.max_steps.split(",") if pair)}
    for kind in args.models.split(","):
        clock = time.perf_counter()
        own_steps = [s for s in steps if s <= caps.get(kind, max(steps))]
        checkpoints = pretrain_run(kind, out, manifest, labels, own_steps, config, args.seed, progress=True)
        timings[f"pretrain {kind}"] = round(time.perf_counter() - clock, 1)
        for step, path in checkpoints.items():
            names[f"{MODELS[kind]}@{step}={path}"] = (MODELS[kind], step)
    models = list(names) + ["MFCC stats=mfcc"]
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
    if args.why:
        clock = time.perf_counter()
        text = why(out, names, args, probe, options)
        print(text + f"\n(why: {time.perf_counter() - clock:.0f} s)")


def stability(args, out: Path, config: DemoConfig, steps: list[int], manifest: Path, labels: list[Path], probe,
              options) -> None:
    """Every (model, pre-training seed, kernel): stability.md / stability.json (curve_stability.py)."""
    import curve_stability

    kinds = args.models.split(",")
    recipe = {kind: list(recipe_overrides(kind, config)) for kind in kinds}
    for override in args.recipe:
        model, _, setting = override.rpartition(":") if ":" in override.split("=")[0] else ("", "", override)
        for kind in kinds if not model else [model]:
            recipe[kind].append(setting)
    kernels = [k for k in args.kernels.split(",") if k] or [torch.backends.cpu.get_cpu_capability().lower()]
    seeds = [int(s) for s in args.pretrain_seeds.split(",")]
    runs = curve_stability.run_all(out, kinds, seeds, kernels, steps, manifest, labels, recipe, args.threads,
                                   args.monitor_every, args.jobs)
    averages = {}
    if args.probe:
        from musicssl.evaluate.benchmark import run_benchmark

        names = {f"{name}@{step}={run['checkpoints'][step]}": (name, step)
                 for name, run in runs.items() for step in steps if step in run["checkpoints"]}
        results = run_benchmark(list(names), {task: out / "data" / folder for task, folder in DEMO_TASKS.items()},
                                out / "stability_bench", probe, options=options, device=args.device, progress=True,
                                command="learning_curve.py --pretrain-seeds (stability table)")
        labelled = {name.split("=", 1)[0]: value for name, value in names.items()}
        averages = {labelled[row["model"]]: row["average"]
                    for row in curve_rows(results, {n: (n, s) for n, (_, s) in labelled.items()})}
    cpu = (f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}; kernels {kernels}; "
           f"recipe overrides {json.dumps(recipe)}")
    prior = curve_stability.majority_share(labels[0])
    rows = curve_stability.stability_rows(runs, steps, args.pretext_window, averages, prior)
    text = curve_stability.stability_markdown(rows, steps, cpu, prior)
    (out / "stability.md").write_text(text)
    (out / "stability.json").write_text(json.dumps({"rows": rows, "cpu": cpu, "steps": steps, "majority_share": prior},
                                                   indent=1, default=str))
    print(text)


def why(out: Path, names: dict[str, tuple[str, int]], args, probe, options) -> str:
    """Pretext accuracy, per-layer probes and collapse statistics of every checkpoint: why.md."""
    from musicssl.evaluate.benchmark import run_benchmark

    data = out / "data"
    report: dict = {"pretext": pretext_rows(out, names, args.pretext_window)}
    tasks = [t for t in args.layer_tasks.split(",") if t]
    results = run_benchmark(list(names), {task: data / DEMO_TASKS[task] for task in tasks}, out / "layers",
                            probe.replace(layers=None), cache_dir=out / "cache", options=options,
                            device=args.device, progress=True, command="learning_curve.py (per-layer probes)")
    report["layers"] = layer_rows(results)
    report["collapse"] = collapse_rows(out, names, options)
    (out / "why.json").write_text(json.dumps(report, indent=1))
    text = why_markdown(report, args.pretext_window)
    (out / "why.md").write_text(text)
    return text


def pretext_rows(out: Path, names: dict[str, tuple[str, int]], window: int) -> list[dict]:
    """Per checkpoint, the mean of each logged pretext number over the steps (step - window, step]."""
    rows = []
    for name, (model, step) in names.items():
        kind = next(k for k, v in MODELS.items() if v == model)
        if step == 0:
            continue
        records = [json.loads(line) for line in (out / kind / "log.jsonl").read_text().splitlines() if line.strip()]
        near = [r for r in records if step - window < r.get("step", -1) <= step]
        values = {key: sum(r[key] for r in near if key in r) / max(1, sum(key in r for r in near))
                  for key in PRETEXT_KEYS[kind] if any(key in r for r in near)}
        chance = next((r["chance/masked"] for r in near if "chance/masked" in r), None)
        rows.append({"model": model, "step": step, "values": values, "chance": chance, "logged_steps": len(near)})
    return rows


def layer_rows(results) -> list[dict]:
    """Per (model@step, task): each layer choice's test score x100, mean over probe seeds."""
    rows = []
    for result in results:
        metric = display_metrics(result.task)[0]
        by_layer: dict[str, list[float]] = {}
        for run in result.runs:
            by_layer.setdefault(str(run.layer), []).append(100 * run.test[metric])
        rows.append({"model": result.model, "task": result.task, "metric": metric,
                     "layers": {layer: sum(v) / len(v) for layer, v in by_layer.items()}})
    return rows


def collapse_rows(out: Path, names: dict[str, tuple[str, int]], options) -> list[dict]:
    """collapse_stats of every layer on the GTZAN clips' cached windows (all splits)."""
    from musicssl.evaluate.benchmark import load_tasks
    from musicssl.evaluate.diagnostics import collapse_stats
    from musicssl.evaluate.features import FeatureCache
    from musicssl.evaluate.sources import open_source

    loaded, _ = load_tasks({"gtzan": out / "data" / DEMO_TASKS["gtzan"]}, options)
    task, splits = loaded["gtzan"]
    items = [item for name in ("train", "valid", "test") for item in splits[name]]
    rows = []
    for spec in names:
        source = open_source(spec)
        cache = FeatureCache(out / "cache", source, "gtzan", task.protocol)
        cache.extract(cache.missing(items), progress=False)
        stats = collapse_stats(np.asarray(cache.load(items, layer=None).rows))
        rows.append({"model": source.name, **stats})
    return rows


def why_markdown(report: dict, window: int) -> str:
    lines = [f"Pretext task (mean over the logged steps of the last {window} updates before each checkpoint):", ""]
    keys = sorted({key for row in report["pretext"] for key in row["values"]})
    lines += ["| model | updates | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for row in report["pretext"]:
        cells = [f"{row['values'][k]:.3f}" if k in row["values"] else "-" for k in keys]
        lines.append(f"| {row['model']} | {row['step']} | " + " | ".join(cells) + " |")
    chances = {row["model"]: row["chance"] for row in report["pretext"] if row["chance"] is not None}
    if chances:  # 1/k: the MFCC codebook's k (MusicHuBERT), the random codebook's 4,096 (BEST-RQ)
        listed = ", ".join(f"{model} {chance:.3g}" for model, chance in chances.items())
        lines.append(f"\nChance masked accuracy (1/k of the first codebook): {listed}.")
    lines += ["", "Per-layer probes (test x100, mean over probe seeds; layer 0 = the CNN's output):", ""]
    layers = sorted({layer for row in report["layers"] for layer in row["layers"]}, key=lambda v: (not v.isdigit(), v))
    lines += ["| model | task | " + " | ".join(layers) + " |", "|" + "---|" * (len(layers) + 2)]
    for row in report["layers"]:
        cells = [f"{row['layers'][layer]:.1f}" if layer in row["layers"] else "-" for layer in layers]
        lines.append(f"| {row['model']} | {row['task']} {row['metric']} | " + " | ".join(cells) + " |")
    lines += ["", "Collapse statistics per layer (GTZAN windows; musicssl.evaluate.diagnostics):", "",
              "| model | mean cosine per layer | effective rank per layer | top-1 variance share per layer |",
              "|---|---|---|---|"]
    for row in report["collapse"]:
        lines.append(f"| {row['model']} | " + " | ".join(" / ".join(f"{v:.2f}" if key != "effective_rank" else f"{v:.1f}"
                                                                    for v in row[key])
                                                         for key in ("cosine", "effective_rank", "top_share")) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
