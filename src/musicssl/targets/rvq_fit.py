"""`musicssl rvq fit`: train MuQ's Mel-RVQ on a corpus, write it as a directory, load it back.

    manifest (24 kHz rows) ─> dB-mel mean / std of `stats_crops` crops
        ─> N Adam steps on batches of random crops: loss = 0.25 commitment + 1.0 codebook + L1
        ─> RVQ_DIR/config.json (the Mel-RVQ config with its statistics, the fit, provenance)
           RVQ_DIR/model.safetensors (weights, stale counters, the statistics again)
           RVQ_DIR/log.jsonl (losses, codebook usage and perplexity per log window)

The recipe is MuQ's RVQ fitting script, `src/recipes/pretrain/rvq_trainer.py` (docs/method.md §9.4):
5 s crops at 24 kHz, batches of 32, Adam at 1e-4 with torch's defaults otherwise, MuQ's loss, the
stages in training mode (stale-code replacement on), 4,000 updates. The directory appears whole or
not at all (musicssl.atomic).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicssl.atomic import atomic_path
from musicssl.config import ConfigError, Registry, apply_overrides, from_dict, read_json, to_dict
from musicssl.data.manifest import check_sample_rate, read_manifest
from musicssl.data.pretrain import PretrainDataset, collate
from musicssl.models.bestrq import code_statistics
from musicssl.models.mel_rvq import FORMAT, MEL_RVQ_PRESETS, MelRVQ, MelRVQConfig

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RVQFitConfig:
    crop_seconds: float = 5.0  # MuQ's CLIPSECS "5 for rvq"
    min_seconds: float = 1.0  # shorter files are skipped (MuQ pads them with zeros) [ours]
    batch_size: int = 32  # MuQ's batch_size
    # The checkpoint MuQ trains with is RVQ_4000.pth (its pre-training config), saved at update 4,000
    # of a script whose max_updates (500,000) is only an upper bound.
    steps: int = 4_000
    learning_rate: float = 1e-4  # MuQ's lr; torch.optim.Adam's defaults otherwise, no schedule
    # Crops measured for the mel statistics (as `pretrain bestrq`). MuQ normalises with its MSD values
    # whatever the corpus; set model.mel_mean / model.mel_std to skip the measurement.
    stats_crops: int = 64
    seed: int = 0  # crops, their order and the replacement draws; the weights: model.init_seed
    log_every: int = 10  # MuQ's valid_interval: it logs the mean of every 10 updates
    # One warning line when a codebook puts more than this share of a log window's frames on one code.
    collapse_share: float = 0.9

    def __post_init__(self) -> None:
        if self.crop_seconds <= 0 or self.min_seconds < 0 or self.learning_rate <= 0:
            raise ValueError("fit.crop_seconds and fit.learning_rate must be > 0, fit.min_seconds >= 0")
        if min(self.batch_size, self.steps, self.stats_crops, self.log_every) < 1:
            raise ValueError("fit.batch_size, fit.steps, fit.stats_crops and fit.log_every must be >= 1")


@dataclass(frozen=True)
class RVQFitRun:
    model: MelRVQConfig = field(default_factory=MelRVQConfig)
    fit: RVQFitConfig = field(default_factory=RVQFitConfig)


RVQ_FIT_PRESETS: Registry[RVQFitRun] = Registry("rvq fit preset", {
    "base": RVQFitRun(MEL_RVQ_PRESETS["base"], RVQFitConfig()),
    # Seconds on one CPU thread: 2 s crops, 8 per batch, 150 steps at 1e-3 (MuQ's 1e-4 barely moves
    # the codes in 150 steps) [ours].
    "tiny": RVQFitRun(MEL_RVQ_PRESETS["tiny"], RVQFitConfig(crop_seconds=2.0, batch_size=8, steps=150,
                                                            learning_rate=1e-3, stats_crops=16)),
    # MuQ's fitting recipe on MERT's 75 Hz grid (the codes `labels rvq` writes for `pretrain mert`).
    "mert75": RVQFitRun(MEL_RVQ_PRESETS["mert75"], RVQFitConfig()),
})


def resolve_fit_run(preset: str, steps: int | None = None, seed: int | None = None,
                    overrides: list[str] | tuple[str, ...] = ()) -> RVQFitRun:
    """The preset, `--set model.x=... / fit.x=...` applied, then --steps and --seed (the seed sets the
    data order and the initial weights alike)."""
    run = apply_overrides(RVQ_FIT_PRESETS[preset], list(overrides))
    if steps is not None:
        run = dataclasses.replace(run, fit=dataclasses.replace(run.fit, steps=steps))
    if seed is not None:
        run = RVQFitRun(dataclasses.replace(run.model, init_seed=seed), dataclasses.replace(run.fit, seed=seed))
    return run


# ---------------------------------------------------------------------------------------------
# the corpus


def crop_batches(dataset: PretrainDataset, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """(B, n) crops forever: rows in the order of `default_rng([seed, epoch])` permutations, one
    crop per (epoch, row) as pre-training draws it, each batch cut to its shortest crop. A corpus of
    fewer rows than a batch fills it from the next epochs (other crops). Bad files are dropped; 100
    batches in a row with nothing readable is an error naming the corpus."""
    def keys() -> Iterator[tuple[int, int]]:
        epoch = 0
        while True:
            for row in np.random.default_rng([seed, epoch]).permutation(len(dataset)).tolist():
                yield epoch, row
            epoch += 1

    stream, empty = keys(), 0
    while True:
        batch = collate([dataset[next(stream)] for _ in range(batch_size)])
        if batch is None:
            empty += 1
            if empty >= 100:
                raise ValueError(f"{dataset.manifest.root}: 100 batches in a row held no readable crop")
            continue
        empty = 0
        yield batch.wav


def measure_mel_statistics(dataset: PretrainDataset, model: MelRVQ, crops: int, seed: int) -> tuple[float, float]:
    """The dB-mel's global mean and std (MuQ's stat dict) over every frame and band of `crops` crops
    of rows drawn with `seed` (float64 sums, epoch 0). Silence has no spread: the std is floored at
    1e-3 dB so the features stay finite (the codes then collapse, and the fit says so)."""
    rows = np.random.default_rng([seed, 142]).permutation(len(dataset))[:crops]
    count, total, squares = 0, 0.0, 0.0
    for row in rows.tolist():
        item = dataset[(0, row)]
        if item is None or len(item["wav"]) <= model.config.n_fft // 2:
            continue
        with torch.no_grad():
            mel = model.log_mel(item["wav"][None]).double()  # (1, T, M)
        count, total, squares = count + mel.numel(), total + float(mel.sum()), squares + float(mel.pow(2).sum())
    if count == 0:
        raise ValueError(f"{dataset.manifest.root}: none of {len(rows)} crops read for the mel statistics was readable")
    mean = total / count
    return mean, max(math.sqrt(max(squares / count - mean * mean, 0.0)), 1e-3)


# ---------------------------------------------------------------------------------------------
# fitting


def fit_mel_rvq(data: str | Path, out: str | Path, run: RVQFitRun, device: str = "cpu",
                say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Measure the statistics on DATA/train.tsv, train `run.fit.steps` steps, write OUT atomically."""
    source = Path(data) / "train.tsv"
    manifest = read_manifest(source)
    if len(manifest) == 0:
        raise ValueError(f"{source}: the manifest has no rows")
    config, fit = run.model, run.fit
    check_sample_rate(source, config.sample_rate, manifest)
    crop = round(fit.crop_seconds * config.sample_rate)
    # one token at least, and more samples than the STFT's reflect padding needs
    shortest = max(round(fit.min_seconds * config.sample_rate), config.token_hop, config.n_fft // 2 + 1)
    if crop < shortest:
        raise ValueError(f"fit.crop_seconds={fit.crop_seconds:g} is shorter than fit.min_seconds or one token")
    if max(count for _, count in manifest.items) < shortest:
        raise ValueError(f"{source}: no file holds fit.min_seconds={fit.min_seconds:g} s (and one token) of audio")
    dataset = PretrainDataset(manifest, config.sample_rate, crop, shortest, fit.seed)
    if config.mel_mean is None:
        mean, std = measure_mel_statistics(dataset, MelRVQ(config), fit.stats_crops, fit.seed)
        say(f"rvq fit: mel statistics of {fit.stats_crops} crops: mean {mean:.3f} dB, std {std:.3f} dB")
        config = dataclasses.replace(config, mel_mean=mean, mel_std=std)
    else:
        say(f"rvq fit: mel statistics as given: mean {config.mel_mean:.3f} dB, std {config.mel_std:.3f} dB")
    model = MelRVQ(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=fit.learning_rate)
    generator = torch.Generator().manual_seed(fit.seed)  # the stale-code draws (MuQ: the global generator)
    batches = crop_batches(dataset, fit.batch_size, fit.seed)
    records: list[dict] = []
    window = _Window(config)
    for step in range(1, fit.steps + 1):
        x = model.features(next(batches).to(device))  # (B, 512, T)
        result = model(x, generator)
        losses = model.loss(x, result)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        window.add(losses, result)
        if step % fit.log_every == 0 or step == fit.steps:
            records.append(window.record(step))
            say(_line(records[-1], fit.steps))
            window = _Window(config)
    # Judged on the last window only: a fresh quantiser crowds its first batches onto a few codes
    # until the stale ones are replaced.
    collapsed = [index + 1 for index, usage in enumerate(records[-1]["codebooks"])
                 if usage["top_share"] > fit.collapse_share]
    if collapsed:
        say(f"rvq fit: warning: codebook(s) {', '.join(map(str, collapsed))} put more than {fit.collapse_share:.0%} "
            "of the last frames on one code (silence-only or constant audio?): their tokens carry almost no "
            "information")
    provenance = {"manifest": str(source.resolve()), "manifest_fingerprint": manifest.fingerprint,
                  "manifest_rows": len(manifest), "steps": fit.steps, "seed": fit.seed,
                  "final_losses": {key: records[-1][key] for key in _Window.LOSSES},
                  "code_usage": records[-1]["codebooks"], "collapsed_codebooks": collapsed}
    return save_mel_rvq(model.cpu(), out, run.fit, provenance, records)


class _Window:
    """Sums over one log window: losses, replaced codes, code counts per codebook."""

    LOSSES = ("loss", "commitment_loss", "codebook_loss", "reconstruction_loss")

    def __init__(self, config: MelRVQConfig):
        self.steps, self.replaced = 0, 0
        self.sums = dict.fromkeys(self.LOSSES, 0.0)
        self.counts = torch.zeros(config.num_codebooks, config.codebook_size, dtype=torch.long)

    def add(self, losses: dict, out: dict) -> None:
        self.steps += 1
        for key in self.LOSSES:
            self.sums[key] += float(losses[key].detach())
        self.replaced += int(out["replaced"].sum())
        codes = out["codes"].detach().cpu()  # (B, S, T)
        for index in range(self.counts.shape[0]):
            self.counts[index] += torch.bincount(codes[:, index].reshape(-1), minlength=self.counts.shape[1])

    def record(self, step: int) -> dict:
        return {"step": step, **{key: value / self.steps for key, value in self.sums.items()},
                "replaced_codes": self.replaced, "codebooks": [code_statistics(row) for row in self.counts]}


def _line(record: dict, steps: int) -> str:
    perplexities = "/".join(f"{usage['perplexity']:.0f}" for usage in record["codebooks"])
    return (f"rvq fit: step {record['step']}/{steps} loss {record['loss']:.4f} (commitment "
            f"{record['commitment_loss']:.4f}, codebook {record['codebook_loss']:.4f}, L1 "
            f"{record['reconstruction_loss']:.4f}) code perplexity {perplexities}, {record['replaced_codes']} replaced")


# ---------------------------------------------------------------------------------------------
# the directory


def save_mel_rvq(model: MelRVQ, out: str | Path, fit: RVQFitConfig, provenance: dict,
                 records: list[dict] = ()) -> Path:
    """OUT/config.json + model.safetensors (+ log.jsonl), written into a temporary sibling and renamed."""
    values = {"format": FORMAT, "version": FORMAT_VERSION, "model": to_dict(model.config), "fit": to_dict(fit),
              "provenance": provenance}
    with atomic_path(out) as partial:
        partial.mkdir(parents=True)
        save_file({key: value.contiguous() for key, value in model.state_dict().items()},
                  str(partial / "model.safetensors"), metadata={"format": FORMAT})
        (partial / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
        (partial / "config.json").write_text(json.dumps(values, indent=2) + "\n")
    return Path(out)


def load_mel_rvq(directory: str | Path, sample_rate: int | None = None) -> MelRVQ:
    """The Mel-RVQ of a `musicssl rvq fit` directory, in eval mode. A missing, damaged or foreign
    config.json or model.safetensors is one error naming the file; nothing is unpickled. With
    `sample_rate`, a tokenizer fitted at another rate is refused."""
    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; a Mel-RVQ directory is made by `musicssl rvq fit`")
    values = read_json(config_path)
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        found = values.get("format") if isinstance(values, dict) else type(values).__name__
        raise ConfigError(f"{config_path}: not a Mel-RVQ config (format {found!r}, expected {FORMAT!r})")
    if values.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{config_path}: Mel-RVQ format version {values.get('version')!r}; this musicssl reads "
                          f"{FORMAT_VERSION}")
    try:
        config = from_dict(MelRVQConfig, values["model"], "model.")
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{config_path}: bad Mel-RVQ model config ({' '.join(str(error).split())})") from None
    if config.mel_mean is None:
        raise ConfigError(f"{config_path}: model.mel_mean / mel_std are missing")
    if sample_rate is not None and config.sample_rate != sample_rate:
        raise ConfigError(f"{config_path}: the Mel-RVQ was fitted on {config.sample_rate} Hz audio, this model reads "
                          f"{sample_rate} Hz; fit one at {sample_rate} Hz")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({' '.join(str(error).split())})") from None
    model = MelRVQ(config)
    _check_state(weights_path, state, model.state_dict())
    if not torch.equal(state["mel_statistics"], model.mel_statistics):
        raise ValueError(f"{weights_path}: mel statistics {state['mel_statistics'].tolist()} differ from "
                         f"{config_path}'s ({config.mel_mean}, {config.mel_std})")
    model.load_state_dict(state)
    return model.eval()


def _check_state(path: Path, state: dict, expected: dict) -> None:
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: not this Mel-RVQ's weights ({len(missing)} missing, e.g. {missing[:2]}; "
                         f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    for key, value in expected.items():
        if state[key].shape != value.shape or state[key].dtype != value.dtype:
            raise ValueError(f"{path}: {key} is {tuple(state[key].shape)} {state[key].dtype}, expected "
                             f"{tuple(value.shape)} {value.dtype}")
