"""MuQ's Mel-RVQ (models/mel_rvq.py) and its fitting (targets/rvq_fit.py, `musicssl rvq fit`).

Parity: MuQ's own ResidualVectorQuantize on the seeded cases of muq_cases.py, pinned in
fixtures/muq_rvq.safetensors by `make parity-muq PARITY_ARGS=--write-fixtures`. Against MuQ itself
(same CPU, same float32 operations, same shapes and layout) weights, codes, losses and gradients are
equal bit for bit, and `make parity-muq` asks for that. Here, on any CPU, the sums may be added in
another order, so a code must equal MuQ's wherever the best code leads the second by more than
rounding can move a distance (derived per token and stage below), and losses and gradients must be
within tests/numerics.py's `float64_calibrated` of MuQ's (against MuQ's float64 run).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

from musicssl.cli import main
from musicssl.config import ConfigError
from musicssl.data.manifest import build_manifest, read_manifest
from musicssl.models.mel_rvq import MelRVQ, MelRVQConfig, mel_rvq_config
from musicssl.synth.datasets import corpus
from musicssl.targets.rvq_fit import fit_mel_rvq, load_mel_rvq, resolve_fit_run
from tests.numerics import U32, float64_calibrated, gamma, matmul_bound
from tests.targets.muq_cases import CASES, STALE_TOLERANCE, case_input

FIXTURE = Path(__file__).parent / "fixtures" / "muq_rvq.safetensors"
WEIGHT_ULPS = 16  # torch's normal_ (Box-Muller through log and cos) differs by CPU kernel: 8.4 ulps of the max measured
FIT = ["fit.batch_size=4", "fit.stats_crops=4", "fit.log_every=10"]  # the tiny preset, smaller still


def case_model(case) -> MelRVQ:
    name, num_codebooks, codebook_size, code_dim, init_seed, *_ = case
    return MelRVQ(MelRVQConfig(num_codebooks=num_codebooks, codebook_size=codebook_size, code_dim=code_dim,
                               init_seed=init_seed, stale_tolerance=STALE_TOLERANCE, mel_mean=0.0, mel_std=1.0))


def clear_codes(model: MelRVQ, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Our eval-mode codes (B, S, T) and where rounding cannot decide them otherwise: per stage the
    projected vector z_e = W r + b is off by the sum bound, the weights' rounding (the weight norm's
    512-term sum and a few ulps) and the error carried in the residual r; that turns its direction by
    at most 2 |error| / |z_e|, and the expanded distance to a unit code adds gamma(E + 2) x 4. The
    carried bound holds while the token's earlier codes equal MuQ's (the caller checks that)."""
    model.eval()
    batch, dim, tokens = x.shape
    residual = x.detach()
    carried = np.zeros((batch * tokens, dim))  # bound on |our residual - MuQ's|, (N, D)
    codes, clear = [], []
    with torch.no_grad():
        for stage in model.quantizers:
            flat = residual.transpose(1, 2).reshape(-1, dim).double().numpy()  # (N, D)
            w_in = torch._weight_norm(stage.in_proj.weight_v, stage.in_proj.weight_g, 0)[:, :, 0].double().numpy()
            relative = gamma(dim + 2) + WEIGHT_ULPS * U32
            z_e = stage.in_proj(residual)  # (B, E, T)
            flat_z = z_e.transpose(1, 2).reshape(-1, z_e.shape[1]).double().numpy()
            error = (matmul_bound(flat, w_in.T) + relative * np.abs(flat) @ np.abs(w_in.T) + carried @ np.abs(w_in.T)
                     + U32 * np.abs(stage.in_proj.bias.double().numpy()))
            turn = 2 * np.linalg.norm(error, axis=1) / np.linalg.norm(flat_z, axis=1)
            reach = 2 * turn + 4 * gamma(flat_z.shape[1] + 2) + 2 * WEIGHT_ULPS * U32  # distance = 2 - 2 cos
            book = stage.codebook.weight.double().numpy()
            unit = flat_z / np.linalg.norm(flat_z, axis=1, keepdims=True)
            distance = 2 - 2 * unit @ (book / np.linalg.norm(book, axis=1, keepdims=True)).T  # (N, K)
            top2 = np.sort(distance, axis=1)[:, :2]
            clear.append((top2[:, 1] - top2[:, 0] > 2 * reach).reshape(batch, tokens))
            out = stage(residual)
            codes.append(out["codes"].numpy())
            w_out = torch._weight_norm(stage.out_proj.weight_v, stage.out_proj.weight_g, 0)[:, :, 0].double().numpy()
            q = book[out["codes"].reshape(-1).numpy()]  # (N, E)
            step = out["out"].transpose(1, 2).reshape(-1, dim).double().numpy()
            straight = 2 * U32 * (np.abs(flat_z) + np.abs(q))  # z_e + (z_q - z_e)
            carried = carried + (matmul_bound(q, w_out.T) + (relative * np.abs(q) + straight) @ np.abs(w_out.T)
                                 + U32 * (2 * np.abs(step) + np.abs(flat)))
            residual = residual - out["out"]
    return np.stack(codes, axis=1), np.stack(clear, axis=1)  # (B, S, T) each


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_weights_codes_losses_and_gradients_equal_muqs(case):
    reference = load_file(str(FIXTURE))
    name, *_, batch, tokens, input_seed = case
    model = case_model(case)
    for key, value in model.state_dict().items():
        if key.startswith("quantizers."):
            ours = value.numpy().reshape(-1)[reference[f"{name}/positions/{key}"]]
            theirs = reference[f"{name}/state/{key}"]
            assert np.abs(ours - theirs).max() <= WEIGHT_ULPS * U32 * np.abs(theirs).max(), key
    x = torch.from_numpy(case_input(batch, tokens, input_seed))
    codes, clear = clear_codes(model, x)
    theirs = reference[f"{name}/eval_codes"].astype(np.int64)
    same = codes == theirs  # (B, S, T)
    earlier_same = np.cumprod(np.concatenate([np.ones_like(same[:, :1]), same[:, :-1]], axis=1), axis=1).astype(bool)
    comparable = clear & earlier_same
    # The bound is a worst case, and later stages quantise smaller residuals with more carried error:
    # measured 93 % of the first stage's codes clear and 61 % of the eighth's (base case).
    assert comparable[:, 0].mean() > 0.9 and comparable.mean() > 0.6, comparable.mean(axis=(0, 2))
    assert same[comparable].all(), f"{(~same[comparable]).sum()} clear codes differ from MuQ's"
    assert len(np.unique(theirs)) > 100  # many codes, not a few
    model.train()
    out = model(x)
    losses = model.loss(x, out)
    assert np.array_equal(out["codes"].numpy(), reference[f"{name}/train_codes"])  # no replacement in one call
    for label in ("loss", "commitment_loss", "codebook_loss", "reconstruction_loss"):
        error, tolerance = float64_calibrated(losses[label], torch.from_numpy(reference[f"{name}/{label}"])[0],
                                              torch.from_numpy(reference[f"{name}/{label}_f64"])[0])
        assert error <= tolerance, (label, error, tolerance)
    losses["loss"].backward()
    for key, parameter in model.named_parameters():
        positions = reference[f"{name}/positions/{key}"]
        error, tolerance = float64_calibrated(parameter.grad.reshape(-1)[positions],
                                              torch.from_numpy(reference[f"{name}/grad/{key}"]),
                                              torch.from_numpy(reference[f"{name}/grad_f64/{key}"]))
        assert error <= tolerance, (key, error, tolerance)


