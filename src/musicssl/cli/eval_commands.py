"""`musicssl probe | benchmark | demo`: the MIR tasks and the end-to-end demo."""

from __future__ import annotations

import os
import sys

from musicssl.cli.arguments import _options, _probe_arguments, _probe_config
from musicssl.errors import device_argument


def add_probe(commands) -> None:
    parser = commands.add_parser(
        "probe", help="probe one model on one task (MLP on frozen features)",
        description="Extract (cached) features of one task's dataset and probe them over layers and "
                    "learning rates; the configuration is chosen on validation, its test score reported.")
    parser.add_argument("model", help="model directory, random:<dir or preset>, or mfcc")
    parser.add_argument("--task", required=True, help="task name, e.g. gtzan, mtt, gs, nsynth_pitch")
    parser.add_argument("--data", required=True, help="the dataset folder, as it ships")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="task option, e.g. splits_dir=/data/gtzan_splits")
    parser.add_argument("-o", "--out", default=None, help="output folder (default: runs/probe/<task>)")
    _probe_arguments(parser)
    parser.set_defaults(run=run_probe)


def run_probe(args) -> int:
    out = args.out or os.path.join("runs", "probe", args.task)
    return _run_probes(args, [args.model], {args.task: args.data}, {args.task: _options(args.option)}, out)


def _run_probes(args, models: list[str], data_dirs: dict, options: dict, out: str) -> int:
    """What `probe` and `benchmark` share once they know their models, datasets and options."""
    from musicssl.evaluate.benchmark import BenchmarkError, run_benchmark

    shard = (args.shard, args.num_shards) if args.num_shards > 1 else None
    try:
        results = run_benchmark(models, data_dirs, out, _probe_config(args), cache_dir=args.cache, options=options,
                                device=args.device, progress=not args.quiet,
                                command="musicssl " + " ".join(sys.argv[1:]), shard=shard,
                                skip_missing=getattr(args, "skip_missing", False), dtype=args.dtype)
    except BenchmarkError as error:  # the other tasks ran and are written: exit 1, one line per failure
        for line in error.failures:
            print(f"musicssl {args.command}: failed: {line}", file=sys.stderr)
        print(f"results of the others in {out}/results.md and {out}/results.json")
        return 1
    if results:
        print(f"results in {out}/results.md and {out}/results.json")
    return 0


def add_benchmark(commands) -> None:
    parser = commands.add_parser(
        "benchmark", help="probe models on many tasks; results.md like the paper's Table 1",
        description="Each task's dataset is read from DATA_ROOT/<its folder> (MTT, GS, GTZAN, EMO, NSynth, "
                    "VocalSet, MTG); see docs/probing.md for the layouts.")
    parser.add_argument("models", nargs="+", help="model directories, random:<dir or preset>, mfcc")
    parser.add_argument("--tasks", default="all", help="'all' or a comma-separated list of task names")
    parser.add_argument("--data-root", required=True, help="folder holding one folder per dataset")
    parser.add_argument("--option", action="append", default=[], metavar="TASK.KEY=VALUE",
                        help="task option, e.g. gtzan.splits_dir=/data/splits")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--skip-missing", action="store_true",
                        help="run the tasks whose datasets can be read, list the others (default: stop, naming all)")
    _probe_arguments(parser)
    parser.set_defaults(run=run_benchmark_command)


def run_benchmark_command(args) -> int:
    from pathlib import Path

    from musicssl.evaluate.tasks import get_task, resolve_tasks

    names = resolve_tasks(args.tasks)
    options: dict[str, dict[str, str]] = {}
    for key, value in _options(args.option).items():
        task, dot, option = key.partition(".")
        if not dot or task not in names:
            raise ValueError(f"--option {key}=...: expected TASK.KEY with TASK one of {names}")
        options.setdefault(task, {})[option] = value
    data_dirs = {name: Path(args.data_root) / get_task(name).default_dir for name in names}
    return _run_probes(args, args.models, data_dirs, options, args.out)


def add_demo(commands) -> None:
    parser = commands.add_parser(
        "demo", help="the whole pipeline on generated music: synth, labels, pre-training, probing",
        description="Generate music, make MFCC k-means labels, pre-train a tiny MusicHuBERT and a tiny "
                    "Music2Vec, and probe them against random-init backbones and MFCC statistics.")
    parser.add_argument("--out", default="runs/demo", help="output folder (resumes if it exists)")
    parser.add_argument("--preset", default="demo", help="demo (about 15 min on 2 cores) or smoke (a few minutes)")
    parser.add_argument("--device", type=device_argument, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from musicssl.demo import run_demo as demo

    demo(args.out, args.preset, device=args.device, progress=not args.quiet)
    return 0
