"""Does a recipe learn on every seed and every CPU? The stability table of benchmarks/learning_curve.py.

    python benchmarks/learning_curve.py --out runs/stability --synth-preset curve --steps 0,1000,2000,4000,8000 \
        --models musichubert --pretrain-seeds 1,2,3 --kernels avx2,avx512 [--set KEY=VALUE ...] [--no-probe]

One host can stand for several CPUs: ATen's kernel choice (`ATEN_CPU_CAPABILITY=default|avx2|
avx512`) changes the order of float32 sums and so the rounding a run accumulates, which is what
differs between an AVX2 and an AVX-512 machine (and a GPU). Each (model, pre-training seed,
kernel) is pre-trained in its own process (the capability is read when torch loads) into
`OUT/stability/<model>-seed<S>-<kernel>/`, with the collapse alarm every `--monitor-every`
updates. The table, per run: masked accuracy at each requested step (mean over the logged steps
of the last `--pretext-window` updates), the middle layer's effective rank on the run's fixed
batch (train/collapse.py), the share of the k codes the model predicts (codebook usage, from its
masked predictions on that batch), the 7-task average of the init and the last checkpoint (the
curve's probe), and the verdict of issue 31's criterion: masked accuracy at the last step >= 2x
its value at the first and above the majority code's share (what a collapsed model scores), and
the average above the init. `--jobs N` pre-trains N runs at once. Every stage skips what is done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MODELS = {"musichubert": "MusicHuBERT", "music2vec": "Music2Vec", "bestrq": "BEST-RQ", "musicfm": "MusicFM",
          "muq": "MuQ", "mert": "MERT"}
# the pretext number a run must improve: masked accuracy (up, by 2x), or Music2Vec's loss (down)
RISING_ACCURACY = ("musichubert", "bestrq", "musicfm", "muq", "mert")
AT_24K = ("musicfm", "muq", "mert")  # models that read 24 kHz audio (the corpus listed again at that rate)
# MERT's acoustic codes for the curve: a Mel-RVQ on MERT's 75 Hz grid (8 x 1,024, `rvq fit --preset
# mert75`) fitted as briefly as the `tiny` fit (2 s crops, 8 a batch, 150 steps at 1e-3): seconds, not
# MuQ's hour; the codes are the targets' definition here, not the quality under test.
MERT_CODES_FIT = ("fit.crop_seconds=2.0", "fit.batch_size=8", "fit.steps=150", "fit.learning_rate=1e-3",
                  "fit.stats_crops=16")


@dataclass(frozen=True)
class MethodInputs:
    """What `musicssl pretrain KIND` reads besides its recipe: the manifest, and labels or a Mel-RVQ."""

    manifest: Path
    labels: tuple[Path, ...] = ()
    rvq: Path | None = None

    def cli_args(self) -> list[str]:
        return (["--labels", *map(str, self.labels)] if self.labels else []) + \
            (["--rvq", str(self.rvq)] if self.rvq else [])


def method_inputs(kind: str, out: Path, manifest: Path, labels: list[Path], progress: bool = False) -> MethodInputs:
    """MusicHuBERT: the k-means labels; MusicFM / MuQ / MERT: the corpus listed at 24 kHz
    (`out/manifest24k`), for MuQ a tiny Mel-RVQ fitted on it (`out/rvq_tiny`, ~10 s), for MERT the codes
    of a briefly fitted 75 Hz one (`out/rvq_mert75`, `out/codes_mert`); the others: the manifest."""
    if kind == "musichubert":
        return MethodInputs(manifest, tuple(labels))
    if kind not in AT_24K:
        return MethodInputs(manifest)
    from musicssl.data.manifest import build_manifest, read_manifest

    listed = out / "manifest24k"
    if not (listed / "train.tsv").exists():
        build_manifest(read_manifest(manifest / "train.tsv").root, listed, valid_percent=0.0, sample_rate=24_000,
                       progress=progress)
    if kind == "musicfm":
        return MethodInputs(listed)
    if kind == "mert":
        return MethodInputs(listed, labels=(mert_codes(out, listed),))
    rvq = out / "rvq_tiny"
    if not (rvq / "model.safetensors").exists():
        from musicssl.targets.rvq_fit import fit_mel_rvq, resolve_fit_run

        fit_mel_rvq(listed, rvq, resolve_fit_run("tiny"), say=lambda line: None)
    return MethodInputs(listed, rvq=rvq)


def mert_codes(out: Path, listed: Path) -> Path:
    """`rvq fit --preset mert75` (MERT_CODES_FIT) then `labels rvq`, each skipped when done."""
    from musicssl.targets.rvq_fit import fit_mel_rvq, resolve_fit_run
    from musicssl.targets.rvq_labels import write_rvq_labels

    rvq, codes = out / "rvq_mert75", out / "codes_mert"
    if not (rvq / "model.safetensors").exists():
        fit_mel_rvq(listed, rvq, resolve_fit_run("mert75", overrides=MERT_CODES_FIT), say=lambda line: None)
    if not (codes / "codebooks.json").exists():
        write_rvq_labels(listed, codes, rvq, splits=("train",))  # the listing at 24 kHz holds no valid rows
    return codes


def run_name(kind: str, seed: int, kernel: str) -> str:
    return f"{kind}-seed{seed}-{kernel}"


def pretrain_in_subprocess(kind: str, run_dir: Path, inputs: MethodInputs, overrides: list[str],
                           kernel: str, threads: int) -> float:
    """`musicssl pretrain KIND --preset tiny` under ATEN_CPU_CAPABILITY=kernel; returns seconds
    (0 when the run had already finished: the same command resumes or returns at once)."""
    done = run_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())["seconds"]
    command = [sys.executable, "-m", "musicssl.cli", "pretrain", kind, "--preset", "tiny", "--data",
               str(inputs.manifest), "--out", str(run_dir), "--quiet", *inputs.cli_args()]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernel, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(command, env=env, text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{run_dir.name}: pretrain exited {result.returncode}: {result.stderr[-2000:]}")
    seconds = time.perf_counter() - started
    warnings = [line for line in result.stderr.splitlines() if "collapsed" in line or "recovered" in line]
    done.write_text(json.dumps({"seconds": seconds, "kernel": kernel, "alarm": warnings}))
    return seconds


def read_log(run_dir: Path) -> list[dict]:
    records = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def pretext_at(records: list[dict], step: int, window: int, key: str) -> float | None:
    near = [r[key] for r in records if step - window < r.get("step", -1) <= step and key in r]
    return sum(near) / len(near) if near else None


def logged_at(records: list[dict], step: int, key: str) -> float | None:
    return next((r[key] for r in records if r.get("step") == step and key in r), None)


def codebook_usage(run_dir: Path, checkpoint: Path) -> float | None:
    """Share of the first codebook's k codes that a MusicHuBERT checkpoint predicts (argmax over
    every frame of the run's fixed batch, RUN/collapse_batch.npy, unmasked): a model whose
    layers collapsed predicts a handful of codes. None for Music2Vec or without the batch."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from musicssl.config import from_dict
    from musicssl.interop.huggingface import from_hf_state_dict, read_hf_weights
    from musicssl.models.musichubert import MusicHubert
    from musicssl.train.checkpoint import STATE, read_run_config
    from musicssl.train.collapse import BATCH_FILE
    from musicssl.train.tasks import MusicHubertRun

    if json.loads((run_dir / "config.json").read_text()).get("method") != "musichubert" \
            or not (run_dir / BATCH_FILE).exists():
        return None
    model = MusicHubert(from_dict(MusicHubertRun, read_run_config(checkpoint)).model)
    weights, _ = from_hf_state_dict(read_hf_weights(checkpoint), model.config.backbone.variant, str(checkpoint))
    model.backbone.load_state_dict(weights)
    _, unexpected = model.load_state_dict(load_file(str(checkpoint / STATE / "heads.safetensors")), strict=False)
    if unexpected:
        raise ValueError(f"{checkpoint}: head weights this model does not have: {unexpected[:4]}")
    wav = torch.from_numpy(np.load(run_dir / BATCH_FILE, allow_pickle=False))  # (B, n)
    model.eval()
    with torch.no_grad():
        hidden = model.backbone(wav).last_hidden_state  # (B, T, D)
        logits = model.logits(hidden.reshape(-1, hidden.shape[-1]))[0]  # (B*T, k)
    return len(torch.unique(logits.argmax(-1))) / logits.shape[-1]


