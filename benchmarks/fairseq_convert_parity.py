"""Parity of `musicssl convert fairseq` against real fairseq checkpoints.

Run by the fairseq venv (`make parity-convert`, or directly):

    .venv-fairseq/bin/python benchmarks/fairseq_convert_parity.py [--sizes tiny,base] \\
        [--main-python .venv/bin/python] [--write-fixture tests/interop/fixtures]

For each case (HuBERT post-LN / group-norm CNN; HuBERT pre-LN / layer-norm CNN / normalised
input, the large recipe's shape; HuBERT with conv_pos_batch_norm; data2vec-audio with its EMA
teacher) it builds a random-weight fairseq model, saves it as fairseq's trainer does (plain-dict
cfg) and then re-saves it the way published checkpoints are (loaded with
`checkpoint_utils.load_checkpoint_to_cpu`, so `cfg` is an OmegaConf DictConfig, and written with
`checkpoint_utils.torch_persistent_save`), loads that file back with fairseq's own
`load_model_ensemble_and_task`, and runs a batch through it, recording every layer. Then, in the
main venv (subprocess; fairseq is not importable there), it converts the checkpoint with
`musicssl convert fairseq` and compares every hidden state (`--compare`). Prints the max abs
difference per layer; exits non-zero if any exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The states are O(1) (LayerNorm outputs): two float32 runs of the same network differ by their
# rounding, eps32 * sqrt(n) * |x| per reduction of length n <= 3072, ~1e-6 per layer; a mapping
# error is O(1). 1e-4 absolute separates the two by two orders of magnitude either side.
TOLERANCE = 1e-4
TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2", conv_pos_groups=4)
BASE: dict = {}  # fairseq's dataclass defaults are the base recipes' shapes
CASES = {
    "hubert": dict(kind="hubert", model={}, normalize=False, tiny=dict(conv_pos=16)),
    "hubert_large_style": dict(kind="hubert", model=dict(extractor_mode="layer_norm", layer_norm_first=True,
                                                         conv_bias=True), normalize=True, tiny=dict(conv_pos=16)),
    "hubert_conv_pos_batch_norm": dict(kind="hubert", model=dict(conv_pos_batch_norm=True), normalize=False,
                                       tiny=dict(conv_pos=16)),
    "data2vec_audio": dict(kind="data2vec_audio", model=dict(extractor_mode="layer_norm", pos_conv_depth=5,
                                                             conv_pos=95), normalize=True,
                           tiny=dict(conv_pos=15, pos_conv_depth=3)),
}


# ---------------------------------------------------------------------------------------------
# fairseq side (fairseq venv)


def build_fairseq(case: dict, size: str, workdir: Path):
    import logging

    logging.disable(logging.WARNING)
    import torch
    from omegaconf import OmegaConf, open_dict

    torch.manual_seed(0)  # fairseq's own init draws from the global generator
    shape = {**(TINY if size == "tiny" else BASE), **case["model"], **(case["tiny"] if size == "tiny" else {})}
    if case["kind"] == "hubert":
        from fairseq.data import Dictionary
        from fairseq.models.hubert.hubert import HubertConfig, HubertModel
        from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

        (workdir / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(20)))
        dictionary = Dictionary.load(str(workdir / "dict.km.txt"))
        model_cfg = HubertConfig(label_rate=50.0, final_dim=16 if size == "tiny" else 256, **shape)
        task_cfg = HubertPretrainingConfig(data=str(workdir), label_dir=str(workdir), labels=["km"],
                                           label_rate=50.0, normalize=case["normalize"])
        model = HubertModel(model_cfg, task_cfg, [dictionary])
    else:
        import fairseq.examples.data2vec.models.data2vec_audio as data2vec  # registers data2vec_audio
        from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

        model_cfg = data2vec.Data2VecAudioConfig(**shape)
        task_cfg = AudioPretrainingConfig(data=str(workdir), normalize=case["normalize"])
        model = data2vec.Data2VecAudioModel(model_cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fairseq's init leaves biases 0 and norms 1: a mapping bug could hide
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    if case["kind"] != "hubert":
        model.make_ema_teacher()  # the checkpoint then holds `_ema`, as a training checkpoint does
    from fairseq.dataclass.configs import FairseqConfig

    cfg = OmegaConf.structured(FairseqConfig())  # every group a training run has (common, optimization...)
    with open_dict(cfg):
        cfg.model, cfg.task = OmegaConf.structured(model_cfg), OmegaConf.structured(task_cfg)
    cfg.model._name, cfg.task._name = case["kind"], ("hubert_pretraining" if case["kind"] == "hubert"
                                                     else "audio_pretraining")
    return model, cfg


def save_like_fairseq(model, cfg, workdir: Path) -> Path:
    """Trainer-style save (cfg as a plain container), then the published style (cfg DictConfig)."""
    from fairseq import checkpoint_utils
    from omegaconf import DictConfig, OmegaConf

    trainer_style = workdir / "checkpoint_trainer.pt"
    state = {"args": None, "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
             "model": model.state_dict(), "criterion": {}, "optimizer_history": [
                 {"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                  "lr_scheduler_state": {"best": 3.25}, "num_updates": 100}],
             "task_state": {}, "extra_state": {"epoch": 1, "val_loss": 3.25}, "last_optimizer_state": None}
    checkpoint_utils.torch_persistent_save(state, str(trainer_style))
    published = checkpoint_utils.load_checkpoint_to_cpu(str(trainer_style))
    assert isinstance(published["cfg"], DictConfig)
    path = workdir / "checkpoint_best.pt"
    checkpoint_utils.torch_persistent_save(published, str(path))
    return path


def fairseq_hidden_states(path: Path, wav):
    """fairseq loads the checkpoint itself; returns [input of block 1, output of each block,
    final output], each (B, T, D). Pre-LN: the final output is after encoder.layer_norm."""
    import torch
    from fairseq import checkpoint_utils

    # fairseq's loader calls torch.load with torch's default, weights_only=True since torch 2.6,
    # which refuses the DictConfig in every published checkpoint. This file was written above, so
    # the fairseq side may unpickle it fully (our converter never does).
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    model.eval()
    captured = []
    layers = model.encoder.layers
    handles = [layers[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))]
    handles += [layer.register_forward_hook(lambda module, args, out: captured.append(out[0])) for layer in layers]
    with torch.no_grad():
        if type(model).__name__ == "Data2VecAudioModel":
            final = model.extract_features(wav, None, mask=False)["x"]
        else:
            final, _ = model.extract_features(wav, None, mask=False)
    for handle in handles:
        handle.remove()
    frames = final.shape[1]
    states = [state.transpose(0, 1)[:, :frames] for state in captured]  # (T, B, D) -> (B, T, D)
    return states[:-1] + [final] if model.encoder.layer_norm_first else states


def run_case(name: str, size: str, workdir: Path, main_python: str, fixture: Path | None) -> dict:
    import torch
    from safetensors.torch import save_file

    case = CASES[name]
    workdir.mkdir(parents=True, exist_ok=True)
    model, cfg = build_fairseq(case, size, workdir)
    path = save_like_fairseq(model, cfg, workdir)
    generator = torch.Generator().manual_seed(1)
    wav = torch.randn(2, 16000, generator=generator) * 0.3  # a batch of two 1 s signals
    states = fairseq_hidden_states(path, wav)
    save_file({"wav": wav, **{f"layer_{i}": s.contiguous() for i, s in enumerate(states)}},
              str(workdir / "fairseq_states.safetensors"))
    if fixture is not None:
        fixture.mkdir(parents=True, exist_ok=True)
        (fixture / f"{name}_{size}.pt").write_bytes(path.read_bytes())
        states_file = workdir / "fairseq_states.safetensors"
        (fixture / f"{name}_{size}_states.safetensors").write_bytes(states_file.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([main_python, "-m", "musicssl.cli", "convert", "fairseq", str(path), str(workdir / "converted")],
                   check=True, env=env)
    result = subprocess.run([main_python, __file__, "--compare", str(workdir)], env=env, capture_output=True,
                            text=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(result.stderr)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report.update(case=name, size=size, checkpoint_bytes=path.stat().st_size)
    return report


# ---------------------------------------------------------------------------------------------
# our side (main venv)


def compare(workdir: Path) -> dict:
    """Every hidden state of the converted directory against fairseq's."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(REPO / "src"))
    from musicssl.interop.huggingface import import_pretrained

    saved = load_file(str(workdir / "fairseq_states.safetensors"))
    backbone = import_pretrained(workdir / "converted").eval()
    with torch.no_grad():
        out = backbone(saved["wav"])
    ours = list(out.layers[:-1]) + [out.last_hidden_state]
    diffs = [float((ours[i] - saved[f"layer_{i}"]).abs().max()) for i in range(len(ours))]
    expected_layers = sum(1 for key in saved if key.startswith("layer_"))
    heads = json.loads((workdir / "converted" / "training_state" / "fairseq.json").read_text())["heads"]
    # The directory is transformers-native: AutoModel loads it with no missing or unexpected key
    # and gives fairseq's states too (its hidden_states[-1] of a pre-LN model is pre-norm).
    from transformers import AutoModel

    hf_model, info = AutoModel.from_pretrained(workdir / "converted", output_loading_info=True)
    with torch.no_grad():
        hf_out = hf_model.eval()(saved["wav"], output_hidden_states=True)
    hf_states = list(hf_out.hidden_states[:-1]) + [hf_out.last_hidden_state]
    hf_diff = max(float((hf_states[i] - saved[f"layer_{i}"]).abs().max()) for i in range(len(hf_states)))
    clean = not (info["missing_keys"] or info["unexpected_keys"])
    ok = len(ours) == expected_layers and max(diffs) < TOLERANCE and clean and hf_diff < TOLERANCE
    return {"ok": ok, "max_abs_diff_per_layer": diffs, "layers": len(ours), "heads": _summarise(heads),
            "transformers": f"{type(hf_model).__name__} {'clean load' if clean else info}, max |diff| {hf_diff:.1e}"}


def _summarise(heads: list[str]) -> list[str]:
    top = sorted({name.split(".")[0] for name in heads})
    return [f"{t} ({sum(1 for h in heads if h.split('.')[0] == t)} tensors)" for t in top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument("--write-fixture", type=Path, default=None,
                        help="also copy the tiny HuBERT checkpoint and its fairseq states here")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.compare:
        report = compare(args.compare)
        print(json.dumps(report))
        return 0 if report["ok"] else 1
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        for size in args.sizes.split(","):
            for name in args.cases.split(","):
                fixture = args.write_fixture if (name == "hubert" and size == "tiny") else None
                report = run_case(name, size, root / f"{name}_{size}", args.main_python, fixture)
                failures += not report["ok"]
                diffs = ", ".join(f"{d:.1e}" for d in report["max_abs_diff_per_layer"])
                print(f"{'ok  ' if report['ok'] else 'FAIL'} {name:28s} {size:5s} {report['layers']:2d} states, "
                      f"max |diff| {max(report['max_abs_diff_per_layer']):.2e} (per layer: {diffs}); "
                      f"kept: {', '.join(report['heads'])}; transformers: {report['transformers']}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
