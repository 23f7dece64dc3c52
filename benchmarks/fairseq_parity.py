"""Objective parity with fairseq: MusicHuBERT vs HubertModel + `hubert` criterion, Music2Vec vs
data2vec 1.0 audio (Data2VecAudioModel), span masks vs compute_mask_indices, and the LR / EMA
schedules. Exits 1 when a comparison fails.

    make parity-fairseq        # builds .venv and .venv-fairseq first; ~25 min on 2 busy CPU cores
    .venv/bin/python benchmarks/fairseq_parity.py [--draws 10000] [--skip-base] [--only masks,...]
                                                  [--cases NAME,...] [--write-fixtures]

Our side runs here (main venv); fairseq's in `.venv-fairseq` (benchmarks/fairseq_side.py), the
tensors exchanged through safetensors files in a temporary folder. The cases (weights, padded
batches, forced masks, labels) are in tests/models/fairseq_cases.py. `--write-fixtures` also
stores fairseq's values for the tiny cases in tests/models/fixtures/, which
tests/models/test_fairseq_reference.py compares our code against without fairseq.

Differences are relative, max |ours - fairseq| / max |fairseq| over a tensor (per parameter for
gradients, the worst one shown). Tolerances (the issue's, fp32): 1e-5 on losses and scalars,
1e-4 on gradients (or 4x a gradient's fp32 noise floor, see `compare_gradients`), 1e-4 on
activations (logits, FFN outputs, targets, predictions: outputs of a whole network, like the
gradients), 4 fp32 ulps on the EMA step, 1e-12 on float64 schedules. Masks: distributions, see
`compare_masks`. Cases marked `kept` differ from fairseq on purpose and never fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.models.fairseq_cases

from tests.models import fairseq_cases as cases  # noqa: E402
from fairseq_parity_masks import compare_masks, mask_padding, mask_settings, our_masks, unpack_masks  # noqa: E402

FAIRSEQ_PYTHON = ROOT / os.environ.get("FAIRSEQ_VENV", ".venv-fairseq") / "bin" / "python"
FIXTURES = ROOT / "tests" / "models" / "fixtures"
TOL = {"loss": 1e-5, "scalar": 1e-5, "grad": 1e-4, "activation": 1e-4, "schedule": 1e-12,
       "ema": 4 * 2.0**-24}


# ---------------------------------------------------------------------------------------------
# Names: ours -> fairseq (the one field-mapping table)

RENAMES = [  # (our pattern, fairseq template); {v} = variant-specific pieces below
    (r"backbone\.mask_embedding", "mask_emb"),
    (r"backbone\.feature_extractor\.conv_layers\.(\d+)\.conv\.weight", r"feature_extractor.conv_layers.\1.0.weight"),
    (r"backbone\.feature_extractor\.conv_layers\.(\d+)\.norm\.(weight|bias)", r"feature_extractor.conv_layers.\1.{norm}.\2"),
    (r"backbone\.feature_projection\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
    (r"backbone\.feature_projection\.projection\.(weight|bias)", r"post_extract_proj.\1"),
    (r"backbone\.encoder\.pos_conv\.convs\.0\.(weight_g|weight_v)", r"encoder.pos_conv.0.\1"),
    (r"backbone\.encoder\.pos_conv\.convs\.(\d+)\.(weight|bias)", r"encoder.pos_conv.\1{pos}.\2"),
    (r"backbone\.encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"backbone\.encoder\.layers\.(\d+)\.attention\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.\2_proj.\3"),
    (r"backbone\.encoder\.layers\.(\d+)\.attention_layer_norm\.(weight|bias)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"backbone\.encoder\.layers\.(\d+)\.feed_forward\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.\2.\3"),
    (r"backbone\.encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
    (r"label_embeddings", "label_embs_concat"),
    (r"cqt_head\.(weight|bias)", r"encoder_cqt_model.fc.\1"),  # MERT's CQT head (model_cqt_pred.fc)
]
VARIANT_PIECES = {"hubert": {"norm": "2", "pos": ""}, "data2vec": {"norm": "2.1", "pos": ".0"}}


def fairseq_name(name: str, variant: str) -> str:
    if name.startswith("teacher.encoder."):  # the EMA teacher: keys relative to the encoder
        return "ema." + fairseq_name("backbone.encoder." + name[len("teacher.encoder."):], variant)[len("encoder."):]
    for pattern, template in RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, template.format(**VARIANT_PIECES[variant]).replace("{", "").replace("}", ""), name)
    raise KeyError(f"no fairseq name for {name}")


def special_rows_first(embeddings: torch.Tensor, rows: list[int], extra: int, inverse: bool = False) -> torch.Tensor:
    """Our codebook rows are [k clusters][extra specials] per set; fairseq's dictionary puts the
    4 specials first (cluster c is row c + 4)."""
    if extra == 0:
        return embeddings
    parts = []
    for block in embeddings.split(rows):
        k = block.shape[0] - extra
        parts.append(torch.cat([block[k:], block[:k]]) if not inverse else torch.cat([block[extra:], block[:extra]]))
    return torch.cat(parts)


def to_fairseq(inputs: dict, variant: str, rows: list[int] | None = None, extra: int = 0) -> dict:
    out = {}
    for key, value in inputs.items():
        if not key.startswith("weight."):
            out[key] = value
            continue
        name = key[len("weight."):]
        if name == "label_embeddings":
            value = special_rows_first(value, rows, extra)
        target = fairseq_name(name, variant)
        out[target if target.startswith("ema.") else "weight." + target] = value
    return out


def grads_to_ours(fs: dict, ours: dict, variant: str, rows=None, extra: int = 0) -> dict:
    """fairseq's `grad.<fs name>` renamed to ours (and its label rows put back in our order)."""
    out = {}
    for key in ours:
        if key.startswith("grad."):
            name = key[len("grad."):]
            value = fs[f"grad.{fairseq_name(name, variant)}"]
            out[key] = special_rows_first(value, rows, extra, inverse=True) if name == "label_embeddings" else value
    return out