def run_all(out: Path, kinds: list[str], seeds: list[int], kernels: list[str], steps: list[int], manifest: Path,
            labels: list[Path], recipe: dict[str, list[str]], threads: int, monitor_every: int,
            jobs: int = 1) -> dict[str, dict]:
    """Pre-train every (model, seed, kernel), `jobs` processes at a time with `threads` threads
    each; returns run name -> {kind, seed, kernel, dir, seconds}. On a small CPU, one-thread runs
    side by side finish the table sooner than two-thread runs one after another (each run's
    numbers do not depend on how many run beside it)."""
    from concurrent.futures import ThreadPoolExecutor

    from musicssl.train.checkpoint import INITIAL, checkpoint_dirs

    every = gcd_of(steps)
    inputs = {kind: method_inputs(kind, out, manifest, labels) for kind in kinds}  # once, before the runs start
    plan = []
    for kind in kinds:
        for seed in seeds:
            for kernel in kernels:
                overrides = [f"trainer.max_steps={max(steps)}", f"trainer.checkpoint_every={every}",
                             "trainer.keep_checkpoints=0", f"trainer.seed={seed}",
                             f"trainer.collapse.every={monitor_every}", *recipe[kind]]
                plan.append((kind, seed, kernel, out / "stability" / run_name(kind, seed, kernel), overrides))

    def pretrain_one(entry) -> float:
        kind, seed, kernel, run_dir, overrides = entry
        print(f"pretrain {run_dir.name} ({max(steps)} updates) ...", flush=True)
        return pretrain_in_subprocess(kind, run_dir, inputs[kind], overrides, kernel, threads)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        seconds = list(pool.map(pretrain_one, plan))
    runs = {}
    for (kind, seed, kernel, run_dir, _), spent in zip(plan, seconds):
        found = {int(p.name.split("_")[-1]): p for p in checkpoint_dirs(run_dir)} | {0: run_dir / INITIAL}
        runs[run_dir.name] = {"kind": kind, "seed": seed, "kernel": kernel, "dir": run_dir, "seconds": spent,
                              "checkpoints": {s: found[s] for s in steps if s in found}}
    return runs


