"""`musicssl rvq fit`: MuQ's Mel-RVQ tokenizer, trained on a corpus (musicssl.targets.rvq_fit)."""

from __future__ import annotations

from musicssl.cli.arguments import _non_negative_int, _positive_int
from musicssl.errors import device_argument


def add_rvq(commands) -> None:
    parser = commands.add_parser("rvq", help="MuQ's Mel-RVQ tokenizer (the targets of MuQ)",
                                 description="Residual VQ over stacked log-mel frames (MuQ's Mel-RVQ).")
    actions = parser.add_subparsers(dest="action", required=True)
    fit = actions.add_parser(
        "fit", help="measure the corpus's mel statistics, then train the Mel-RVQ",
        description="Fit MuQ's Mel-RVQ on DATA/train.tsv (a manifest made with --sample-rate 24000) and write "
                    "RVQ_DIR: config.json (config, mel statistics, provenance), model.safetensors, log.jsonl.")
    fit.add_argument("--data", required=True, help="manifest directory (train.tsv at 24 kHz)")
    fit.add_argument("-o", "--out", required=True, help="output directory RVQ_DIR (replaced whole when done)")
    fit.add_argument("--preset", default="base", help="base (MuQ's recipe), mert75 (75 Hz tokens for "
                                                            "pretrain mert) or tiny (CPU tests)")
    fit.add_argument("--steps", type=_positive_int, default=None, help="Adam steps (default: the preset's)")
    fit.add_argument("--seed", type=_non_negative_int, default=None,
                     help="crops, their order and the initial weights (default: the preset's, 0)")
    fit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. fit.batch_size=16 or model.num_codebooks=4")
    fit.add_argument("--device", type=device_argument, default="cpu", help="cpu (default), cuda, cuda:1")
    fit.set_defaults(run=run_rvq_fit)


def run_rvq_fit(args) -> int:
    from musicssl.targets.rvq_fit import fit_mel_rvq, resolve_fit_run

    run = resolve_fit_run(args.preset, args.steps, args.seed, args.overrides)  # a bad preset or key: before any work
    out = fit_mel_rvq(args.data, args.out, run, device=args.device)
    print(f"wrote {out}")
    return 0
