"""`musicssl <command>`: a thin layer over functions the tests also call."""

from __future__ import annotations

import argparse
import sys
import time


def _layers(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes 'all' or comma-separated integers, got {text!r}")


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
    parser.add_argument("--chunk-seconds", type=float, default=30.0,
                        help="process long audio in windows of this length (0 = one pass)")
    parser.add_argument("--context-seconds", type=float, default=0.0,
                        help="extra audio each side of a chunk, computed and discarded")
    parser.add_argument("--pool", choices=("none", "mean"), default="none", help="mean over time")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    parser.set_defaults(run=run_extract)


def run_extract(args) -> int:
    from musicssl.extract import expand_audio_paths, extract_to_npz, load_model

    encoder = load_model(args.model, device=args.device)
    paths = expand_audio_paths(args.audio)
    if not paths:
        print("error: no audio files found in the given paths", file=sys.stderr)
        return 2
    started = time.perf_counter()
    written, failures = extract_to_npz(encoder, paths, args.out, args.layers,
                                       args.chunk_seconds or None, args.context_seconds, args.pool)
    elapsed = time.perf_counter() - started
    print(f"wrote {written} of {len(paths)} files to {args.out} in {elapsed:.1f} s "
          f"({encoder.num_hidden_states} hidden states available, {encoder.frame_rate_hz:g} frames/s)")
    if failures:
        print(f"{len(failures)} file(s) skipped (reasons above)", file=sys.stderr)
    return 0 if written else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicssl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_extract(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