def logits_to_ours(fs_logits: torch.Tensor, extra: int) -> torch.Tensor:
    """fairseq's (M, 1 + C): the target's logit first, then every class with the target's
    duplicate at -inf. Back to (M, C) in our class order."""
    full = fs_logits[:, 1:].clone()
    rows, cols = torch.nonzero(torch.isinf(full), as_tuple=True)
    if not torch.equal(rows, torch.arange(full.shape[0])):
        raise ValueError("expected exactly one -inf (the target's duplicate) per row of fairseq's logits")
    full[rows, cols] = fs_logits[:, 0]
    return torch.cat([full[:, extra:], full[:, :extra]], 1)


# ---------------------------------------------------------------------------------------------
# Comparisons


def relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    if ours.shape != ref.shape:
        return float("inf")
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return (ours - ref).abs().max().item() / scale if scale > 0 else (ours - ref).abs().max().item()


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, float, float, bool, str]] = []
        self.kept = ""  # set while a kept-on-purpose case is compared: its rows never fail

    def add(self, case: str, what: str, diff: float, tol: float, note: str = "") -> None:
        ok = diff <= tol or bool(self.kept)
        self.rows.append((case, what, diff, tol, ok, note))
        mark = ("ok" if diff <= tol else "kept") if ok else "FAIL"
        print(f"{case:34s} {what:44s} {diff:10.2e} {tol:8.0e} {mark:4s} {note}", flush=True)

    def add_test(self, case: str, what: str, p: float, alpha: float, note: str = "") -> None:
        """A statistical test: passes when its p-value is at least alpha (shown as ">=alpha")."""
        self.rows.append((case, what, p, alpha, p >= alpha, note))
        print(f"{case:34s} {what:44s} {'p=' + format(p, '.3f'):>10s} {'>=' + format(alpha, '.0e'):>8s} "
              f"{'ok' if p >= alpha else 'FAIL':4s} {note}", flush=True)

    @property
    def failed(self) -> list:
        return [r for r in self.rows if not r[4]]


