"""`musicssl synth OUT | synth speech -o OUT`: generated music with ground truth, or speech-like
audio for the study's speech-domain control (musicssl.synth)."""

from __future__ import annotations

import json

from musicssl.cli.arguments import _positive_float


def add_synth(commands) -> None:
    parser = commands.add_parser(
        "synth", help="generate music with ground truth (synth OUT), or speech (synth speech -o OUT)",
        description="Deterministic synthesis. `synth OUT`: OUT/corpus/*.wav and probe datasets in the real "
                    "datasets' layouts (NSynth, GS, GTZAN + GTZAN-Rhythm, MTT, EMO). `synth speech -o OUT --hours H`: "
                    "16 kHz speech for the speech-domain control of `musicssl study` (eSpeak NG voices when the "
                    "optional espeakng-loader package is installed, a formant synthesiser otherwise). A music output "
                    "folder named 'speech' is written as ./speech.")
    parser.add_argument("out", help="output folder (music), or the word 'speech'")
    parser.add_argument("--preset", default="demo", help="music: demo, curve, smoke or tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", dest="speech_out", default=None, help="speech: output folder")
    parser.add_argument("--hours", type=_positive_float, default=None, help="speech: hours of audio")
    parser.add_argument("--engine", choices=("auto", "espeak", "formant"), default="auto",
                        help="speech: eSpeak NG (espeakng-loader), the numpy formant synthesiser, or auto")
    parser.set_defaults(run=run_synth)


def run_synth(args) -> int:
    if args.out == "speech":
        from musicssl.synth.speech import synthesize_speech

        if args.speech_out is None or args.hours is None:
            raise ValueError("synth speech: give -o OUT and --hours H")
        summary = synthesize_speech(args.speech_out, args.hours, seed=args.seed, engine=args.engine)
    else:
        if args.speech_out is not None or args.hours is not None:
            raise ValueError("-o and --hours are for `musicssl synth speech`; music takes `musicssl synth OUT`")
        from musicssl.synth.datasets import synthesize

        summary = synthesize(args.out, args.preset, seed=args.seed)
    print(json.dumps(summary, indent=1, default=str))
    return 0
