"""One short run of every device path: the CUDA tests and each benchmark at a bounded size.

    .venv/bin/python benchmarks/device_check.py --device cuda             # ~8 min on one H100/H200
    .venv/bin/python benchmarks/device_check.py --device cpu --quick      # tiny sizes, CI (~2-5 min, 2 cores)

GPU sessions are rare and short, so one run measures everything once and a broken path costs only
its own time: every check runs in its own process under its own time budget (and the run under
an overall deadline); a check that fails or runs out of time is recorded with its one-line error
and the next one starts. Checks, in order:

- tests:        the CUDA equivalence tests (pytest -k cuda; on a GPU a skip counts as a failure);
- backbone:     our backbone's fp32 and bf16 train step against transformers' (backbone_speed.py), MFU;
- musichubert / music2vec: the full pre-training step through torch.compile (inductor on a GPU,
                the eager backend on the CPU) against transformers' plain step (pretrain_speed.py);
- loader:       prepared-shard feed rate of one process against what a MusicHuBERT bf16 step consumes;
- probe_grid:   the batched probe grid against runs one by one, MTT-sized, MFU (probe_grid_speed.py);
- extraction:   extraction throughput against transformers, and the compute ceiling (eval_speed.py);
- extract_mem:  extraction's working memory, long track against short (extract_memory.py).

Written to --out (default runs/device_check/): device_check.md (the table, ready for
docs/performance.md) and device_check.json (machine, date, every figure), plus logs/<check>.log.
Exit status 0 only if every check ran to the end ("ok").
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))  # the benchmark scripts import each other by name
REPOSITORY = BENCHMARKS.parent


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a check runs at: full (a GPU, bounded to minutes) or quick (tiny, CI on 2 CPU cores)."""
    device: str
    quick: bool

    @property
    def preset(self) -> str:  # the backbone preset without its variant
        return "tiny" if self.quick else "base"


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    what: str
    budget_s: float  # full size; quick mode has its own (QUICK_BUDGET_S)
    run: Callable[[Sizes], dict]  # -> {"figure": str, "ratio": str, "figures": {...}}


OVERALL_DEADLINE_S = 480.0  # 8 min: a ~10-min GPU session keeps room for start-up and copying back
QUICK_BUDGET_S = 90.0  # tiny sizes take ~10-50 s on 2 quiet cores; CI machines are not quiet


def threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------
# the checks (each runs in its own process; imports stay inside so a broken one breaks only itself)


def check_tests(sizes: Sizes) -> dict:
    """pytest -k cuda over the files that hold the CUDA tests; counts from its JUnit XML."""
    import xml.etree.ElementTree as ElementTree

    files = ["tests/evaluate/test_probe_grid.py", "tests/train/test_gpu_switches.py"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                   f"--junitxml={report}", *files]
        result = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
        print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:], flush=True)
        if not report.exists():
            raise RuntimeError(f"pytest wrote no report (exit {result.returncode}): {result.stderr.strip()[-200:]}")
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if counts["failures"] or counts["errors"]:
        raise RuntimeError(f"{counts['failures']} failed, {counts['errors']} errors of {counts['tests']} CUDA tests")
    if sizes.device.startswith("cuda") and counts["skipped"]:
        raise RuntimeError(f"{counts['skipped']} CUDA tests skipped on {sizes.device}")
    return {"figure": f"{counts['passed']} passed, {counts['skipped']} skipped", "ratio": "", "figures": counts}


def check_backbone(sizes: Sizes) -> dict:
    import backbone_speed
    import torch

    backbone_speed.DEVICE = torch.device(sizes.device)
    args = argparse.Namespace(batch=1 if sizes.quick else 2, seconds=1.0 if sizes.quick else 5.0,
                              steps=1 if sizes.quick else 3, dtypes=["fp32", "bf16"], no_memory=True)
    peaks = {name: [backbone_speed.matmul_gflops(backbone_speed.DTYPES[name])] for name in args.dtypes}
    rows = backbone_speed.run_preset(f"hubert_{sizes.preset}", args, peaks)
    backbone_speed.add_mfu(rows, {name: max(samples) for name, samples in peaks.items()})
    train = {row["dtype"]: row for row in rows if row["mode"] == "train"}
    return {"figure": f"train fp32 {train['fp32']['ours_s']:.3f} s MFU {train['fp32']['ours_mfu']:.0%}, "
                      f"bf16 {train['bf16']['ours_s']:.3f} s MFU {train['bf16']['ours_mfu']:.0%}",
            "ratio": f"{train['fp32']['hf_fp32_over_ours']:.2f}x fp32, {train['bf16']['hf_fp32_over_ours']:.2f}x bf16 "
                     "vs transformers fp32",
            "figures": {"rows": [{k: v for k, v in row.items() if not k.endswith("_times")} for row in rows],
                        "matmul_peak_gflops": {name: max(samples) for name, samples in peaks.items()}}}