def compare_hubert(table: Table, case, ours: dict, fs: dict) -> None:
    config = case.config()
    extra, sets = config.extra_classes, len(config.codebooks)
    for i in range(sets):
        for kind in ("m", "u"):
            table.add(case.name, f"logits {'masked' if kind == 'm' else 'unmasked'} set {i}",
                      relative(ours[f"logits_{kind}_{i}"], logits_to_ours(fs[f"logits_{kind}_{i}"], extra)),
                      TOL["activation"])
            table.add(case.name, f"loss {'masked' if kind == 'm' else 'unmasked'} set {i}",
                      relative(ours[f"loss_{kind}_{i}"], fs[f"loss_{kind}_{i}"]), TOL["loss"])
    table.add(case.name, "feature penalty", relative(ours["features_pen"], fs["features_pen"]), TOL["loss"])
    table.add(case.name, "sample size", relative(ours["sample_size"], fs["sample_size"]), 0.0)
    table.add(case.name, "total loss", relative(ours["loss"], fs["loss"]), TOL["loss"])
    rows = [k + extra for k in config.codebooks]
    compare_gradients(table, case.name, ours, grads_to_ours(fs, ours, "hubert", rows, extra))


def gradient_difference(name: str, ours: dict, ref: dict) -> float:
    """Relative difference of one parameter's gradient. The key projection's bias has zero gradient
    (a bias on every key adds the same q.b to all of a query's scores, which softmax ignores):
    both sides hold rounding noise there, measured against the key weight's gradient instead."""
    if name.endswith("attention.k_proj.bias"):
        scale = ref[name[:-len("bias")] + "weight"].abs().max().item()
        return (ours[name] - ref[name]).abs().max().item() / scale
    return relative(ours[name], ref[name])


def with_noise_floors(run, case, inputs: dict) -> dict:
    """run(case, inputs), plus `floor.grad.<name>`: how far each gradient moves when the input audio
    moves by one fp32 ulp (cases.nudged), the noise floor `compare_gradients` allows for."""
    ours = run(case, inputs)
    nudged = run(case, cases.nudged(inputs, case.name))
    return ours | {f"floor.{k}": torch.tensor(relative(nudged[k], v)) for k, v in ours.items() if k.startswith("grad.")}


def compare_gradients(table: Table, case: str, ours: dict, ref: dict) -> None:
    """Every parameter within 1e-4, or, where its gradient is ill-conditioned, within 4x its noise
    floor: how far our own fp32 gradient moves when the input moves by one ulp (`nudged`). Two
    fp32 computations in different operation orders can differ by about that floor each; deep
    in a 12-block post-LN stack the key projection's gradient is a sum of nearly cancelling terms
    (the keys' shared component drops out of the softmax), with a floor up to ~1e-4."""
    differences = {k: gradient_difference(k, ours, ref) for k in ref}
    tolerance = {k: max(TOL["grad"], 4 * ours[f"floor.{k}"].item()) for k in ref}
    worst = max(differences, key=lambda k: differences[k] / tolerance[k])
    strict = max(differences, key=differences.get)
    floored = sum(TOL["grad"] < differences[k] <= tolerance[k] for k in ref)
    note = f"worst: {worst[5:]} (noise floor {ours['floor.' + worst].item():.1e})"
    if floored:
        note += f"; {floored} above 1e-4 but within 4x their floor, largest {differences[strict]:.1e} ({strict[5:]})"
    table.add(case, f"gradients ({len(ref)} parameters)", differences[worst], tolerance[worst], note)