def majority_share(labels: Path) -> float | None:
    """The masked accuracy of always predicting the most frequent code of a label set's training
    labels: the floor a collapsed model sits at (1/k, "chance", is far below it on music, whose
    k-means codes are far from uniform)."""
    from collections import Counter

    path = labels / "train.km"
    if not path.exists():
        return None
    counts: Counter = Counter()
    with path.open() as lines:
        for line in lines:
            counts.update(line.split())
    total = sum(counts.values())
    return counts.most_common(1)[0][1] / total if total else None


def gcd_of(steps: list[int]) -> int:
    import math

    positive = [s for s in steps if s > 0]
    return math.gcd(*positive) if positive else 1


def stability_rows(runs: dict[str, dict], steps: list[int], window: int, averages: dict[tuple[str, int], float],
                   prior: float | None = None) -> list[dict]:
    """One row per run: pretext and collapse numbers at each step, the 7-task average at the
    init and the last step, and whether the run learns by issue 31's criterion, made stricter by
    one clause: MusicHuBERT's last masked accuracy must also beat `prior`, the majority code's share
    (a run that doubles from below the prior has not left the collapse); BEST-RQ's, its logged
    targets' top share."""
    rows = []
    positive = [s for s in steps if s > 0]
    for name, run in runs.items():
        records = read_log(run["dir"])
        key = "accuracy/masked" if run["kind"] in RISING_ACCURACY else "loss"
        row = {"run": name, "kind": run["kind"], "seed": run["seed"], "kernel": run["kernel"],
               "seconds": round(run["seconds"], 1),
               "pretext": {s: pretext_at(records, s, window, key) for s in positive},
               "rank": {s: (logged_at(records, s, "collapse/effective_rank") if s else
                            next((r["collapse/init_effective_rank"] for r in records
                                  if "collapse/init_effective_rank" in r), None)) for s in steps},
               "usage": codebook_usage(run["dir"], run["checkpoints"][max(steps)]) if max(steps) in run["checkpoints"] else None,
               "average": {s: averages.get((name, s)) for s in steps}}
        first, last = row["pretext"].get(positive[0]), row["pretext"].get(positive[-1])
        # BEST-RQ's majority share is its own targets' (logged as targets/top_share), not the MFCC labels'
        floor = (prior if run["kind"] == "musichubert"
                 else pretext_at(records, positive[-1], window, "targets/top_share"))
        learns_pretext = (first is not None and last is not None and
                          (last >= 2 * first and (floor is None or last > floor) if run["kind"] in RISING_ACCURACY
                           else last <= first))
        init, final = row["average"][0], row["average"][max(steps)]
        row["learns"] = bool(learns_pretext and (init is None or final is None or final > init))
        row["criterion_complete"] = init is not None and final is not None
        rows.append(row)
    return rows