def pretrain_check(method: str) -> Callable[[Sizes], dict]:
    def run(sizes: Sizes) -> dict:
        import pretrain_speed
        import torch

        device = torch.device(sizes.device)
        # inductor needs a C compiler and minutes on a CPU; the eager backend still traces the step
        backend = "eager" if device.type == "cpu" else "inductor"
        # quick: bf16 only (each dtype is traced again, the costliest part on a CPU)
        dtypes = ["bf16"] if sizes.quick else ["fp32", "bf16"]
        result = pretrain_speed.measure(method, dtypes, 1 if sizes.quick else 3, device,
                                        k=50 if sizes.quick else 500, preset=sizes.preset,
                                        batch=1 if sizes.quick else 2, samples=16_000 if sizes.quick else 80_000,
                                        compile_backend=backend)
        pretrain_speed.print_result(result, method, threads(), 50 if sizes.quick else 500, device)
        median, peaks, flops = result["median"], result["peaks"], result["flops"]
        mfu = {dtype: flops / median["ours", dtype] / 1e9 / peaks[dtype] for dtype in dtypes}
        audio = result["batch"] * result["samples"] / 16_000
        baseline = "fp32" if ("hf", "fp32") in median else "bf16"
        return {"figure": f"compile={backend}: " + ", ".join(
                    f"{d} {median['ours', d]:.3f} s MFU {mfu[d]:.0%}" for d in dtypes),
                "ratio": ", ".join(f"{median['hf', baseline] / median['ours', d]:.2f}x {d}" for d in dtypes)
                         + f" vs transformers {baseline}",
                "figures": {"seconds": {f"{name} {dtype}": s for (name, dtype), s in median.items()},
                            "mfu": mfu, "matmul_peak_gflops": peaks, "gflop": flops / 1e9, "compile": backend,
                            "audio_seconds_per_step": audio,
                            "consumed_audio_s_per_s": {d: audio / median["ours", d] for d in dtypes}}}
    return run


def check_loader(sizes: Sizes) -> dict:
    import loader_speed
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as corpus:
        args = loader_speed.parse_args([
            "--device", sizes.device, "--corpus", corpus, "--workers", "1",
            *(["--songs", "2", "--song-seconds", "8", "--today-crops", "2", "--crops", "4", "--prepared-crops", "40"]
              if sizes.quick else
              ["--songs", "4", "--song-seconds", "60", "--today-crops", "4", "--crops", "40", "--prepared-crops", "2000"])])
        rates = loader_speed.measure_rates(args)
    figures = {"today": rates["flac", "today"], "crop_only": rates["flac", "crop-only"], "prepared": rates["prepared"]}
    # the ratio to the step's consumption is filled in by link_loader_to_step once both are measured
    return {"figure": f"prepared {figures['prepared']:.0f} audio-s/s per process, crop-only {figures['crop_only']:.1f}",
            "ratio": "", "figures": figures}


def check_probe_grid(sizes: Sizes) -> dict:
    import probe_grid_speed

    measured = probe_grid_speed.run_sizes(
        sizes.device, threads(), small_items=30 if sizes.quick else 300, small_epochs=1 if sizes.quick else 10,
        mtt_fraction=0.005 if sizes.quick else 0.25, mtt_epochs=1, mtt_sequential=not sizes.quick)
    seconds = measured["seconds"]
    small = seconds["small", "sequential"] / seconds["small", "batched"]
    mtt = seconds["MTT", "sequential"] / seconds["MTT", "batched"] if ("MTT", "sequential") in seconds else None
    return {"figure": f"MTT rows {'/'.join(map(str, measured['rows']))}: batched {seconds['MTT', 'batched']:.1f} s, "
                      f"MFU {measured['mfu']:.0%}",
            "ratio": (f"{mtt:.1f}x MTT, " if mtt else "") + f"{small:.1f}x small vs runs one by one",
            "figures": {"seconds": {f"{size} {path}": s for (size, path), s in seconds.items()},
                        "speed_up": {"small": small, "MTT": mtt}, "mfu": measured["mfu"],
                        "matmul_peak_gflops": measured["peak"] / 1e9, "mtt_rows": measured["rows"]}}


