"""BEST-RQ parity with MusicFM's own code: the random-projection quantiser (matrices from a seed,
tokens of the same frames), the waveform masking (block structure, mask rate, noise), the
Conv2d front end (MusicFM's weights, the same mel) and, where the reference venv has torchaudio,
the whole target path from the waveform (MelSTFT's dB-mel and the tokens). Exits 1
when a comparison fails, and when no MusicFM source is given.

    make parity-bestrq MUSICFM_SRC=DIR      # DIR: a checkout of github.com/minzwon/musicfm
    make parity-mel MUSICFM_SRC=DIR         # the same in a venv with torchaudio (+ the waveform targets)
    .venv/bin/python benchmarks/bestrq_parity.py --musicfm-src DIR [--write-fixtures] [--require-torchaudio]

Our side runs here; MusicFM's in its own venv (`.venv-musicfm`: torch, einops, numpy), through
benchmarks/musicfm_side.py, the frames and answers exchanged as .npz files in a temporary folder.
`--write-fixtures` stores MusicFM's tokens (and a sample of its matrices) for the seeded cases in
tests/models/fixtures/musicfm_reference.safetensors, which tests/models/test_bestrq_reference.py checks our
code against without MusicFM.

Tolerances: both sides draw the matrices with the same torch generator and compute the tokens
with the same float32 operations on the same shapes, so matrices and tokens must be equal, bit for
bit. Masks are random draws of different generators: their rates are compared by a two-proportion
test (p >= 1e-3 passes; a correct implementation fails once in a thousand seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from scipy import stats

from musicssl.models.bestrq import LogMel, RandomProjectionQuantizer, mel_filterbank, stack_frames, waveform_block_mask
from musicssl.models.musicfm import Conv2dSubsampling, MusicFMPretrain, musicfm_pretrain_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.models.musicfm_cases, tests.numerics
from tests.models.musicfm_cases import CODE_DIM, QUANTIZER_CASES, case_frames  # noqa: E402
from tests.numerics import float64_calibrated  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = ROOT / os.environ.get("MUSICFM_VENV", ".venv-musicfm") / "bin" / "python"
FIXTURE = ROOT / "tests" / "models" / "fixtures" / "musicfm_reference.safetensors"
# MusicFM's Conv2dSubsampling at a small size (the large model: 512 channels, 128 mels, 1024 dims)
CONV_CASE = {"seed": 7, "channels": 8, "n_mels": 16, "dim": 24, "frames": 50}
SAMPLED_ENTRIES = 256  # matrix entries the fixture keeps (the whole matrices are ~300 KB per case)

def mel_frames(seconds: float = 6.0) -> np.ndarray:
    """Our own target pipeline on a seeded tone sequence: dB-mel, normalised by its own statistics,
    2 frames stacked: (1, T, 256). Compared on this machine only (float32 through our LogMel)."""
    rng = np.random.default_rng(3)
    samples = int(seconds * 16000)
    freq = np.repeat(110 * 2 ** (rng.integers(0, 36, 12) / 12), samples // 12 + 1)[:samples]
    wav = np.sin(2 * np.pi * np.cumsum(freq) / 16000) * 0.3 + 0.01 * rng.standard_normal(samples)
    mel = LogMel(16000, 1024, 160, 128)(torch.from_numpy(wav.astype(np.float32))[None])
    mel = (mel - mel.mean()) / mel.std()
    return stack_frames(mel, 2).numpy()


def conv_input() -> np.ndarray:
    """(2, n_mels, T) unit normals with a drift along time: a normalised mel as MusicFM's conv sees it."""
    rng = np.random.default_rng(5)
    shape = (2, CONV_CASE["n_mels"], CONV_CASE["frames"])
    return (rng.standard_normal(shape) + np.cumsum(rng.standard_normal(shape), axis=2) / 8).astype(np.float32)


def our_tokens(frames: np.ndarray, input_dim: int, codebook_size: int, seed: int):
    # codebook index i draws from seed + i: ask for the case's seed as codebook 0
    quantizer = RandomProjectionQuantizer(input_dim, CODE_DIM, codebook_size, 1, seed)
    return quantizer, quantizer(torch.from_numpy(frames))[..., 0].numpy()


