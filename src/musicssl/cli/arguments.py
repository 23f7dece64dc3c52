"""Argument types shared by the commands: each refuses a bad value at parse time, naming it."""

from __future__ import annotations

import argparse
import math

from musicssl.errors import device_argument


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
    dtype_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--shard", type=_non_negative_int, default=0,
                        help="extract only share SHARD of --num-shards (array jobs), then stop; under torchrun "
                             "the ranks shard by themselves and rank 0 probes")
    parser.add_argument("--num-shards", type=_positive_int, default=1)


def dtype_argument(parser) -> None:
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="encoder precision: auto = bf16 autocast on CUDA, fp32 on a CPU; bf16 on a CPU only "
                             "with native bf16 (avx512_bf16 / AMX). Cached features record it")


def _probe_config(args):
    from musicssl.evaluate.probe_protocol import LEARNING_RATES, ProbeConfig

    return ProbeConfig(layers=args.layers, learning_rates=args.lrs or LEARNING_RATES,
                       seeds=tuple(1234 + i for i in range(args.seeds)), max_epochs=args.max_epochs,
                       beat_decoder=args.beat_decoder, batch_size=args.batch_size,
                       layer_weight_init=args.layer_weight_init)
