"""`musicssl <command>`: a thin layer over functions the tests also call."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from musicssl.errors import INTERRUPTED_EXIT, USER_ERRORS, OneLineParser, device_argument, one_line


def _layers(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes 'all' or comma-separated integers, got {text!r}")


def _number(cast, minimum: float, inclusive: bool, what: str):
    """An argparse `type=` that refuses values outside the range at parse time (one usage line, exit 2):
    a chunk of -5 s or 0 seeds would otherwise run and return results far off the intended ones."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or not (value >= minimum if inclusive else value > minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_float = _number(float, 0.0, False, "a number > 0")
_non_negative_float = _number(float, 0.0, True, "a number >= 0")
_positive_int = _number(int, 1, True, "an integer >= 1")
_non_negative_int = _number(int, 0, True, "an integer >= 0")
_clusters = _number(int, 2, True, "an integer >= 2 (one cluster carries no information)")


def _bounded(parse, maximum: float, what: str):
    def bounded(text: str):
        value = parse(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return bounded


_fraction = _bounded(_positive_float, 1.0, "a fraction in (0, 1]")
_percent = _bounded(_non_negative_float, 100.0, "a percent in [0, 100]")


def _chunk_seconds(text: str) -> float | None:
    """Seconds > 0, or 'none' for one pass over the whole track (0 would be a one-hop window)."""
    if text.lower() == "none":
        return None
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, or 'none' for one pass, got {text!r}") from None


def add_extract(commands) -> None:
    parser = commands.add_parser(
        "extract", help="frozen features of audio files into one .npz",
        description="Write every requested hidden state of each file to OUT.npz, one (K, T, D) "
                    "float32 array per file keyed by its path (or (K, D) with --pool mean).")
    parser.add_argument("model", help="model directory: ours, a checkpoint, or a transformers one")
    parser.add_argument("audio", nargs="+", help="audio files or folders (searched recursively)")
    parser.add_argument("-o", "--out", required=True, help="output .npz")
    parser.add_argument("--layers", type=_layers, default=None,
                        help="'all' (default) or e.g. 0,6,12 (0 = Transformer input, i = block i)")
    parser.add_argument("--chunk-seconds", type=_chunk_seconds, default=30.0,
                        help="process long audio in windows of this length, > 0 ('none' = one pass)")
    parser.add_argument("--context-seconds", type=_non_negative_float, default=0.0,
                        help="extra audio each side of a chunk, computed and discarded")
    parser.add_argument("--pool", choices=("none", "mean"), default="none", help="mean over time")
    parser.add_argument("--device", type=device_argument, default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    parser.set_defaults(run=run_extract)


def run_extract(args) -> int:
    from musicssl.extract import check_output_file, expand_audio_paths, extract_to_npz, load_model

    check_output_file(args.out)  # before the model loads and any file is decoded
    paths = expand_audio_paths(args.audio)
    if not paths:
        raise ValueError(f"{' '.join(args.audio)}: no audio files found")
    encoder = load_model(args.model, device=args.device)
    started = time.perf_counter()
    written, failures = extract_to_npz(encoder, paths, args.out, args.layers,
                                       args.chunk_seconds, args.context_seconds, args.pool)
    elapsed = time.perf_counter() - started
    print(f"wrote {written} of {len(paths)} files to {args.out} in {elapsed:.1f} s "
          f"({encoder.num_hidden_states} hidden states available, {encoder.frame_rate_hz:g} frames/s)")
    if failures:
        print(f"{len(failures)} file(s) skipped (reasons above)", file=sys.stderr)
    return 0


def add_manifest(commands) -> None:
    parser = commands.add_parser(
        "manifest", help="list a folder of audio as fairseq train.tsv / valid.tsv",
        description="Decode every audio file under AUDIO_DIR once; write train.tsv and valid.tsv "
                    "(root line, then relative/path<TAB>num_samples at --sample-rate) and "
                    "manifest_report.tsv listing the files left out and why.")
    parser.add_argument("audio_dir")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--valid-percent", type=_percent, default=0.0, help="percent of files for valid.tsv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=_positive_int, default=16_000)
    parser.add_argument("--min-seconds", type=_non_negative_float, default=0.025,
                        help="leave out shorter files (default: the 400-sample receptive field)")
    parser.add_argument("--workers", type=_positive_int, default=None, help="decoding processes (default: min(4, cores))")
    parser.set_defaults(run=run_manifest)


def run_manifest(args) -> int:
    from musicssl.data.manifest import REPORT_NAME, build_manifest

    summary = build_manifest(args.audio_dir, args.out, args.valid_percent, args.seed, args.sample_rate,
                             max(1, round(args.min_seconds * args.sample_rate)), args.workers)
    print(f"train.tsv: {summary.train} files, valid.tsv: {summary.valid} files, {summary.hours:.3f} h; "
          f"{len(summary.failed)} left out (see {args.out}/{REPORT_NAME})")
    return 0


def add_prepare(commands) -> None:
    parser = commands.add_parser(
        "prepare", help="decode a manifest once into int16 shards at the model's rate (fast pre-training reads)",
        description="Decode and resample every row of the manifest once into int16 shards at --sample-rate; "
                    "OUT is then a --data directory for `pretrain` (same rows, so label files still line up). "
                    "Killed runs resume (finished shards are kept); array jobs use --shard I --num-shards N.")
    parser.add_argument("--data", required=True, help="manifest directory (train.tsv)")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--splits", nargs="+", default=["train"])
    parser.add_argument("--sample-rate", type=int, default=16_000, help="the model's rate (the manifest's rate)")
    parser.add_argument("--num-shards", type=int, default=None, help="shard count (default: one per 256 rows)")
    parser.add_argument("--shard", type=int, default=None, help="write only this shard (an array job's index)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: min(4, cores))")
    parser.set_defaults(run=run_prepare)


def run_prepare(args) -> int:
    from musicssl.data.prepare import prepare

    summary = prepare(args.data, args.out, args.sample_rate, args.splits, args.num_shards, args.shard, args.workers)
    print(f"prepare: wrote {len(summary.written)} shard(s) ({summary.unreadable} unreadable rows); "
          f"{summary.done} of {summary.total} complete in {args.out}")
    return 0


def add_labels(commands) -> None:
    parser = commands.add_parser("labels", help="k-means pre-training labels (MFCC, pitch or a model layer)",
                                 description="Fit k-means on frame features and write one line of "
                                             "cluster ids per manifest row.")
    kinds = parser.add_subparsers(dest="kind", required=True)
    mfcc = kinds.add_parser("mfcc", help="MFCC (39 or 60 dims, 100 Hz) clusters: the first iteration")
    mfcc.add_argument("--dims", type=int, choices=(39, 60), default=39,
                      help="39 = 13 cepstra + deltas (fairseq); 60 = 20 cepstra + deltas (the paper)")
    pitch = kinds.add_parser("pitch", help="semitone-spectrum (or chroma) clusters at 100 Hz: a harmonic codebook "
                                          "to train beside MFCC labels")
    pitch.add_argument("--bins", type=int, choices=(84, 12), default=84,
                       help="84 = semitones C1..B7; 12 = chroma (pitch classes)")
    layer = kinds.add_parser("layer", help="clusters of a model's hidden state: a later iteration")
    layer.add_argument("--model", required=True, help="model directory")
    layer.add_argument("--layer", type=_non_negative_int, required=True, help="hidden state index (6 = block 6)")
    for sub in (mfcc, pitch, layer):
        sub.add_argument("--data", required=True, help="manifest directory (train.tsv, valid.tsv)")
        sub.add_argument("--out", required=True, help="label directory")
        sub.add_argument("--k", type=_clusters, default=500, help="clusters (paper: 500 or 2000)")
        sub.add_argument("--fit-fraction", type=_fraction, default=0.1,
                         help="fraction of train files whose frames feed k-means (fairseq percent 0.1)")
        sub.add_argument("--max-frames", type=_positive_int, default=1_000_000, help="cap on frames kept for fitting")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--splits", nargs="+", default=["train", "valid"])
        sub.add_argument("--shard", type=_non_negative_int, default=0)
        sub.add_argument("--num-shards", type=_positive_int, default=1)
        sub.add_argument("--fit-only", action="store_true", help="fit the clusters and stop (before shards)")
        sub.add_argument("--overwrite", action="store_true",
                         help="replace the label set in --out made with other arguments (all its split files)")
        sub.add_argument("--device", type=device_argument, default=None)
        sub.set_defaults(run=run_labels)
    merge = kinds.add_parser("merge", help="join shard files into {split}.km and check them")
    merge.add_argument("label_dir")
    merge.add_argument("--data", required=True, help="manifest directory")
    merge.add_argument("--num-shards", type=int, required=True)
    merge.add_argument("--splits", nargs="+", default=["train", "valid"])
    merge.set_defaults(run=run_merge)


def run_labels(args) -> int:
    from musicssl.targets.kmeans import KMeansConfig
    from musicssl.targets.labels import LayerFeatures, MfccFeatures, PitchFeatures, make_labels

    if args.kind == "mfcc":
        features = MfccFeatures(f"mfcc{args.dims}", device=args.device)
    elif args.kind == "pitch":
        features = PitchFeatures("semitone84" if args.bins == 84 else "chroma12", device=args.device)
    else:
        features = LayerFeatures(args.model, args.layer, device=args.device)
    config = KMeansConfig(k=args.k, seed=args.seed, max_frames=args.max_frames, sample_fraction=None)
    make_labels(args.data, args.out, features, config, args.fit_fraction, tuple(args.splits),
                args.shard, args.num_shards, args.fit_only, overwrite=args.overwrite)
    return 0


def run_merge(args) -> int:
    from musicssl.targets.labels import merge_labels

    merge_labels(args.data, args.label_dir, args.num_shards, tuple(args.splits))
    return 0


def add_pretrain(commands) -> None:
    parser = commands.add_parser("pretrain", help="pre-train MusicHuBERT, Music2Vec or BEST-RQ (torchrun for several "
                                                  "processes)",
                                 description="Pre-train a model; the same command runs under torchrun.")
    methods = parser.add_subparsers(dest="method", required=True)
    hubert = methods.add_parser("musichubert", help="HuBERT masked prediction of k-means labels")
    hubert.add_argument("--labels", required=True, nargs="+", metavar="DIR",
                        help="label directory from `musicssl labels`; several (same grid, e.g. MFCC then pitch) "
                             "train one codebook each")
    music2vec = methods.add_parser("music2vec", help="data2vec regression of EMA-teacher layer averages")
    music2vec.add_argument("--variant", default="vanilla",
                           help="the paper's ablations: vanilla, span5, span15, prob50, prob80, target12, "
                                "crop5s, steps800k")
    bestrq = methods.add_parser("bestrq", help="BEST-RQ: masked prediction of frozen random-projection tokens "
                                               "of the log-mel (no labels step)")
    for sub in (hubert, music2vec, bestrq):
        sub.add_argument("--preset", default="base", help="base (the paper's) or tiny (CPU tests, the demo)")
        sub.add_argument("--data", required=True, help="manifest directory (train.tsv)")
        sub.add_argument("--out", required=True, help="run directory (resumes if it holds checkpoints)")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="config override, e.g. trainer.max_steps=1000 or model.mask.mask_prob=0.65")
        sub.add_argument("--resume", default=None, help="a checkpoint directory to resume from")
        sub.add_argument("--quiet", action="store_true", help="no progress bar (log.jsonl is still written)")
        sub.set_defaults(run=run_pretrain)