def test_a_seed_gives_muqs_initialisation_and_the_global_generator_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, second = MelRVQ(mel_rvq_config("tiny")), MelRVQ(mel_rvq_config("tiny"))
    assert torch.equal(torch.rand(3), expected)  # the weights come from the model's own generator
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b) or key == "mel_statistics"  # NaN until measured
    stage = first.quantizers[0]
    weight = torch._weight_norm(stage.in_proj.weight_v, stage.in_proj.weight_g, 0)
    assert torch.allclose(weight, stage.in_proj.weight_v, rtol=1e-6)  # weight norm starts as the identity
    assert abs(float(stage.codebook.weight.detach().std()) - 1.0) < 0.05  # N(0, 1) codes


def test_tokens_ignore_padding_and_autocast():
    model = MelRVQ(mel_rvq_config("tiny", mel_mean=-20.0, mel_std=20.0))
    rng = np.random.default_rng(0)
    wav = torch.from_numpy(rng.standard_normal((3, 24_000)).astype(np.float32)) * 0.1
    lengths = torch.tensor([24_000, 15_000, 500])
    tokens = model.tokens(wav, lengths)  # (B, 25, S)
    assert tokens.shape == (3, 25, 4) and tokens.dtype == torch.long
    alone = model.tokens(wav[1:2, :15_000])
    assert torch.equal(tokens[1, :15], alone[0]) and (tokens[1, 15:] == -1).all()
    assert (tokens[2] == -1).all()  # shorter than one 960-sample token
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.tokens(wav, lengths), tokens)
    assert model.training  # tokens() leaves the mode as it found it
    features = model.features(wav[:1])  # (1, 512, 25): 4 frames of 128 bands side by side, frame-major
    mel = (model.log_mel(wav[:1]) - (-20.0)) / 20.0
    assert features.shape == (1, 512, 25) and torch.equal(features[0, 128:256, 3], mel[0, 13])


