"""`musicssl <command>`: a thin layer over functions the tests also call."""

from __future__ import annotations

import argparse
import os
import sys

from musicssl.cli.data_commands import add_convert, add_extract, add_labels, add_manifest, add_prepare
from musicssl.cli.eval_commands import add_benchmark, add_demo, add_probe
from musicssl.cli.rvq_commands import add_rvq
from musicssl.cli.study_commands import add_study
from musicssl.cli.synth_commands import add_synth
from musicssl.cli.train_commands import add_pretrain
from musicssl.errors import INTERRUPTED_EXIT, USER_ERRORS, OneLineParser, one_line


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
    add_rvq(commands)
    add_study(commands)
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