def compare_music2vec(table: Table, case, ours: dict, fs: dict) -> None:
    layers = [k for k in fs if k.startswith("layer_result_")]
    worst = max(relative(ours[k], fs[k]) for k in layers)
    table.add(case.name, f"teacher FFN outputs (top {len(layers)})", worst, TOL["activation"])
    table.add(case.name, "targets at masked frames", relative(ours["target"], fs["target"]), TOL["activation"])
    table.add(case.name, "predictions at masked frames", relative(ours["prediction"], fs["prediction"]),
              TOL["activation"])
    table.add(case.name, "loss", relative(ours["loss"], fs["loss"]), TOL["loss"])
    per_element = (torch.nn.functional.mse_loss(fs["prediction"], fs["target"], reduction="sum")
                   if case.loss_beta == 0 else torch.nn.functional.smooth_l1_loss(
                       fs["prediction"], fs["target"], reduction="sum", beta=case.loss_beta))
    table.add(case.name, "loss scale (loss / summed error)", relative(ours["loss_scale"], fs["loss"] / per_element),
              TOL["loss"])
    table.add(case.name, "sample size", relative(ours["sample_size"], fs["sample_size"]), 0.0)
    table.add(case.name, "target std / prediction std",
              max(relative(ours["target_var"], fs["target_var"]), relative(ours["pred_var"], fs["pred_var"])),
              TOL["loss"])
    compare_gradients(table, case.name, ours, grads_to_ours(fs, ours, "data2vec"))
    table.add(case.name, f"EMA decay at update {case.ema_step}", relative(ours["ema_decay"], fs["ema_decay"]),
              TOL["schedule"])
    # One step moves the teacher by (1 - decay)(student - teacher): here 5e-4 of its size at decay
    # 0.999 (the case's teacher is far from the student), 5e-5 at 0.9999. fp32 resolves the result
    # to an ulp of the teacher (2^-24 relative), so the two must agree to a few ulps (tolerance 4):
    # a decay off by 1e-6 would already move it by 8 ulps. The decay itself is compared above.
    ema = {k: fs[fairseq_name("teacher.encoder." + k[4:], "data2vec")] for k in ours if k.startswith("ema.")}
    blocks = [k for k in ema if not k.startswith("ema.pos_conv.")]
    worst = max(blocks, key=lambda k: relative(ours[k], ema[k]))
    moved = max(relative(ema[k], ours["teacher_before." + k[4:]]) for k in blocks)
    table.add(case.name, f"one EMA update ({len(blocks)} tensors)", relative(ours[worst], ema[worst]), TOL["ema"],
              f"worst: {worst[4:]}; the step moved the teacher by {moved:.1e}")
    copied = [k for k in ema if k.startswith("ema.pos_conv.")]
    table.add(case.name, f"one EMA update: pos conv copied ({len(copied)})",
              max(relative(ours[k], ema[k]) for k in copied), 0.0)


# ---------------------------------------------------------------------------------------------
# Schedules


def schedule_jobs() -> tuple[dict, dict]:
    """The fairseq job and its inputs: every update of each recipe schedule, and the EMA decay
    every 10th update of the base anneal (every update of the tiny one)."""
    inputs, specs = {}, {}
    for name, config in cases.SCHEDULES.items():
        inputs[f"steps.{name}"] = torch.tensor(cases.schedule_steps(config.total_steps))
        specs[name] = dataclasses.asdict(config)
    ema = {}
    for name, (start, end, anneal) in cases.EMA_SCHEDULES.items():
        inputs[f"steps.{name}"] = torch.tensor(cases.schedule_steps(anneal, every=10 if anneal > 1000 else 1))
        ema[name] = (start, end, anneal)
    return {"schedules": specs, "ema": ema, **cases.case_dict(cases.MUSIC2VEC_CASES["music2vec_tiny"])}, inputs


def compare_schedules(table: Table, inputs: dict, fs: dict) -> dict:
    ours = {}
    for name, config in cases.SCHEDULES.items():
        ours[name] = cases.ours_schedule(config, inputs[f"steps.{name}"].tolist())
        table.add("schedules", f"{name} ({len(ours[name])} updates)", relative(ours[name], fs[name]), TOL["schedule"])
    for name, (start, end, anneal) in cases.EMA_SCHEDULES.items():
        ours[name] = cases.ours_ema_schedule(start, end, anneal, inputs[f"steps.{name}"].tolist())
        table.add("schedules", f"{name} decay ({len(ours[name])} updates)", relative(ours[name], fs[name]),
                  TOL["schedule"])
    return ours


# ---------------------------------------------------------------------------------------------
# Fixtures for tests/models/test_fairseq_reference.py

FIXTURE_CASES = ("hubert_tiny_100hz", "hubert_tiny_two_sets_50hz", "music2vec_tiny")
FIXTURE_GRADIENTS = ("final_proj.bias", "backbone.mask_embedding", "backbone.encoder.layers.0.final_layer_norm.weight",
                     "backbone.feature_extractor.conv_layers.0.norm.weight", "backbone.encoder.layer_norm.bias")
FIXTURE_STEPS = 40  # schedule values kept per schedule


