"""`musicssl pretrain METHOD`: every pre-training method on one trainer (musicssl.train)."""

from __future__ import annotations

import sys


def add_pretrain(commands) -> None:
    parser = commands.add_parser("pretrain", help="pre-train MusicHuBERT, Music2Vec, BEST-RQ, MusicFM, MuQ or MERT "
                                                  "(torchrun for several processes)",
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
    musicfm = methods.add_parser("musicfm", help="MusicFM: BEST-RQ tokens of the log-mel predicted by a conformer over "
                                                 "the mel (24 kHz, 25 Hz; no labels step)")
    muq = methods.add_parser("muq", help="MuQ: MusicFM's model predicting the codes of a Mel-RVQ fitted with "
                                         "`musicssl rvq fit`")
    muq.add_argument("--rvq", default=None, help="Mel-RVQ directory from `musicssl rvq fit` (its mel statistics "
                                                 "normalise the model's input too)")
    mert = methods.add_parser("mert", help="MERT: 8 acoustic codebooks at 75 Hz, the CQT at masked frames and "
                                           "in-batch mixtures (24 kHz)")
    mert.add_argument("--labels", required=True, nargs="+", metavar="DIR",
                      help="8 codebooks at 75 Hz of 24 kHz audio: a directory from `musicssl labels rvq`, or 8 "
                           "label directories")
    mert.add_argument("--init", default=None, metavar="DIR",
                      help="continue pre-training a MERT-v1 directory (e.g. models/MERT-v1-95M): the backbone and "
                           "its architecture from DIR, the recipe from --preset, fresh heads")
    for sub in (hubert, music2vec, bestrq, musicfm, muq, mert):
        presets = ("95m (MERT-95M), 330m (MERT-330M) or tiny (CPU tests)" if sub is mert else
                   "base (the paper's) or tiny (CPU tests, the demo)"
                   + ("; large: MusicFM's 330M" if sub in (musicfm, muq) else ""))
        sub.add_argument("--preset", default="95m" if sub is mert else "base", help=presets)
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
                              progress=not args.quiet, rvq=getattr(args, "rvq", None),
                              init=getattr(args, "init", None))
    except Interrupted as stopped:  # its one line is printed (by rank 0); a checkpoint is saved
        return stopped.exit_code
    except KeyboardInterrupt:  # the second Ctrl-C: no checkpoint of the current update
        print(f"musicssl pretrain: aborted; {args.out} resumes from its newest checkpoint", file=sys.stderr)
        return 130
    if checkpoint is not None:
        print(f"final checkpoint: {checkpoint}")
    return 0
