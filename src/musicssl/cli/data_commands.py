"""`musicssl extract | manifest | prepare | labels | convert`: audio in; features,
manifests, labels and model directories out."""

from __future__ import annotations

import sys
import time

from musicssl.cli.arguments import (
    _chunk_seconds, _clusters, _fraction, _layers, _non_negative_float, _non_negative_int, _percent, _positive_int,
    dtype_argument,
)
from musicssl.errors import device_argument


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
    dtype_argument(parser)
    parser.set_defaults(run=run_extract)


def run_extract(args) -> int:
    from musicssl.extract import check_output_file, expand_audio_paths, extract_to_npz, load_model

    check_output_file(args.out)  # before the model loads and any file is decoded
    paths = expand_audio_paths(args.audio)
    if not paths:
        raise ValueError(f"{' '.join(args.audio)}: no audio files found")
    encoder = load_model(args.model, device=args.device, dtype=args.dtype)
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
    parser = commands.add_parser("labels", help="pre-training labels: k-means (MFCC, pitch or a model layer) or a Mel-RVQ's codes",
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
    rvq = kinds.add_parser("rvq", help="residual codes, one label directory per codebook (MERT's 8 at 75 Hz): a "
                                       "fitted Mel-RVQ's (`rvq fit --preset mert75`) or EnCodec 24 kHz's",
                           description="Tokenise every manifest row with a Mel-RVQ from `musicssl rvq fit` (--rvq) or "
                                       "with EnCodec 24 kHz at 6 kbps from a checkpoint you have (--codec encodec "
                                       "--checkpoint encodec_24khz-d7cc33bc.th) and write CODES: codebooks.json and "
                                       "codebook_i/ (labels.json, {split}.km). `--labels CODES` trains on all codebooks.")
    rvq.add_argument("--data", required=True, help="manifest directory (train.tsv[, valid.tsv]) at the tokenizer's "
                                                   "rate (24 kHz for EnCodec)")
    rvq.add_argument("-o", "--out", required=True, help="output directory CODES (replaced whole when done)")
    source = rvq.add_mutually_exclusive_group(required=True)
    source.add_argument("--rvq", help="Mel-RVQ directory from `musicssl rvq fit`")
    source.add_argument("--codec", choices=("encodec",), help="a neural codec's codes (needs --checkpoint)")
    rvq.add_argument("--checkpoint", help="with --codec encodec: EnCodec's 24 kHz state dict (.th), read without "
                                          "running pickled code")
    rvq.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits to label (train required)")
    rvq.add_argument("--device", type=device_argument, default="cpu", help="cpu (default), cuda, cuda:1")
    rvq.set_defaults(run=run_rvq_labels)
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


def run_rvq_labels(args) -> int:
    from musicssl.targets.rvq_labels import write_codec_labels, write_rvq_labels

    if args.codec is not None:
        if args.checkpoint is None:
            raise ValueError("labels rvq --codec encodec needs --checkpoint FILE.th: EnCodec's 24 kHz state dict "
                             "(encodec_24khz-d7cc33bc.th, downloaded beforehand; nothing is fetched)")
        out = write_codec_labels(args.data, args.out, args.codec, args.checkpoint, tuple(args.splits), args.device)
    else:
        if args.checkpoint is not None:
            raise ValueError("labels rvq: --checkpoint goes with --codec encodec, not with --rvq")
        out = write_rvq_labels(args.data, args.out, args.rvq, tuple(args.splits), args.device)
    print(f"wrote {out}")
    return 0


def run_merge(args) -> int:
    from musicssl.targets.labels import merge_labels

    merge_labels(args.data, args.label_dir, args.num_shards, tuple(args.splits))
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
