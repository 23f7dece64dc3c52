"""`musicssl study paper`: the paper's Tables 1-3 as one resumable, shardable plan (musicssl.study)."""

from __future__ import annotations

import sys

from musicssl.cli.arguments import _non_negative_float, _non_negative_int, _positive_int
from musicssl.errors import device_argument


def add_study(commands) -> None:
    parser = commands.add_parser("study", help="the paper's study (Tables 1-3) as one resumable plan of runs")
    studies = parser.add_subparsers(dest="study", required=True)
    paper = studies.add_parser(
        "paper", help="Ma et al. 2023, Tables 1-3: labels, pre-training, 2nd iteration, speech control, probing",
        description="Plan every run of the paper's Tables 1-3 under OUT (each an ordinary run directory), run "
                    "what is missing, and write OUT/study.md + study.json: our tables beside the paper's and its "
                    "findings marked agrees / disagrees / not measurable. See docs/study.md.")
    paper.add_argument("--scale", choices=("tiny", "base"), default="tiny",
                       help="tiny: the tiny presets on CPU (docs/study.md); base: the paper's budgets (GPU clusters)")
    paper.add_argument("--data", required=True, help="folder of music audio (pre-training corpus)")
    paper.add_argument("--speech", default=None,
                       help="folder of speech audio >= 16 kHz for the speech-domain rows (`musicssl synth speech`)")
    paper.add_argument("--bench-root", required=True, help="folder holding one folder per probing dataset")
    paper.add_argument("--out", required=True, help="study folder (resumes)")
    paper.add_argument("--only", default="table1,table2,table3", help="comma-separated tables to plan")
    paper.add_argument("--dry-run", action="store_true", help="list the runs, their cost and status; run nothing")
    paper.add_argument("--shard", type=_non_negative_int, default=0, help="run only this shard (0-based)")
    paper.add_argument("--num-shards", type=_positive_int, default=1)
    paper.add_argument("--wait-minutes", type=_non_negative_float, default=None,
                       help="how long a step waits for inputs another shard makes (default: 0 unsharded, 180)")
    paper.add_argument("--device", type=device_argument, default=None)
    paper.add_argument("--quiet", action="store_true", help="no progress bars")
    paper.set_defaults(run=run_study)


def run_study(args) -> int:
    from pathlib import Path

    from musicssl.study.execute import check_inputs, run_steps
    from musicssl.study.findings import write_study_report
    from musicssl.study.plan import SCALES, assign_shards, build_plan, shard_of, step_status

    try:
        check_inputs(args.data, args.bench_root, args.speech)
    except (FileNotFoundError, ValueError) as problem:
        if not args.dry_run:
            raise
        # a plan can be read before its data exist (e.g. on the cluster that will run it)
        print(f"musicssl study: note: {problem} (a dry run plans anyway)", file=sys.stderr)
    scale = SCALES[args.scale]
    options = ("gs.segment_seconds=10",) if (Path(args.bench_root) / "synth.json").is_file() else ()  # generated GS
    only = tuple(part.strip() for part in args.only.split(",") if part.strip())
    plan = build_plan(scale, args.data, args.bench_root, args.out, args.speech, only, options)
    steps = shard_of(plan, args.shard, args.num_shards)
    shards = assign_shards(plan, args.num_shards)
    if args.dry_run:
        print(dry_run_text(plan, steps, shards, args.out, scale, args.speech is None))
        return 0
    wait = args.wait_minutes if args.wait_minutes is not None else (180.0 if args.num_shards > 1 else 0.0)
    outcome = run_steps(plan, steps, args.out, 60 * wait, args.device, not args.quiet)
    header = (f"Scale `{args.scale}`; {len(plan)} steps planned, "
              f"{sum(step_status(s, args.out, plan) == 'done' for s in plan)} done. Made by `musicssl "
              + " ".join(sys.argv[1:]) + "`.")
    write_study_report(args.out, scale.k_small, scale.k_large, header,
                       {"scale": args.scale, "plan": [s.command for s in plan],
                        "not_done": [s.name for s in plan if step_status(s, args.out, plan) != "done"]})
    for line in outcome.skipped + outcome.failed:
        print(f"musicssl study: not done: {line}", file=sys.stderr)
    print(f"{len(outcome.ran)} run, {len(outcome.done)} already done, {len(outcome.skipped)} skipped, "
          f"{len(outcome.failed)} failed; {args.out}/study.md")
    return 1 if outcome.failed or outcome.skipped else 0


def dry_run_text(plan, steps, shards: dict, study, scale, no_speech: bool) -> str:
    from musicssl.study.plan import step_status, total_cost

    lines = [f"{'status':8} {'shard':>5} {'cost':>9}  step  (cost in {scale.cost_unit})"]
    for step in steps:
        lines.append(f"{step_status(step, study, plan):8} {shards[step.name]:>5} {step.cost:>9.0f}  {step.name}")
        lines.append(f"{'':26}{step.command}")
    remaining = [step for step in steps if step_status(step, study, plan) != "done"]
    loads = [total_cost([s for s in plan if shards[s.name] == index]) for index in range(max(shards.values()) + 1)]
    lines.append(f"this shard: {len(steps)} steps ({len(remaining)} to run), {total_cost(steps):.0f} "
                 f"{scale.cost_unit}, {total_cost(remaining):.0f} left")
    whole = total_cost(plan)
    hours = f" = {whole / 3600:.2f} thread-hours" if scale.cost_unit.endswith("seconds") else ""
    lines.append(f"whole plan: {len(plan)} steps, {whole:.0f} {scale.cost_unit}{hours}; per shard "
                 f"{', '.join(f'{load:.0f}' for load in loads)}: side by side the study takes about the largest "
                 f"(costs from {scale.cost_source})")
    if no_speech:
        lines.append("no --speech: the speech-domain rows (HuBERT, data2vec) are not planned; their findings "
                     "will read 'not measurable'")
    return "\n".join(lines)
