"""Training-step speed of the full MusicHuBERT / Music2Vec / BEST-RQ / MusicFM / MuQ objective
against transformers.

    .venv/bin/python benchmarks/pretrain_speed.py [--method musichubert|music2vec|bestrq|musicfm|muq]
        [--steps 3] [--dtypes fp32 bf16] [--preset base] [--device cpu]
    .venv/bin/python benchmarks/pretrain_speed.py --method mert --mert-src DIR [--preset 95m|330m|tiny]
    .venv/bin/python benchmarks/pretrain_speed.py --against fairseq [--preset base|tiny] [--dtypes fp32 bf16]

Same run, same weights, batch 2 x 5 s, 2 threads, AdamW step included in both:
- ours: `MusicHubert` (span masking 0.8/10, masked prediction over k = 500 classes with the
  cosine head, feature penalty), i.e. exactly what `musicssl pretrain musichubert` runs;
- baseline: `transformers.HubertModel` forward + backward with a plain loss (mean square of
  the last hidden state), no head and no masking: the cheapest step transformers can take.
For `--method music2vec`: ours = `Music2Vec` (student forward/backward with masking, EMA
teacher forward on the unmasked input, top-8 instance-normed targets, regression head, EMA
step); baseline = `Data2VecAudioModel` forward + backward with the plain loss plus one more
no-grad forward of the same model (the teacher's pass).
For `--method bestrq`: ours = `BestRQ` (log-mel targets, span masking, the head), baseline =
`HubertModel` as for MusicHuBERT. For `--method musicfm | muq`: ours = `MusicFMPretrain` (targets:
the random projection, or MuQ's Mel-RVQ with 8 x 1,024 codes; waveform masking; conv front end;
our conformer; the head); baseline = the model as MusicFM's code composes it: the same mel, conv
front end (bit-equal to MusicFM's module, make parity-bestrq) and head around transformers'
`Wav2Vec2ConformerEncoder` (which MusicFM and MuQ import), trained on the same targets and mask.
There the conformer alone is also timed forward (ours against transformers'), and MFU is not
printed (no FLOP count of the conformer here).
For `--method mert`: ours = `MERT` as `MERTTask` steps it (span mask and in-batch mixture drawn per
update, 8 codebooks of 1,024 codes, the CQT teacher), batch 2 x 5 s at 24 kHz; baseline = MERT's own
fairseq step (`MERTModel` of DIR's `mert_fairseq` + the hubert criterion, its own mask and mixture
draws, AdamW) on the same weights and batch, run in `.venv-fairseq` (benchmarks/mert_side.py, the
venv of `make parity-mert`). Two processes cannot interleave: ours runs first, then MERT's.
`--against fairseq` (MusicHuBERT): the baseline is fairseq-fixed's HubertModel + the hubert criterion
with its own mask draws and AdamW (benchmarks/fairseq_side.py's hubert_speed job in `.venv-fairseq`,
the venv of `make parity-fairseq`), on the same initial weights, batch and 100 Hz labels; ours first.
Printed: seconds per step (median of interleaved rounds), steps/s, the ratio baseline/ours
(> 1 = ours faster; targets >= 1.0 in fp32, >= 1.5 for ours in bf16 against transformers in
fp32) and MFU = model FLOPs per second / measured matmul peak of the same dtype.
`--compile inductor` runs our step through torch.compile (as `trainer.compile` does); its
tracing and kernel builds fall in the warm-up round, not in the timed ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import backbone_speed  # noqa: E402
from backbone_speed import autocast, conv_frames, matmul_gflops, model_flops  # noqa: E402

from musicssl.interop.huggingface import export_pretrained  # noqa: E402
from musicssl.models.music2vec import Music2Vec, music2vec_config  # noqa: E402
from musicssl.models.musichubert import MusicHubert, musichubert_config  # noqa: E402


def build(method: str, k: int, preset: str = "base"):
    torch.manual_seed(0)
    if method in ("musicfm", "muq"):
        import musicfm_reference

        return musicfm_reference.build(method, preset)
    if method == "bestrq":
        from musicssl.models.bestrq import BestRQ, bestrq_config

        config = bestrq_config(preset, mel_mean=-20.0, mel_std=20.0)
        ours = BestRQ(dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, layerdrop=0.0)))
    elif method == "musichubert":
        config = musichubert_config(preset, num_classes=k, label_rate_hz=100.0)
        config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, layerdrop=0.0))
        ours = MusicHubert(config)
    else:
        config = music2vec_config(preset)
        ours = Music2Vec(dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, layerdrop=0.0)))
    from transformers import AutoModel


    with tempfile.TemporaryDirectory() as directory:
        export_pretrained(ours.backbone, directory)
        reference = AutoModel.from_pretrained(directory, attn_implementation="sdpa", layerdrop=0.0,
                                              mask_time_prob=0.0)
    return ours.train(), reference.train()


def teacher_flops(config, batch: int, frames: int) -> float:
    """Forward FLOPs of pos conv + Transformer blocks (as `model_flops` counts them)."""
    d, f = config.dim, config.ffn_dim
    pos_conv = config.pos_conv_depth * 2 * d * (d // config.pos_conv_groups) * config.pos_conv_kernel * frames
    block = 4 * 2 * d * d * frames + 2 * 2 * frames * frames * d + 2 * 2 * d * f * frames
    return batch * (pos_conv + config.num_layers * block)


def ours_step(model, optimizer, wav, labels, dtype, update, forward=None):
    """`forward`: the compiled model where --compile is given (the EMA step stays on `model`)."""
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    with autocast(dtype):
        result = forward(wav, None, generator=update) if labels is None else forward(wav, None, labels, generator=update)
    (result["loss"] / result["sample_size"]).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if isinstance(model, Music2Vec):
        model.ema_step(update)


def reference_step(model, optimizer, wav, dtype, teacher_pass: bool, update: int = 0):
    if hasattr(model, "training_loss"):  # the MusicFM reference (musicfm_reference.py): its own objective
        with autocast(dtype):
            loss = model.training_loss(wav, update)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return
    with autocast(dtype):
        hidden = model(wav).last_hidden_state
        if teacher_pass:
            with torch.no_grad():
                model(wav, output_hidden_states=True)
    hidden.float().pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed_rounds(step_fns: dict, steps: int, device: torch.device, warm_up: int = 1) -> dict:
    """Seconds of every step function in `steps` interleaved rounds after `warm_up` untimed ones."""
    times = {key: [] for key in step_fns}
    for round_index in range(steps + warm_up):
        for key, step in step_fns.items():
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index >= warm_up:
                times[key].append(time.perf_counter() - start)
    return times


def measure(method: str, dtypes: list[str], steps: int, device: torch.device, k: int = 500, preset: str = "base",
            batch: int = 2, samples: int | None = None, compile_backend: str = "") -> dict:
    """Median seconds per step of ours and transformers per dtype (interleaved rounds after the
    warm-up, which also pays torch.compile's tracing), the matmul peaks and the step's FLOPs."""
    backbone_speed.DEVICE = device  # autocast, matmul peak and timing follow it
    ours, reference = build(method, k, preset)
    ours, reference = ours.to(device), reference.to(device)
    forward = torch.compile(ours, backend=compile_backend) if compile_backend else ours
    trained = [p for p in ours.parameters() if p.requires_grad]
    optimizers = {"ours": torch.optim.AdamW(trained, lr=1e-5),
                  "hf": torch.optim.AdamW(reference.parameters(), lr=1e-5)}
    mel_model = method in ("musicfm", "muq")
    samples = samples or 5 * ours.config.backbone.sample_rate  # 5 s at the model's rate
    wav = torch.randn(batch, samples, device=device)
    frames = samples // ours.config.backbone.hop if mel_model else conv_frames(samples, ours.config.backbone.conv_layers)[-1]
    # labels at 100 Hz: two per 50 Hz frame (498 for 5 s)
    labels = torch.randint(0, k, (batch, 2 * frames), device=device) if method == "musichubert" else None
    updates = itertools.count()  # a fresh mask every step, as in training
    step_fns = {("ours", d): (lambda d=d: ours_step(ours, optimizers["ours"], wav, labels, d, next(updates), forward))
                for d in dtypes}
    teacher = method == "music2vec"
    step_fns |= {("hf", d): (lambda d=d: reference_step(reference, optimizers["hf"], wav, d, teacher, next(updates)))
                 for d in dtypes}
    if mel_model:
        import musicfm_reference

        step_fns |= musicfm_reference.conformer_forwards(ours, reference, batch, frames, dtypes)
    # dynamo specialises on the first update number and recompiles for the second (then treats it
    # as dynamic): two warm-up rounds when compiled, so no timed round pays a compile
    times = timed_rounds(step_fns, steps, device, warm_up=2 if compile_backend else 1)
    peaks = {d: matmul_gflops(torch.float32 if d == "fp32" else torch.bfloat16) for d in dtypes}
    flops = None if mel_model else model_flops(ours.config.backbone, batch, samples, train=True)
    if teacher:  # the teacher's forward: the Transformer only (the CNN and projection are the student's)
        flops += teacher_flops(ours.config.backbone, batch, frames)
    median = {key: statistics.median(values) for key, values in times.items()}
    return {"median": median, "peaks": peaks, "flops": flops, "batch": batch, "samples": samples,
            "sample_rate": ours.config.backbone.sample_rate}


def measure_mert(dtypes: list[str], steps: int, device: torch.device, preset: str, mert_src: Path,
                 threads: int, batch: int = 2) -> dict:
    """Median seconds per step of our MERT per dtype, and of MERT's fairseq step in fp32 (its
    process: benchmarks/mert_side.py's speed job), on the same initial weights and batch."""
    import numpy as np
    from mert_parity import MERT_MODEL
    from musicssl.models.mert import MERT
    from musicssl.train.mert import MERT_PRESETS, SAMPLE_RATE

    if not (mert_src / MERT_MODEL).is_file():
        sys.exit(f"{mert_src / MERT_MODEL} not found: --mert-src must name a checkout of github.com/yizhilll/MERT")
    torch.manual_seed(0)
    config = MERT_PRESETS["95m" if preset == "base" else preset]((1024,) * 8).model
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, layerdrop=0.0))
    ours = MERT(config).to(device).train()
    samples = 5 * SAMPLE_RATE
    wav = 0.1 * torch.randn(batch, samples, device=device)
    frames = conv_frames(samples, config.backbone.conv_layers)[-1]
    labels = torch.randint(0, 1024, (batch, frames, 8), device=device)  # 8 codebooks at 75 Hz
    rng = np.random.default_rng(0)
    mixture = lambda: ours.mixture_plan(batch, samples, rng)  # noqa: E731 (a fresh draw per step)
    job = {"kind": "speed", "mert_src": str(mert_src.resolve())}
    return against_fairseq(ours, config, wav, labels, dtypes, steps, device, threads, "mert", job, mixture,
                           side="mert_side.py")