def run_pretrain(args) -> int:
    from musicssl.train.interrupt import Interrupted
    from musicssl.train.launch import pretrain

    try:
        checkpoint = pretrain(args.method, args.preset, args.data, getattr(args, "labels", None), args.out,
                              args.overrides, args.resume, getattr(args, "variant", "vanilla"),
                              progress=not args.quiet)
    except Interrupted as stopped:  # its one line is printed (by rank 0); a checkpoint is saved
        return stopped.exit_code
    except KeyboardInterrupt:  # the second Ctrl-C: no checkpoint of the current update
        print(f"musicssl pretrain: aborted; {args.out} resumes from its newest checkpoint", file=sys.stderr)
        return 130
    if checkpoint is not None:
        print(f"final checkpoint: {checkpoint}")
    return 0


def _probe_layers(text: str) -> tuple[int | str, ...] | None:
    if text == "all":
        return None
    layers: list[int | str] = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        if part == "weighted":
            layers.append(part)
            continue
        try:
            layers.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--layers takes 'all' or e.g. 0,6,12,weighted; got {part!r}")
    return tuple(layers)


def _learning_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(_positive_float(part) for part in text.split(",") if part.strip())
    except argparse.ArgumentTypeError:
        rates = ()
    if not rates:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0, got {text!r}")
    return rates