def check_extraction(sizes: Sizes) -> dict:
    import eval_speed

    result = (eval_speed.extraction("hubert_tiny", 1, 4.0, 2.0, sizes.device, 1) if sizes.quick
              else eval_speed.extraction("hubert_base", 4, 30.0, 30.0, sizes.device, 2))
    print(eval_speed.summary(result), flush=True)
    return {"figure": f"ours {result['ours']:.1f} audio-s/s (ceiling {result['ceiling']:.0f})",
            "ratio": f"{result['ratio']:.2f}x vs transformers", "figures": result}


def check_extract_memory(sizes: Sizes) -> dict:
    import extract_memory

    if sizes.quick:
        rows = extract_memory.measure_lengths("hubert_tiny", 5.0, sizes.device, lengths=(0.25, 1.0))
    else:
        rows = extract_memory.measure_lengths("hubert_base", 30.0, sizes.device, lengths=(1.0, 30.0))
    (short, short_row), (long, long_row) = rows.items()
    ratio = long_row["working_mb"] / max(short_row["working_mb"], 1e-9)
    return {"figure": f"working {short_row['working_mb']:.0f} MB ({short:g} min), {long_row['working_mb']:.0f} MB ({long:g} min)",
            "ratio": f"{ratio:.2f}x long vs short (flat = 1)",
            "figures": {f"{minutes:g} min": row for minutes, row in rows.items()}}


CHECKS = (
    Check("tests", "CUDA equivalence tests (pytest -k cuda)", 45, check_tests),
    Check("backbone", "backbone train step fp32/bf16 (backbone_speed)", 60, check_backbone),
    Check("musichubert", "MusicHuBERT step, torch.compile (pretrain_speed)", 100, pretrain_check("musichubert")),
    Check("music2vec", "Music2Vec step, torch.compile (pretrain_speed)", 100, pretrain_check("music2vec")),
    Check("loader", "prepared-shard feed vs step consumption (loader_speed)", 30, check_loader),
    Check("probe_grid", "probe grid, MTT size (probe_grid_speed)", 60, check_probe_grid),
    Check("extraction", "extraction vs transformers (eval_speed)", 45, check_extraction),
    Check("extract_mem", "extraction memory, long vs short track (extract_memory)", 30, check_extract_memory),
)


def link_loader_to_step(results: list[dict]) -> None:
    """The loader's ratio: what one loading process feeds per second over what a MusicHuBERT bf16
    step consumes per second (>= 1: one process keeps the step fed)."""
    by_name = {result["name"]: result for result in results}
    loader, step = by_name.get("loader"), by_name.get("musichubert")
    if not (loader and step and loader["status"] == step["status"] == "ok"):
        return
    consumed = step["figures"]["consumed_audio_s_per_s"]["bf16"]
    ratio = loader["figures"]["prepared"] / consumed
    loader["figures"]["step_consumes_audio_s_per_s"] = consumed
    loader["figures"]["feed_over_consumption"] = ratio
    loader["ratio"] = f"{ratio:.1f}x a MusicHuBERT bf16 step's {consumed:.0f} audio-s/s"


# ---------------------------------------------------------------------------------------------
# running a check in its own process, under its budget


def run_child(name: str, sizes: Sizes, result_path: Path) -> None:
    """The child's side: run one check, write {"status", "figure", ...} to `result_path`."""
    check = next(check for check in CHECKS if check.name == name)
    try:
        outcome = {"status": "ok", **check.run(sizes)}
    except BaseException as error:  # noqa: BLE001 (anything a check raises is its result)
        traceback.print_exc()
        outcome = {"status": "failed", "error": one_line(error)}
    result_path.write_text(json.dumps(outcome, default=str))


def one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()
    return text[0][:300] if text else type(error).__name__