def compare(reference: dict, frames: dict, table: list) -> dict[str, np.ndarray]:
    fixture: dict[str, np.ndarray] = {}
    for name, input_dim, codebook_size, seed, _ in QUANTIZER_CASES + [("mel_256", 256, 4096, 142, 0)]:
        quantizer, tokens = our_tokens(frames[name], input_dim, codebook_size, seed)
        ref_tokens = reference[f"{name}/tokens"]
        same_projection = np.array_equal(quantizer.projection[0].numpy(), reference[f"{name}/projection"])
        same_codebook = np.array_equal(quantizer.codebook[0].numpy(), reference[f"{name}/codebook"])
        differing = int((tokens != ref_tokens).sum())
        table.append((name, "projection, codebook equal", "yes" if same_projection and same_codebook else "NO",
                      same_projection and same_codebook))
        table.append((name, f"tokens differing (of {tokens.size}, {len(np.unique(tokens))} codes used)",
                      str(differing), differing == 0))
        if name != "mel_256":
            positions = np.random.default_rng(seed).choice(input_dim * CODE_DIM, SAMPLED_ENTRIES, replace=False)
            rows = np.random.default_rng(seed + 1).choice(codebook_size * CODE_DIM, SAMPLED_ENTRIES, replace=False)
            fixture.update({f"{name}/tokens": ref_tokens.astype(np.int16),
                            f"{name}/projection_positions": positions,
                            f"{name}/projection_values": reference[f"{name}/projection"].reshape(-1)[positions],
                            f"{name}/codebook_positions": rows,
                            f"{name}/codebook_values": reference[f"{name}/codebook"].reshape(-1)[rows]})
    return fixture


def compare_conv(reference: dict, mel: np.ndarray, table: list) -> dict[str, np.ndarray]:
    """Our Conv2dSubsampling (models/musicfm.py) with MusicFM's weights on the same mel: the same
    operations on the same shapes in the same torch, so equal here; the fixture keeps both for
    tests/models/test_musicfm.py, which checks across CPUs with a float64-calibrated tolerance."""
    state = {key.removeprefix("conv/state/"): torch.from_numpy(value)
             for key, value in reference.items() if key.startswith("conv/state/")}
    conv = Conv2dSubsampling(CONV_CASE["channels"], CONV_CASE["n_mels"], CONV_CASE["dim"])
    conv.load_state_dict(state)
    with torch.no_grad():
        ours = conv.eval()(torch.from_numpy(mel).transpose(1, 2)).numpy()
    difference = float(np.abs(ours - reference["conv/output"]).max())
    table.append(("conv", f"Conv2dSubsampling output {ours.shape}: max |ours - MusicFM|", f"{difference:.1e}",
                  difference <= 1e-5 * float(np.abs(reference["conv/output"]).max())))
    return {"conv/mel": mel, "conv/output": reference["conv/output"],
            **{f"conv/state/{key}": value.numpy() for key, value in state.items()}}


def compare_masking(reference: dict, settings: dict, table: list) -> None:
    """Ours at MusicFM's rates (24 kHz, 9,600-sample blocks, 960-sample tokens) against MusicFM's draw."""
    batch, samples = settings["batch"], settings["samples"]
    wav = torch.zeros(batch, samples)
    noised, ours = waveform_block_mask(wav, torch.full((batch,), samples), samples // 960, 960, 9600,
                                       settings["mask_prob"], 0.1, np.random.default_rng(settings["seed"]))
    theirs = torch.from_numpy(reference["masking/token_mask"])
    blocks = samples // 9600
    for label, mask in (("ours", ours), ("MusicFM", theirs)):
        whole = mask[:, :blocks * 10].reshape(batch, blocks, 10)
        structured = bool((whole.all(-1) | ~whole.any(-1)).all()) and not mask[:, blocks * 10:].any()
        table.append(("masking", f"{label}: 10 tokens per 400 ms block, trailing tokens unmasked",
                      "yes" if structured else "NO", structured))
    ours_count, theirs_count = int(ours[:, ::10][:, :blocks].sum()), int(theirs[:, ::10][:, :blocks].sum())
    n = batch * blocks
    table_p = stats.chi2_contingency([[ours_count, n - ours_count], [theirs_count, n - theirs_count]])[1]
    table.append(("masking", f"masked blocks: ours {ours_count / n:.4f}, MusicFM {theirs_count / n:.4f} (p)",
                  f"{table_p:.3g}", table_p >= 1e-3))
    our_noise, their_noise = noised[noised != 0].std().item(), float(np.std(reference["masking/noise"]))
    # The std of m normal samples has a standard error of std / sqrt(2 m): 5 of them on either side.
    bound = 5 * 0.1 / np.sqrt(2 * min((noised != 0).sum().item(), reference["masking/noise"].size))
    difference = abs(our_noise - their_noise)
    table.append(("masking", f"noise std: ours {our_noise:.5f}, MusicFM {their_noise:.5f} (|diff|, bound "
                  f"{2 * bound:.1e})", f"{difference:.1e}", difference <= 2 * bound))