def fixture_values(case, ours: dict, fs: dict) -> dict[str, torch.Tensor]:
    """fairseq's values of a tiny case in our names and class order, trimmed to a few KB."""
    out = {}
    if isinstance(case, cases.HubertCase):
        extra = case.config().extra_classes
        for i in range(len(case.codebooks)):
            for kind in ("m", "u"):
                logits = logits_to_ours(fs[f"logits_{kind}_{i}"], extra)
                out[f"logits_{kind}_{i}.rows"] = logits[:4]  # the first 4 frames, every class
                out[f"logits_{kind}_{i}.logsumexp"] = logits.logsumexp(-1)  # every frame
                out[f"loss_{kind}_{i}"] = fs[f"loss_{kind}_{i}"]
        out |= {k: fs[k] for k in ("features_pen", "loss", "sample_size")}
        rows = [k + extra for k in case.config().codebooks]
        grads = grads_to_ours(fs, ours, "hubert", rows, extra)
    else:
        out |= {k: fs[k] for k in ("loss", "sample_size", "target_var", "pred_var", "ema_decay")}
        out |= {"target.rows": fs["target"][:4], "prediction.rows": fs["prediction"][:4]}
        out |= {f"{k}.rows": fs[k][0, :4] for k in fs if k.startswith("layer_result_")}
        grads = grads_to_ours(fs, ours, "data2vec")
        ema = {k: fs[fairseq_name("teacher.encoder." + k[4:], "data2vec")] for k in ours if k.startswith("ema.")}
        out |= {f"ema_norm.{k[4:]}": v.double().norm() for k, v in ema.items()}
        out |= {k: ema[k] for k in ("ema.layer_norm.weight", "ema.layers.0.feed_forward.fc2.bias")}
    out |= {f"grad_norm.{k[5:]}": v.double().norm() for k, v in grads.items()}
    out |= {f"grad.{name}": grads[f"grad.{name}"] for name in FIXTURE_GRADIENTS if f"grad.{name}" in grads}
    return out


def write_fixtures(values: dict[str, torch.Tensor], schedules: dict, inputs: dict) -> None:
    for name in schedules:
        steps = inputs[f"steps.{name}"]
        keep = torch.linspace(0, len(steps) - 1, FIXTURE_STEPS).round().long()
        values[f"schedules/{name}.steps"] = steps[keep]
        values[f"schedules/{name}.values"] = schedules[name][keep]
    FIXTURES.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([str(FAIRSEQ_PYTHON), "-c", "import importlib.metadata as m; "
                              "print(m.version('fairseq-fixed'), m.version('torch'))"],
                             capture_output=True, text=True, check=True).stdout.split()
    save_file({k: v.contiguous() for k, v in sorted(values.items())}, FIXTURES / "fairseq_reference.safetensors",
              metadata={"fairseq-fixed": version[0], "torch": version[1],
                        "made_by": "benchmarks/fairseq_parity.py --write-fixtures"})
    print(f"wrote {len(values)} reference tensors to {FIXTURES / 'fairseq_reference.safetensors'}")


# ---------------------------------------------------------------------------------------------