def _options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def _probe_arguments(parser) -> None:
    parser.add_argument("--layers", type=_probe_layers, default=None,
                        help="'all' (default: every layer and the learnt weighted sum) or e.g. 6,12,weighted")
    parser.add_argument("--lrs", type=_learning_rates, default=None,
                        help="learning-rate grid (default: 5e-5,1e-4,5e-4,1e-3,5e-3,1e-2)")
    parser.add_argument("--seeds", type=_positive_int, default=1, help="runs per configuration; reports mean and std")
    parser.add_argument("--max-epochs", type=_positive_int, default=None, help="cap on epochs (default: the task's)")
    parser.add_argument("--beat-decoder", choices=("dbn", "peaks"), default="dbn")
    parser.add_argument("--batch-size", type=_positive_int, default=64,
                        help="probe batch (default 64, MARBLE's); a dataset of a few hundred items wants ~8")
    # the keys of evaluate/probe_protocol.py's LAYER_WEIGHT_INITS, spelt out so parsing does not import torch
    parser.add_argument("--layer-weight-init", choices=("normal", "zeros"), default="normal",
                        help="weighted-sum logits: N(0,1) as MARBLE (default), or zeros: the plain layer mean")
    parser.add_argument("--cache", default=None, help="feature cache folder (default: OUT/cache)")
    parser.add_argument("--device", type=device_argument, default=None, help="cpu, cuda (default: cuda if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--shard", type=_non_negative_int, default=0,
                        help="extract only share SHARD of --num-shards (array jobs), then stop; under torchrun "
                             "the ranks shard by themselves and rank 0 probes")
    parser.add_argument("--num-shards", type=_positive_int, default=1)