# ---------------------------------------------------------------------------------------------
# fitting


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """A 24 kHz manifest of four generated 2.5-3 s clips (songs, a lone melody, note runs)."""
    root = tmp_path_factory.mktemp("rvq_music")
    (root / "audio").mkdir()
    for example in corpus(4, seed=0, seconds=(2.5, 3.0)):
        sf.write(root / "audio" / f"{example.name}.wav", example.audio, example.sample_rate)
    build_manifest(root / "audio", root / "data", sample_rate=24_000, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def fitted(music) -> tuple[Path, list[str]]:
    lines: list[str] = []
    out = fit_mel_rvq(music / "data", music / "rvq", resolve_fit_run("tiny", steps=40, seed=1, overrides=FIT),
                      say=lines.append)
    return out, lines


def held_out_reconstruction(model: MelRVQ, wav: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        x = model.features(wav)
        return float(model.loss(x, model(x))["reconstruction_loss"])


def test_fitting_reduces_the_reconstruction_error_of_music(music, fitted):
    out, lines = fitted
    model = load_mel_rvq(out, sample_rate=24_000)
    manifest = read_manifest(music / "data" / "train.tsv")
    wav = torch.stack([torch.from_numpy(sf.read(manifest.path(i), dtype="float32")[0][:16_000]) for i in range(4)])
    initial = MelRVQ(model.config)  # the same statistics and init_seed: the weights the fit started from
    before, after = held_out_reconstruction(initial, wav), held_out_reconstruction(model, wav)
    assert after < 0.8 * before, (before, after)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [10, 20, 30, 40]
    assert log[-1]["reconstruction_loss"] < log[0]["reconstruction_loss"]
    assert sum("mel statistics" in line for line in lines) == 1 and not any("warning" in line for line in lines)


def test_the_directory_records_what_made_it_and_round_trips(music, fitted):
    out, _ = fitted
    values = json.loads((out / "config.json").read_text())
    manifest = read_manifest(music / "data" / "train.tsv")
    provenance = values["provenance"]
    assert provenance["manifest_fingerprint"] == manifest.fingerprint and provenance["steps"] == 40
    assert provenance["seed"] == 1 and values["model"]["init_seed"] == 1
    assert len(provenance["code_usage"]) == 4 and provenance["final_losses"]["loss"] > 0
    assert values["model"]["mel_std"] > 1.0  # dB spread of music
    model = load_mel_rvq(out)
    copy = MelRVQ(model.config)
    copy.load_state_dict(model.state_dict())
    wav = torch.randn(2, 9_600) * 0.1
    assert torch.equal(copy.tokens(wav), model.tokens(wav)) and not model.training
    assert not list(music.glob(".rvq*"))  # no temporary sibling left


def _refusal(directory: Path) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        load_mel_rvq(directory, sample_rate=24_000)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_missing_truncated_or_foreign_file_is_refused_naming_it(fitted, tmp_path):
    out, _ = fitted
    cases = {name: shutil.copytree(out, tmp_path / name) for name in
             ("missing", "truncated", "pickle", "foreign_weights", "foreign_config", "rate")}
    (cases["missing"] / "model.safetensors").unlink()
    assert "model.safetensors" in _refusal(cases["missing"])
    weights = cases["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert str(weights) in _refusal(cases["truncated"])
    marker = tmp_path / "unpickled"
    with open(cases["pickle"] / "model.safetensors", "wb") as handle:  # a pickle that would touch a file
        pickle.dump(_Touch(str(marker)), handle)
    assert "model.safetensors" in _refusal(cases["pickle"]) and not marker.exists()
    save_file({"weight": torch.zeros(3)}, str(cases["foreign_weights"] / "model.safetensors"))
    assert "not this Mel-RVQ's weights" in _refusal(cases["foreign_weights"])
    (cases["foreign_config"] / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(ConfigError, match="config.json: not a Mel-RVQ config"):
        load_mel_rvq(cases["foreign_config"])
    values = json.loads((cases["rate"] / "config.json").read_text())
    with pytest.raises(ConfigError, match="fitted on 24000 Hz audio, this model reads 16000 Hz"):
        load_mel_rvq(cases["rate"], sample_rate=16_000)
    values["model"]["mel_std"] = 2.0
    (cases["rate"] / "config.json").write_text(json.dumps(values))
    assert "mel statistics" in _refusal(cases["rate"])


class _Touch:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_silence_collapses_every_codebook_and_says_so_in_one_line(tmp_path):
    (tmp_path / "audio").mkdir()
    for index in range(2):
        sf.write(tmp_path / "audio" / f"silence_{index}.wav", np.zeros(36_000, dtype=np.float32), 24_000)
    build_manifest(tmp_path / "audio", tmp_path / "data", sample_rate=24_000, workers=1, progress=False)
    lines: list[str] = []
    out = fit_mel_rvq(tmp_path / "data", tmp_path / "rvq", resolve_fit_run("tiny", steps=10, overrides=FIT),
                      say=lines.append)
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and "codebook(s) 1, 2, 3, 4" in warnings[0] and "silence" in warnings[0]
    values = json.loads((out / "config.json").read_text())
    assert values["model"]["mel_std"] == 1e-3  # the floor: no spread
    assert values["provenance"]["collapsed_codebooks"] == [1, 2, 3, 4]
    assert all(usage["top_share"] == 1.0 for usage in values["provenance"]["code_usage"])


def test_cli_fits_and_refuses_a_16_khz_manifest_in_one_line(music, tmp_path, capsys):
    msd = ["model.mel_mean=6.768444971712967", "model.mel_std=18.417922652295623"]  # MuQ's: no measurement
    argv = ["rvq", "fit", "--data", str(music / "data"), "-o", str(tmp_path / "rvq"), "--preset", "tiny",
            "--steps", "2", "--seed", "4", *[arg for item in FIT + msd for arg in ("--set", item)]]
    assert main(argv) == 0 and load_mel_rvq(tmp_path / "rvq").config.mel_std == 18.417922652295623
    assert "statistics as given" in capsys.readouterr().err
    build_manifest(music / "audio", tmp_path / "data16", sample_rate=16_000, workers=1, progress=False)
    capsys.readouterr()
    argv[argv.index("--data") + 1] = str(tmp_path / "data16")
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "train.tsv" in error[0] and "--sample-rate 24000" in error[0]
    assert main(argv[:-10] + ["--preset", "huge"]) == 2
    assert "unknown rvq fit preset 'huge'" in capsys.readouterr().err