def measure_fairseq(dtypes: list[str], steps: int, device: torch.device, k: int, preset: str, threads: int,
                    batch: int = 2) -> dict:
    """Median seconds per step of our MusicHuBERT per dtype, and of fairseq's HubertModel + hubert
    criterion in fp32 (its process: benchmarks/fairseq_side.py's hubert_speed job, its own mask
    draws), on the same initial weights and batch: issue 27's >= 1.5x."""
    torch.manual_seed(0)
    config = musichubert_config(preset, num_classes=k, label_rate_hz=100.0)
    config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, layerdrop=0.0))
    ours = MusicHubert(config).to(device).train()
    samples = 5 * config.backbone.sample_rate
    wav = torch.randn(batch, samples, device=device)
    frames = conv_frames(samples, config.backbone.conv_layers)[-1]
    labels = torch.randint(0, k, (batch, 2 * frames, 1), device=device)  # one codebook at 100 Hz
    return against_fairseq(ours, config, wav, labels, dtypes, steps, device, threads, "fairseq",
                           {"kind": "hubert_speed"})


def against_fairseq(ours, config, wav, labels, dtypes: list[str], steps: int, device: torch.device, threads: int,
                    name: str, job: dict, mixture=None, side: str = "fairseq_side.py") -> dict:
    """Our model's step per dtype, then `job` run by benchmarks/`side` in .venv-fairseq on the
    initial weights and the same batch: two processes cannot interleave, so ours runs first."""
    from fairseq_parity import run_fairseq, to_fairseq

    initial = {f"weight.{k}": v.detach().cpu().clone() for k, v in ours.state_dict().items()}
    optimizer, updates = torch.optim.AdamW(ours.parameters(), lr=1e-5), itertools.count()
    batch, samples = wav.shape

    def step(dtype: str) -> None:
        update = next(updates)
        extra = {} if mixture is None else {"mixture": mixture()}
        with autocast(dtype):
            result = ours(wav, None, labels, generator=update, **extra)
        (result["loss"] / result["sample_size"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = timed_rounds({("ours", d): (lambda d=d: step(d)) for d in dtypes}, steps, device)
    inputs = to_fairseq({"wav": wav.cpu(), "lengths": torch.full((batch,), samples), "labels": labels.cpu(), **initial},
                        "hubert", [k + config.extra_classes for k in config.codebooks], config.extra_classes)
    fields = dataclasses.asdict(config)
    backbone = fields.pop("backbone")
    with tempfile.TemporaryDirectory(prefix="fairseq_speed_") as tmp:
        from safetensors.torch import load_file, save_file

        save_file({k: v.contiguous() for k, v in inputs.items()}, Path(tmp) / "speed.in")
        run_fairseq(Path(tmp), [{**job, "name": "speed", "input": "speed.in", "output": "speed.out",
                                 "threads": threads, "device": str(device), "warm_up": 1, "steps": steps,
                                 "model": fields, "backbone": backbone}], side=side)
        times[(name, "fp32")] = load_file(Path(tmp) / "speed.out")["seconds"].tolist()
    median = {key: statistics.median(values) for key, values in times.items()}
    peaks = {d: matmul_gflops(torch.float32 if d == "fp32" else torch.bfloat16) for d in {*dtypes, "fp32"}}
    return {"median": median, "peaks": peaks, "flops": model_flops(config.backbone, batch, samples, train=True),
            "batch": batch, "samples": samples, "sample_rate": config.backbone.sample_rate}


def print_result(result: dict, method: str, threads: int, k: int, device: torch.device) -> None:
    median, peaks, flops = result["median"], result["peaks"], result["flops"]
    print(f"{method}: torch {torch.__version__}, device {device}, {threads} threads, "
          f"batch {result['batch']} x {result['samples'] / result['sample_rate']:g} s, k = {k}, "
          f"matmul peak {', '.join(f'{d} {p:.0f} GFLOP/s' for d, p in peaks.items())}")
    print(f"{'model':6s} {'dtype':5s} {'s/step':>8s} {'steps/s':>8s} {'MFU':>6s}")
    for (name, dtype), seconds in median.items():
        mfu = f"{flops / seconds / 1e9 / peaks[dtype]:6.1%}" if flops else f"{'-':>6s}"
        print(f"{name:6s} {dtype:5s} {seconds:8.3f} {1 / seconds:8.3f} {mfu}")
    for dtype in peaks:
        if ("conformer ours", dtype) in median:
            ratio = median[("conformer hf", dtype)] / median[("conformer ours", dtype)]
            print(f"conformer forward, ours vs transformers {dtype}: {ratio:.2f}x (target >= 1.0)")
    for name, what, issue in (("mert", "MERT's fairseq step", 29), ("fairseq", "fairseq's HuBERT step", 27)):
        for dtype in ("fp32", "bf16"):
            if (name, "fp32") in median and ("ours", dtype) in median:
                ratio = median[(name, "fp32")] / median[("ours", dtype)]
                print(f"ours {dtype} vs {what} fp32: {ratio:.2f}x (issue {issue}'s target >= 1.5 in fp32; the "
                      f"two processes run one after the other: on a shared CPU indicative only)")
    if ("hf", "fp32") in median:
        for dtype, target in (("fp32", 1.0), ("bf16", 1.5)):
            if ("ours", dtype) in median:
                ratio = median[("hf", "fp32")] / median[("ours", dtype)]
                print(f"ours {dtype} vs transformers fp32: {ratio:.2f}x (target >= {target}) "
                      f"{'PASS' if ratio >= target else 'MISS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--method", choices=("musichubert", "music2vec", "bestrq", "musicfm", "muq", "mert"),
                        default="musichubert")
    parser.add_argument("--mert-src", type=Path, help="--method mert: a checkout of github.com/yizhilll/MERT")
    parser.add_argument("--against", choices=("transformers", "fairseq"), default="transformers",
                        help="--method musichubert: the baseline (fairseq: HubertModel + its criterion in .venv-fairseq)")
    parser.add_argument("--preset", default="base", help="the models' preset (musicfm / muq: also large)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]: both models, batches and optimizers there")
    parser.add_argument("--compile", default="", metavar="BACKEND",
                        help="torch.compile our model with this backend (inductor on a GPU, eager to trace only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.method == "mert":
        if args.mert_src is None:
            parser.error("--method mert needs --mert-src DIR, a checkout of github.com/yizhilll/MERT")
        result = measure_mert(args.dtypes, args.steps, device, args.preset, args.mert_src, args.threads)
        print_result(result, args.method, args.threads, 1024, device)
        return
    if args.against == "fairseq":
        if args.method != "musichubert":
            parser.error("--against fairseq times MusicHuBERT against fairseq's HuBERT (--method musichubert)")
        result = measure_fairseq(args.dtypes, args.steps, device, args.k, args.preset, args.threads)
        print_result(result, args.method, args.threads, args.k, device)
        return
    result = measure(args.method, args.dtypes, args.steps, device, k=args.k, preset=args.preset,
                     compile_backend=args.compile)
    print_result(result, args.method, args.threads, args.k, device)


if __name__ == "__main__":
    main()