def run_check(check: Check, sizes: Sizes, budget: float, logs: Path) -> dict:
    """Run `check` in a child process, echoing its output (indented) and keeping it in logs/."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--device", sizes.device, "--_check", check.name,
                   "--_result", str(result_path), *(["--quick"] if sizes.quick else [])]
        # a session of its own, so a timeout ends the check's workers too
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True, cwd=REPOSITORY, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        echo = threading.Thread(target=copy_lines, args=(child.stdout, lines), daemon=True)
        echo.start()
        try:
            child.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        echo.join(timeout=5)
        (logs / f"{check.name}.log").write_text("".join(lines))
        seconds = time.perf_counter() - started
        if result_path.exists():
            outcome = json.loads(result_path.read_text())
        elif child.returncode == -signal.SIGKILL and seconds >= budget:
            outcome = {"status": "timed out", "error": f"no result within its budget of {budget:.0f} s"}
        else:
            last = next((line.strip() for line in reversed(lines) if line.strip()), "")
            outcome = {"status": "failed", "error": f"exit {child.returncode}: {last[:300]}"}
    return {"name": check.name, "what": check.what, "seconds": seconds, "budget_s": budget,
            "figure": "", "ratio": "", "figures": {}, **outcome}


def copy_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)
        print("    " + line, end="", flush=True)


def run_all(sizes: Sizes, names: list[str], logs: Path) -> list[dict]:
    results, started = [], time.perf_counter()
    chosen = [check for check in CHECKS if check.name in names]
    for index, check in enumerate(chosen, 1):
        left = OVERALL_DEADLINE_S - (time.perf_counter() - started)
        budget = min(QUICK_BUDGET_S if sizes.quick else check.budget_s, left)
        if budget < 5:
            results.append({"name": check.name, "what": check.what, "seconds": 0.0, "budget_s": 0.0, "figure": "",
                            "ratio": "", "figures": {}, "status": "not run",
                            "error": f"the run's deadline of {OVERALL_DEADLINE_S:.0f} s had passed"})
            continue
        print(f"[{index}/{len(chosen)}] {check.name}: {check.what} (budget {budget:.0f} s)", flush=True)
        result = run_check(check, sizes, budget, logs)
        print(f"[{index}/{len(chosen)}] {check.name}: {result['status']} in {result['seconds']:.0f} s"
              + (f": {result['error']}" if result.get("error") else f": {result['figure']}"), flush=True)
        results.append(result)
    link_loader_to_step(results)
    return results


# ---------------------------------------------------------------------------------------------
# the report


def machine(device: str) -> dict:
    import torch
    import transformers
    from backbone_speed import cpu_name

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {"device": device, "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
            "cuda": torch.version.cuda, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads()}


def markdown_table(results: list[dict]) -> str:
    """The table for docs/performance.md: one row per check; a failed check shows its error."""
    lines = ["| check | what | figure | ratio vs baseline | s | status |", "|---|---|---|---|---:|---|"]
    for result in results:
        status = result["status"] if result["status"] == "ok" else f"{result['status']}: {result.get('error', '')}"
        cells = [result["name"], result["what"], result["figure"], result["ratio"], f"{result['seconds']:.0f}", status]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def report(results: list[dict], machine_info: dict, date: str, quick: bool) -> dict:
    return {"date": date, "quick": quick, "machine": machine_info, "all_ok": all_ok(results), "checks": results}


def all_ok(results: list[dict]) -> bool:
    return bool(results) and all(result["status"] == "ok" for result in results)


def write_outputs(out: Path, results: list[dict], machine_info: dict, date: str, quick: bool) -> str:
    """device_check.md (a heading naming the machine, then the table) and device_check.json."""
    from musicssl import atomic

    where = machine_info["gpu"] or machine_info["cpu"]
    heading = (f"Device check, {date}: {where} (torch {machine_info['torch']}, CUDA {machine_info['cuda']}, "
               f"{machine_info['threads']} threads){', quick sizes' if quick else ''}\n\n")
    table = heading + markdown_table(results)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "device_check.md", table)
    atomic.write_text(out / "device_check.json",
                      json.dumps(report(results, machine_info, date, quick), indent=2, default=str) + "\n")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda[:i] or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI on the CPU)")
    parser.add_argument("--out", type=Path, default=Path("runs/device_check"))
    parser.add_argument("--only", nargs="+", choices=[check.name for check in CHECKS],
                        default=[check.name for check in CHECKS], help="run these checks only")
    parser.add_argument("--_check", help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = Sizes(args.device, args.quick)
    if args._check:
        run_child(args._check, sizes, args._result)
        return 0
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now().isoformat(timespec="seconds")
    started = time.perf_counter()
    results = run_all(sizes, args.only, logs)
    table = write_outputs(args.out, results, machine(args.device), date, args.quick)
    print("\n" + table + f"\n{len(results)} checks in {time.perf_counter() - started:.0f} s; "
          f"written to {args.out}/device_check.md and .json", flush=True)
    return 0 if all_ok(results) else 1


if __name__ == "__main__":
    sys.exit(main())