def _probe_config(args):
    from musicssl.evaluate.probe_protocol import LEARNING_RATES, ProbeConfig

    return ProbeConfig(layers=args.layers, learning_rates=args.lrs or LEARNING_RATES,
                       seeds=tuple(1234 + i for i in range(args.seeds)), max_epochs=args.max_epochs,
                       beat_decoder=args.beat_decoder, batch_size=args.batch_size,
                       layer_weight_init=args.layer_weight_init)


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
                                skip_missing=getattr(args, "skip_missing", False))
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


def add_synth(commands) -> None:
    parser = commands.add_parser(
        "synth", help="generate music with ground truth: a pre-training corpus and probe datasets",
        description="Deterministic numpy synthesis. Writes OUT/corpus/*.wav and probe datasets in the real "
                    "datasets' layouts (NSynth, GS, GTZAN + GTZAN-Rhythm, MTT, EMO).")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--preset", default="demo", help="demo or tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run_synth)


def run_synth(args) -> int:
    import json

    from musicssl.synth.datasets import synthesize

    summary = synthesize(args.out, args.preset, seed=args.seed)
    print(json.dumps(summary, indent=1, default=str))
    return 0


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


def add_convert(commands) -> None:
    parser = commands.add_parser(
        "convert", help="a fairseq checkpoint -> a model directory load_model and transformers read",
        description="Read a fairseq HuBERT, data2vec-audio or MERT checkpoint without running pickled code "
                    "(allow-list unpickler) and write OUT_DIR: config.json, model.safetensors, "
                    "preprocessor_config.json, and training_state/ (pre-training heads, EMA, fairseq config).")
    parser.add_argument("source_format", choices=("fairseq",), help="checkpoint format")
    parser.add_argument("checkpoint", help="checkpoint file, e.g. checkpoint_best.pt")
    parser.add_argument("out_dir", help="output model directory")
    parser.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from musicssl.interop.fairseq import convert_fairseq

    out, config, heads = convert_fairseq(args.checkpoint, args.out_dir)
    print(f"wrote {out}: {config.variant} backbone, {config.num_layers} layers x {config.dim}, "
          f"{config.sample_rate} Hz, normalize_waveform={config.normalize_waveform}; "
          f"{len(heads)} other tensors kept in training_state/heads.safetensors")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="musicssl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_extract(commands)
    add_manifest(commands)
    add_prepare(commands)
    add_labels(commands)
    add_pretrain(commands)
    add_probe(commands)
    add_benchmark(commands)
    add_synth(commands)
    add_demo(commands)
    add_convert(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:  # the policy: musicssl.errors
        if os.environ.get("MUSICSSL_DEBUG"):
            raise
        print(f"musicssl {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"musicssl {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
