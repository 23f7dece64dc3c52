"""Evaluation speed: extraction throughput against transformers, and probe time per task.

    .venv/bin/python benchmarks/eval_speed.py [--preset hubert_base] [--files 6] [--seconds 30]
        [--window 30] [--device cpu] [--dtypes fp32,bf16] [--rows 2000] [--epochs 10] [--skip-probe]

1. Extraction: the same generated files (`--window`-s windows, every hidden state,
   mean-pooled, as the clip tasks store them) through our `FeatureCache` + `EncoderSource`
   (windows of equal length batched, decoding in a background thread), and through
   transformers' HubertModel / Data2VecAudioModel holding the same weights (one forward per
   window, `output_hidden_states=True`, the same pooling, decoding in the same thread), on
   `--device`, in the same run, alternating. Printed as audio seconds per second and as a
   ratio (ours / transformers; > 1 = faster); the last line of the script repeats it. With
   bf16 (`--dtypes`; by default where the CPU has avx512_bf16 / AMX, or on CUDA) ours also runs
   under bf16 autocast, against the same transformers fp32 run: `extraction bf16: ...`. Then
   the compute ceiling: the forward's FLOPs per window at the fp32 (and bf16) GEMM peak measured in the
   same run, as audio-s/s and as a ratio to transformers (no fp32 extraction can beat it;
   AMD EPYC, 2 threads: 500 GFLOP a 30-s window, 11.1 audio-s/s = 1.43x transformers).
2. Probe: for every registered task, one probe run (one layer, one learning rate, a fixed
   number of epochs, no early stop) on cached-feature-shaped random rows with the task's
   output count, `--rows` training windows and a quarter of that for valid and test; printed
   as seconds per run and per epoch, and the full grid (13 layers + weighted sum, 6 learning
   rates) extrapolated from it at this size. Beats: `--rows` frames are 64 x 10 s crops' worth.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def make_files(directory: Path, count: int, seconds: float) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        t = np.arange(int(seconds * 16000)) / 16000
        wav = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.05 * rng.standard_normal(t.size)
        path = directory / f"clip{index}.wav"
        sf.write(path, wav.astype(np.float32), 16000)
        paths.append(path)
    return paths


def ours(model_dir: Path, paths: list[Path], cache: Path, window: float, device: str, dtype: str = "fp32") -> float:
    from musicssl.evaluate.features import FeatureCache
    from musicssl.evaluate.sources import open_source
    from musicssl.evaluate.tasks.base import Item, Protocol

    protocol = Protocol(name="bench", title="B", kind="multiclass", outputs=("a",), metrics=("accuracy",),
                        window_seconds=window)
    source = open_source(str(model_dir), device=device, dtype=dtype)
    items = [Item(key=p.name, path=p, target=0) for p in paths]
    started = time.perf_counter()
    FeatureCache(cache, source, "bench", protocol).extract(items, progress=False)
    _sync(device)
    return time.perf_counter() - started


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def transformers_reference(model_dir: Path, paths: list[Path], window: float, device: str) -> float:
    import transformers

    from musicssl import audio

    model = transformers.AutoModel.from_pretrained(model_dir).eval().to(device)
    normalize = getattr(model.config, "feat_extract_norm", "group") == "layer"
    size = int(window * 16000)
    started = time.perf_counter()
    with torch.no_grad():
        for path in paths:
            wav = torch.from_numpy(audio.load_audio(path, 16000)).to(device)
            for start in range(0, wav.numel(), size):
                piece = wav[start:start + size]
                if normalize:  # Wav2Vec2FeatureExtractor(do_normalize=True), as data2vec models ship
                    piece = (piece - piece.mean()) / torch.sqrt(piece.var(unbiased=False) + 1e-7)
                states = model(piece[None], output_hidden_states=True).hidden_states
                np.stack([s[0].mean(0).cpu().numpy() for s in states]).astype(np.float16)
    _sync(device)
    return time.perf_counter() - started


def extraction(preset: str, count: int, seconds: float, window: float, device: str, rounds: int,
               dtypes: tuple[str, ...] = ("fp32",)) -> dict:
    """Audio-s/s of ours (per dtype) and of transformers fp32 (best of `rounds`), the ratios and the
    compute ceiling."""
    from musicssl.interop.huggingface import export_pretrained
    from musicssl.models.backbone import Backbone
    from musicssl.models.backbone_config import backbone_preset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model_dir = export_pretrained(Backbone(backbone_preset(preset)).eval(), tmp / "model")
        paths = make_files(tmp, count, seconds)
        audio_seconds = count * seconds
        names = {dtype: "ours" if dtype == "fp32" else f"ours {dtype}" for dtype in dtypes}
        times = {**{name: [] for name in names.values()}, "transformers": []}
        for round_ in range(rounds):
            for dtype, name in names.items():
                times[name].append(ours(model_dir, paths, tmp / f"cache{round_}{dtype}", window, device, dtype))
            times["transformers"].append(transformers_reference(model_dir, paths, window, device))
        best = {name: min(values) for name, values in times.items()}
        print(f"extraction, {preset}, {count} x {seconds:g} s, all layers, {window:g}-s windows, {device}, "
              f"{torch.get_num_threads()} threads, {rounds} rounds (best):")
        for name, value in best.items():
            print(f"  {name:13s} {value:7.2f} s  {audio_seconds / value:7.1f} audio s/s")
        result = {"transformers": audio_seconds / best["transformers"]}
        for name in names.values():
            result[name] = audio_seconds / best[name]
            print(f"  ratio {name}/transformers fp32 (throughput): {best['transformers'] / best[name]:.2f}x")
        if "ours" in result:
            result["ratio"] = result["ours"] / result["transformers"]
        result["ceiling"] = ceiling(preset, window, device, result["transformers"])
        if "ours bf16" in result:
            result["ceiling bf16"] = ceiling(preset, window, device, result["transformers"], torch.bfloat16)
        return result


def summary(result: dict) -> str:
    """The last lines: fp32 against transformers (the form every earlier run printed), then bf16."""
    lines = []
    if "ours" in result:
        lines.append(f"extraction: ours {result['ours']:.1f} audio-s/s, "
                     f"transformers {result['transformers']:.1f} audio-s/s, {result['ratio']:.2f} x")
    if "ours bf16" in result:
        lines.append(f"extraction bf16: ours {result['ours bf16']:.1f} audio-s/s, transformers fp32 "
                     f"{result['transformers']:.1f} audio-s/s, {result['ours bf16'] / result['transformers']:.2f} x")
    return "\n".join(lines)


def host() -> str:
    """The CPU's model name and the ISA this run uses: ATen's kernel choice and native bf16."""
    from backbone_speed import cpu_name

    from musicssl.extract import NATIVE_BF16_FLAGS, cpu_flags

    bf16 = sorted(cpu_flags() & set(NATIVE_BF16_FLAGS)) or ["no native bf16"]
    return f"{cpu_name()}; torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, {', '.join(bf16)}"


def ceiling(preset: str, window: float, device: str, reference_rate: float,
            dtype: torch.dtype = torch.float32) -> float:
    """The compute ceiling of extraction on this device: the forward's floating-point operations
    (convolutions, matmuls, attention; torch's FlopCounterMode, one window, every layer) at the
    GEMM peak in `dtype` measured now. No implementation of this model computing in that dtype
    extracts faster than that (the elementwise work, decoding and pooling only add to it); for
    bf16 it bounds what autocast can gain over fp32. Returns audio-s/s."""
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode

    from musicssl.models.backbone import Backbone
    from musicssl.models.backbone_config import backbone_preset
    from probe_grid_speed import matmul_peak  # benchmarks/ is on sys.path when a script runs from it

    model = Backbone(backbone_preset(preset)).eval()
    # torch counts SDPA's FLOPs for the CUDA kernels only; the CPU kernel does the same products
    def attention(query, key, value, *args, out_shape=None, **kwargs) -> int:  # called with shapes
        return flop_counter.sdpa_flop_count(query, key, value)

    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention}
    counter = FlopCounterMode(display=False, custom_mapping=cpu_attention)
    # with gradients enabled the CNN runs as F.conv1d, which the counter knows (its inference
    # path's in-place GEMMs it does not count); nothing is backpropagated
    with counter:
        model(torch.zeros(1, int(window * 16000)))  # every hidden state, as extraction keeps them
    flops = counter.get_total_flops()
    peak = matmul_peak(device, torch.get_num_threads(), dtype=dtype)
    rate = window / (flops / peak)
    name = "fp32" if dtype == torch.float32 else "bf16"
    print(f"  compute ceiling: {flops / 1e9:.0f} GFLOP a {window:g}-s window at the {name} GEMM peak "
          f"{peak / 1e9:.1f} GFLOP/s = {rate:.1f} audio s/s = {rate / reference_rate:.2f}x transformers")
    return rate


def probe_times(rows: int, epochs: int) -> None:
    from musicssl.evaluate.features import CachedFeatures
    from musicssl.evaluate.probe import train_run
    from musicssl.evaluate.probe_protocol import ProbeConfig, split_data, standardiser
    from musicssl.evaluate.tasks import TASK_NAMES, get_task
    from musicssl.evaluate.tasks.base import Item

    rng = np.random.default_rng(0)
    config = ProbeConfig(max_epochs=epochs, early_stop_patience=epochs, beat_decoder="dbn")
    print(f"\nprobe, one run of {epochs} epochs, {rows} train rows x 768 (valid/test {rows // 4}):")
    print(f"  {'task':20s} {'s/run':>7s} {'s/epoch':>8s} {'full grid (84 runs) at this size':>34s}")
    for name in TASK_NAMES:
        task = get_task(name)
        protocol = task.protocol
        outputs = max(protocol.num_outputs, 2)

        def cached(n: int) -> CachedFeatures:
            if protocol.kind == "beats":
                per_item = 1500
                items = [Item(key=str(i), path=Path("x"), target=np.arange(0.5, 29.5, 0.5)) for i in range(max(1, n // per_item))]
                spans = [(i * per_item, per_item) for i in range(len(items))]
                return CachedFeatures(rows=rng.standard_normal((len(items) * per_item, 768)).astype(np.float32),
                                      spans=spans, items=items)
            if protocol.kind == "multiclass":
                targets = rng.integers(0, outputs, n)
                items = [Item(key=str(i), path=Path("x"), target=int(targets[i])) for i in range(n)]
            else:
                values = (rng.random((n, outputs)) > 0.9).astype(np.float32)
                items = [Item(key=str(i), path=Path("x"), target=values[i]) for i in range(n)]
            return CachedFeatures(rows=rng.standard_normal((n, 768)).astype(np.float32),
                                  spans=[(i, 1) for i in range(n)], items=items)

        if protocol.kind == "multilabel" and not protocol.outputs:
            task.protocol = protocol.replace(outputs=tuple(f"tag{i}" for i in range(50)))
            protocol, outputs = task.protocol, 50
        data = [cached(rows), cached(rows // 4), cached(rows // 4)]
        mean, std = standardiser(data[0].rows)
        splits = [split_data(task, d, 50.0, 1, mean, std) for d in data]
        started = time.perf_counter()
        train_run(task, *splits, layer=0, learning_rate=1e-3, seed=0, config=config, fps=50.0)
        elapsed = time.perf_counter() - started
        print(f"  {name:20s} {elapsed:7.2f} {elapsed / epochs:8.3f} {84 * elapsed / 60:30.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hubert_base")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=30.0, help="window length in seconds (30: MTG-Jamendo)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both paths run there)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("--dtypes", default=None, help="our precisions, e.g. fp32,bf16 (default: fp32, and bf16 "
                        "where the CPU computes it natively or on CUDA)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from musicssl.extract import NATIVE_BF16_FLAGS, cpu_flags

    native = args.device.startswith("cuda") or bool(cpu_flags() & set(NATIVE_BF16_FLAGS))
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else (("fp32", "bf16") if native else ("fp32",))
    print(f"host: {host()}")
    result = None
    if not args.skip_extraction:
        result = extraction(args.preset, args.files, args.seconds, args.window, args.device, args.rounds, dtypes)
    if not args.skip_probe:
        probe_times(args.rows, args.epochs)
    if result:
        print(summary(result))


if __name__ == "__main__":
    main()