def stability_markdown(rows: list[dict], steps: list[int], cpu: str, prior: float | None = None) -> str:
    positive = [s for s in steps if s > 0]
    kinds = {row["kind"] for row in rows}  # Music2Vec's pretext number is its regression loss
    pretext = ("loss" if kinds == {"music2vec"} else "masked acc (Music2Vec: loss)" if "music2vec" in kinds
               else "masked acc")
    head = (["run", "kernel", "seed"] + [f"{pretext} @{s}" for s in positive] + [f"eff. rank @{s}" for s in steps]
            + ["codes used"] + [f"avg @{s}" for s in steps] + ["learns", "pretrain s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for row in rows:
        cells = [row["run"], row["kernel"], str(row["seed"])]
        cells += [fmt(row["pretext"][s], ".3f") for s in positive]
        cells += [fmt(row["rank"][s], ".1f") for s in steps]
        cells += [fmt(row["usage"], ".0%")] + [fmt(row["average"][s], ".1f") for s in steps]
        cells += [("yes" if row["learns"] else "NO") + ("" if row["criterion_complete"] else " (pretext only)"),
                  f"{row['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    learned = sum(r["learns"] for r in rows)
    floor = "" if prior is None else f" and above {prior:.3f}, the share of the most frequent code"
    if any(r["kind"] == "bestrq" for r in rows):  # its own targets' most frequent code (targets/top_share)
        floor += "; BEST-RQ: above its targets' top share in the log"
    pretext_rule = f"masked accuracy at the last step >= 2x the first{floor}"
    if "music2vec" in kinds:
        pretext_rule = ("the loss at the last step <= the first" if kinds == {"music2vec"}
                        else pretext_rule + "; Music2Vec: the loss at the last step <= the first")
    lines += ["", f"{learned} of {len(rows)} runs learn ({pretext_rule}; "
              f"7-task average above the init where probed). Effective rank: the middle layer's frames on "
              f"the run's fixed batch (train/collapse.py). {cpu}."]
    return "\n".join(lines) + "\n"