# MusicFM's whole target path on a waveform: MuQ's MSD mel statistics stand in for a stats file.
TARGETS_CASE = {"seed": 142, "mean": 6.768, "std": 18.418, "items": 2, "seconds": 6.0}


def targets_wav() -> np.ndarray:
    """(items, n) float32 at 24 kHz: notes with harmonics, a vibrato and a little noise."""
    rng = np.random.default_rng(17)
    samples = int(TARGETS_CASE["seconds"] * 24000)
    t = np.arange(samples) / 24000
    items = []
    for _ in range(TARGETS_CASE["items"]):
        freq = np.repeat(82.4 * 2 ** (rng.integers(0, 36, 24) / 12), samples // 24 + 1)[:samples]
        phase = 2 * np.pi * np.cumsum(freq * (1 + 0.003 * np.sin(2 * np.pi * 5 * t))) / 24000
        items.append(sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2 + 0.01 * rng.standard_normal(samples))
    return np.stack(items).astype(np.float32)


def float64_log_mel(wav: np.ndarray) -> torch.Tensor:
    """The same definition in float64 (filterbank included): the truth both float32 mels round from."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        bank = mel_filterbank(24000, 2048, 128)  # (F, M)
    finally:
        torch.set_default_dtype(previous)
    window = torch.hann_window(2048, dtype=torch.float64)
    spectrum = torch.stft(torch.from_numpy(wav).double(), 2048, 240, window=window, center=True, pad_mode="reflect",
                          return_complex=True)
    mel = spectrum.abs().pow(2).transpose(-1, -2) @ bank  # (B, T + 1, M)
    return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))[:, :-1]


def compare_targets(reference: dict, wav: np.ndarray, table: list) -> None:
    """Our LogMel and MusicFMPretrain.targets against MusicFM's MelSTFT (torchaudio) and its target
    functions. Both mels are float32 roundings of one float64 definition: |ours - theirs| must stay
    within `float64_calibrated`'s multiple of their own error. Tokens: argmin over distances of the
    normalised projection, so a token may flip only where its two codes are nearer to tie than the
    two projections are apart (|d(x, c) - d(y, c)| <= |x - y| for unit codes c): each flip is checked."""
    log_mel = LogMel(24000, 2048, 240, 128)
    bank = log_mel.filterbank
    theirs_bank = torch.from_numpy(reference["targets/filterbank"])
    bank_difference = float((bank - theirs_bank).abs().max())
    table.append(("targets", "mel filterbank (1025, 128): max |ours - torchaudio| (values in [0, 1])",
                  f"{bank_difference:.1e}", bank_difference <= 64 * 2.0**-24))
    ours_mel = log_mel(torch.from_numpy(wav))  # (B, T, M)
    theirs_mel = torch.from_numpy(reference["targets/mel"]).transpose(1, 2)
    error, tolerance = float64_calibrated(ours_mel, theirs_mel, float64_log_mel(wav))
    table.append(("targets", f"dB-mel {tuple(ours_mel.shape)}: max |ours - MelSTFT| dB (float64-calibrated bound "
                  f"{tolerance:.1e})", f"{error:.1e}", ours_mel.shape == theirs_mel.shape and error <= tolerance))
    config = musicfm_pretrain_config("tiny").with_mel_statistics(TARGETS_CASE["mean"], TARGETS_CASE["std"])
    model = MusicFMPretrain(config).eval()
    batch = torch.from_numpy(wav)
    ours = model.targets(batch, torch.full((len(wav),), wav.shape[1]))[..., 0]  # (B, T / 4)
    theirs = torch.from_numpy(reference["targets/tokens"]).long()
    flips = (ours != theirs).nonzero().tolist()
    explained = 0
    if flips:
        quantizer = model.quantizer
        normalised = [stack_frames((mel - TARGETS_CASE["mean"]) / TARGETS_CASE["std"], 4)
                      for mel in (ours_mel, theirs_mel)]
        projected = [torch.nn.functional.normalize(x @ quantizer.projection[0], dim=-1) for x in normalised]
        codes = torch.nn.functional.normalize(quantizer.codebook[0], dim=-1)
        for item, token in flips:
            x, y = projected[0][item, token], projected[1][item, token]
            gap = float((x - codes[theirs[item, token]]).norm() - (x - codes[ours[item, token]]).norm())
            explained += gap <= float((x - y).norm()) + 1e-6  # + cdist's own rounding of a unit-norm distance
    table.append(("targets", f"tokens {tuple(ours.shape)}: differing from MusicFM's (each a near-tie: "
                  f"{explained} of them)", str(len(flips)), explained == len(flips)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--musicfm-src", default=os.environ.get("MUSICFM_SRC", ""))
    parser.add_argument("--write-fixtures", action="store_true")
    parser.add_argument("--require-torchaudio", action="store_true",
                        help="fail unless the reference venv ran the waveform targets (make parity-mel)")
    args = parser.parse_args()
    if not args.musicfm_src:
        print("parity-bestrq: MUSICFM_SRC is unset; MusicFM is on no package registry: clone "
              "https://github.com/minzwon/musicfm and run `make parity-bestrq MUSICFM_SRC=DIR`", file=sys.stderr)
        return 1
    source = Path(args.musicfm_src)
    if not (source / "modules" / "random_quantizer.py").is_file():
        print(f"parity-bestrq: {source} is not a MusicFM checkout (no modules/random_quantizer.py)", file=sys.stderr)
        return 1
    frames = {name: case_frames(name, dim, count) for name, dim, _, _, count in QUANTIZER_CASES}
    frames["mel_256"] = mel_frames()
    frames["conv/mel"] = conv_input()
    frames["targets/wav"] = targets_wav()
    masking = {"seed": 11, "batch": 64, "samples": 24000 * 30, "mask_hop": 0.4, "mask_prob": 0.6}
    cases = {"quantizer": [{"name": name, "input_dim": dim, "code_dim": CODE_DIM, "codebook_size": k, "seed": seed}
                           for name, dim, k, seed, _ in QUANTIZER_CASES + [("mel_256", 256, 4096, 142, 0)]],
             "masking": masking, "conv": CONV_CASE, "targets": TARGETS_CASE}
    with tempfile.TemporaryDirectory() as job_dir:
        job = Path(job_dir)
        (job / "cases.json").write_text(json.dumps(cases))
        np.savez(job / "inputs.npz", **frames)
        subprocess.run([str(REFERENCE_PYTHON), str(ROOT / "benchmarks" / "musicfm_side.py"), str(job), str(source)],
                       check=True, env={**os.environ, "PYTHONPATH": ""})
        reference = dict(np.load(job / "musicfm.npz"))
    table: list[tuple[str, str, str, bool]] = []
    fixture = compare(reference, frames, table)
    compare_masking(reference, masking, table)
    fixture.update(compare_conv(reference, frames["conv/mel"], table))
    if "targets/mel" in reference:
        compare_targets(reference, frames["targets/wav"], table)
    else:
        table.append(("targets", "waveform targets: the reference venv has no torchaudio (make parity-mel runs them)",
                      "skipped", not args.require_torchaudio))
    for case, what, value, ok in table:
        print(f"{'ok  ' if ok else 'FAIL'} {case:20s} {what:75s} {value}")
    failed = [row for row in table if not row[3]]
    if args.write_fixtures and not failed:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: np.ascontiguousarray(value) for key, value in fixture.items()}, str(FIXTURE))
        print(f"wrote {FIXTURE}")
    print(f"{len(table) - len(failed)} of {len(table)} comparisons passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