def run_fairseq(job_dir: Path, jobs: list[dict], side: str = "fairseq_side.py") -> None:
    """JOB_DIR/jobs.json's jobs through benchmarks/`side` in `.venv-fairseq` (benchmarks/ on its path:
    mert_side.py imports fairseq_side's pieces)."""
    if not FAIRSEQ_PYTHON.exists():
        sys.exit(f"{FAIRSEQ_PYTHON} not found: build it with `make fairseq-venv`")
    (job_dir / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([str(FAIRSEQ_PYTHON), str(ROOT / "benchmarks" / side), str(job_dir)], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                            PYTHONPATH=str(ROOT / "benchmarks")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=10_000, help="mask draws per setting and side")
    parser.add_argument("--skip-base", action="store_true", help="tiny models only (no 95M cases)")
    parser.add_argument("--only", default="", help="comma-separated parts: hubert,music2vec,masks,schedules")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--write-fixtures", action="store_true",
                        help="also store fairseq's values of the tiny cases for tests/models/test_fairseq_reference.py")
    args = parser.parse_args()
    parts = set(args.only.split(",")) if args.only else {"hubert", "music2vec", "masks", "schedules"}
    if args.write_fixtures:
        parts |= {"hubert", "music2vec", "schedules"}
    torch.manual_seed(0)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fairseq_parity_") as tmp:
        job_dir, jobs, todo = Path(tmp), [], []
        chosen = [c for c in cases.HUBERT_CASES.values() if "hubert" in parts]
        chosen += [c for c in cases.MUSIC2VEC_CASES.values() if "music2vec" in parts]
        for case in chosen:
            if (args.skip_base and case.preset == "base") or (args.cases and case.name not in args.cases.split(",")):
                continue
            hubert = isinstance(case, cases.HubertCase)
            inputs = cases.hubert_inputs(case) if hubert else cases.music2vec_inputs(case)
            run = cases.run_ours_hubert if hubert else cases.run_ours_music2vec
            ours = with_noise_floors(run, case, inputs)
            save_file({k: v.contiguous() for k, v in ours.items()}, job_dir / f"{case.name}.ours")
            if hubert:
                extra = case.config().extra_classes
                fs_inputs = to_fairseq(inputs, "hubert", [k + extra for k in case.codebooks], extra)
            else:
                fs_inputs = to_fairseq(inputs, "data2vec")
            save_file({k: v.contiguous() for k, v in fs_inputs.items()}, job_dir / f"{case.name}.in")
            jobs.append({"kind": "hubert" if hubert else "data2vec", "name": case.name, "input": f"{case.name}.in",
                         "output": f"{case.name}.out", **cases.case_dict(case)})
            todo.append(case)
            del inputs, ours, fs_inputs
        if "schedules" in parts:
            job, schedule_inputs = schedule_jobs()
            save_file(schedule_inputs, job_dir / "schedules.in")
            jobs.append({"kind": "schedules", "name": "schedules", "input": "schedules.in", "output": "schedules.out",
                         **job})
        if "masks" in parts:
            settings = mask_settings()
            save_file({"padding": mask_padding()}, job_dir / "masks.in")
            jobs.append({"kind": "masks", "name": "masks", "input": "masks.in", "output": "masks.out",
                         "draws": args.draws, "seed": 1, "settings": {
                             k: dataclasses.asdict(v) for k, v in settings.items()}})
        print(f"our side done ({time.perf_counter() - started:.0f} s); running fairseq's", flush=True)
        run_fairseq(job_dir, jobs)

        table, fixtures = Table(), {}
        print(f"\n{'case':34s} {'comparison':44s} {'max diff':>10s} {'tol':>8s}")
        for case in todo:
            ours, fs = load_file(job_dir / f"{case.name}.ours"), load_file(job_dir / f"{case.name}.out")
            table.kept = case.kept
            if case.kept:
                print(f"{case.name}: differs on purpose: {case.kept}")
            (compare_hubert if isinstance(case, cases.HubertCase) else compare_music2vec)(table, case, ours, fs)
            table.kept = ""
            if args.write_fixtures and case.name in FIXTURE_CASES:
                fixtures |= {f"{case.name}/{k}": v for k, v in fixture_values(case, ours, fs).items()}
        if "schedules" in parts:
            schedule_fs = load_file(job_dir / "schedules.out")
            compare_schedules(table, schedule_inputs, schedule_fs)
            if args.write_fixtures:
                write_fixtures(fixtures, schedule_fs, schedule_inputs)
        if "masks" in parts:
            fs_masks = load_file(job_dir / "masks.out")
            ours_masks = {name: our_masks(config, args.draws, seed=2) for name, config in settings.items()}
            compare_masks(table, ours_masks, {k: unpack_masks(v) for k, v in fs_masks.items()}, tests=2 * len(settings))
    return summarise(table, started)


def summarise(table: Table, started: float) -> int:
    """Print how many comparisons held and each failure; the exit status (1 if any failed)."""
    failed = table.failed
    print(f"\n{len(table.rows) - len(failed)} of {len(table.rows)} comparisons within tolerance "
          f"({time.perf_counter() - started:.0f} s)")
    for row in failed:
        print(f"FAILED: {row[0]} / {row[1]}: {row[2]:.3g} (tolerance {row[3]:.3g}) {row[5]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
