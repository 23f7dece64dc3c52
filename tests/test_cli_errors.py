"""The CLI's error policy, as a property (issue 26): for random bad arguments and damaged files
fed to every subcommand, `musicssl` exits 2 with exactly one line on stderr that names the bad
input, shows no traceback, and leaves every file it was given (and any output) as it was.

One valid fixture set is built per module (1-s tones, a manifest, MFCC labels, a micro model,
a tiny fairseq checkpoint, a small NSynth layout); each example copies it into a fresh folder,
damages one input or one argument, runs `cli.main` in-process and compares the folder's hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicssl.cli import main
from musicssl.interop.huggingface import export_pretrained
from tests.conftest import micro_backbone, tone
from tests.evaluate.test_tasks_cli import nsynth_examples

FAIRSEQ_CHECKPOINT = Path(__file__).parent / "interop" / "fixtures" / "hubert_tiny.pt"


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `musicssl ARGV`, in-process; argparse's exit comes as SystemExit."""
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, stderr.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root -> its sha1 (empty folders do not count: mkdir of an output is harmless)."""
    return {str(path.relative_to(root)): hashlib.sha1(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module", autouse=True)
def no_progress_bars():
    # Progress bars share stderr with the error line; a user error is refused before any work, but
    # the bars of the fixture's own runs and of a slow refusal would be counted as lines.
    import tqdm.std

    shown = tqdm.std.tqdm.__init__

    def hidden(self, *args, **kwargs):
        shown(self, *args, **{**kwargs, "disable": True})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tqdm.std.tqdm, "__init__", hidden)
        yield


@pytest.fixture(scope="module")
def valid(tmp_path_factory, no_progress_bars) -> Path:
    root = tmp_path_factory.mktemp("valid")
    (root / "audio").mkdir()
    for index in range(4):  # a low then a high half: every file holds both k=2 clusters
        halves = [tone(0.5, frequency=110.0 * (index + 1), seed=index), 0.1 * tone(0.5, frequency=3000.0, seed=index)]
        sf.write(str(root / "audio" / f"tone{index}.wav"), np.concatenate(halves), 16_000)
    assert run_cli(["manifest", str(root / "audio"), "-o", str(root / "manifest"), "--valid-percent", "50",
                    "--workers", "1"]) == (0, "")
    code, stderr = run_cli(["labels", "mfcc", "--data", str(root / "manifest"), "--out", str(root / "labels"),
                            "--k", "2", "--fit-fraction", "1"])
    assert code == 0, stderr
    export_pretrained(micro_backbone("hubert"), root / "model")
    shutil.copy(FAIRSEQ_CHECKPOINT, root / "checkpoint.pt")
    importlib.import_module("musicssl.evaluate.tasks.nsynth").write_layout(root / "data" / "NSynth", nsynth_examples())
    return root


# ---------------------------------------------------------------------------------------------
# damage: what happens to one input file


def damage(path: Path, kind: str, data: st.DataObject) -> None:
    original = path.read_bytes() if path.is_file() else b""
    if kind == "truncated":
        # Cut before the last non-blank byte: dropping a trailing newline damages nothing. A line file
        # (manifest, labels) loses at least half and is cut inside a line: fewer whole rows is a valid
        # shorter manifest, and a label row one id short is within the frame tolerance.
        lines = path.suffix in (".tsv", ".km")
        end = len(original) // 2 if lines else len(original.rstrip()) - 1
        keep = data.draw(st.integers(0, max(0, end)).filter(
            lambda cut: not (lines and cut > 0 and original[cut - 1:cut] == b"\n")), label="kept bytes")
        path.write_bytes(original[:keep])
    elif kind == "random":
        path.write_bytes(data.draw(st.binary(min_size=1, max_size=300), label="bytes"))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        # "#" first: never valid JSON, a manifest root or a label line, whatever text follows
        path.write_text("#" + data.draw(st.text(max_size=50), label="text"), encoding="utf-8")
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "missing":
        path.unlink()


FILE_DAMAGE = st.sampled_from(["truncated", "random", "empty", "text", "directory", "missing"])
BAD_NUMBERS = st.sampled_from(["-1", "0", "nan", "inf", "-inf", "1e400", "x"])
UNKNOWN_NAMES = st.sampled_from(["nope", "BASE", "tiny2", "", "../x"])
BAD_DEVICES = st.sampled_from(["tpu", "cuda:x", "gpu", "cuda:-1", "mps:0", "CPU1"])


# ---------------------------------------------------------------------------------------------
# cases: each returns (argv, strings of which the error line must contain one)


def _extract(w: Path) -> list[str]:
    return ["extract", str(w / "model"), str(w / "audio"), "-o", str(w / "out" / "features.npz")]


def _labels(w: Path, kind: str) -> list[str]:
    head = ["labels", kind] + (["--model", str(w / "model"), "--layer", "1"] if kind == "layer" else [])
    return head + ["--data", str(w / "manifest"), "--out", str(w / "out" / "labels"), "--k", "2"]


def _pretrain(w: Path, method: str) -> list[str]:
    labels = ["--labels", str(w / "labels")] if method == "musichubert" else []
    return ["pretrain", method, "--preset", "tiny", "--data", str(w / "manifest"), *labels,
            "--out", str(w / "out" / "run"), "--quiet", *[f"--set={key}=0.5" for key in ("data.crop_seconds",
            "data.min_seconds", "data.batch_seconds", "data.micro_batch_seconds")], "--set=trainer.max_steps=1", "--set=data.num_workers=0"]


def _probe(w: Path) -> list[str]:
    return ["probe", str(w / "model"), "--task", "nsynth_pitch", "--data", str(w / "data" / "NSynth"),
            "-o", str(w / "out" / "probe"), "--quiet", "--max-epochs", "1"]


def _benchmark(w: Path) -> list[str]:
    return ["benchmark", str(w / "model"), "--tasks", "nsynth_pitch", "--data-root", str(w / "data"),
            "-o", str(w / "out" / "bench"), "--quiet", "--max-epochs", "1"]


COMMANDS = {
    "extract": _extract,
    "labels mfcc": lambda w: _labels(w, "mfcc"), "labels pitch": lambda w: _labels(w, "pitch"),
    "labels layer": lambda w: _labels(w, "layer"),
    "pretrain musichubert": lambda w: _pretrain(w, "musichubert"),
    "pretrain music2vec": lambda w: _pretrain(w, "music2vec"),
    "pretrain bestrq": lambda w: _pretrain(w, "bestrq"),
    "probe": _probe, "benchmark": _benchmark,
    "convert fairseq": lambda w: ["convert", "fairseq", str(w / "checkpoint.pt"), str(w / "out" / "converted")],
    "manifest": lambda w: ["manifest", str(w / "audio"), "-o", str(w / "out" / "manifest")],
    "synth": lambda w: ["synth", str(w / "out" / "synth")],
    # (the fixture's manifest counts 16 kHz samples: a valid run needs one at 24 kHz, see
    # tests/targets/test_mel_rvq.py; every damage here is still refused by name, before any output)
    "rvq fit": lambda w: ["rvq", "fit", "--data", str(w / "manifest"), "-o", str(w / "out" / "rvq"),
                          "--preset", "tiny", "--steps", "1"],
}
# The files each command reads, which a damaged copy must be refused by name.
DAMAGEABLE = {
    "extract": ["model/config.json", "model/model.safetensors", "model/preprocessor_config.json"],
    "labels mfcc": ["manifest/train.tsv", "manifest/valid.tsv"],  # valid.tsv: refused before the fit
    "labels pitch": ["manifest/train.tsv"],
    "labels layer": ["model/config.json", "model/model.safetensors", "manifest/train.tsv"],
    "pretrain musichubert": ["manifest/train.tsv", "labels/train.km", "labels/labels.json"],
    "pretrain music2vec": ["manifest/train.tsv"],
    "pretrain bestrq": ["manifest/train.tsv"],
    "probe": ["model/config.json", "model/model.safetensors", "data/NSynth/nsynth-train/examples.json"],
    "benchmark": ["model/config.json", "model/model.safetensors"],
    "convert fairseq": ["checkpoint.pt"],
    "rvq fit": ["manifest/train.tsv"],
}
# Options each command takes, with what kind of value: a bad one must be refused by name.
NUMERIC_OPTIONS = {
    "extract": ["--chunk-seconds", "--context-seconds"],
    "labels mfcc": ["--k", "--fit-fraction", "--max-frames", "--num-shards"],
    "labels layer": ["--layer", "--k"],
    "probe": ["--seeds", "--batch-size", "--max-epochs", "--lrs", "--num-shards"],
    "benchmark": ["--seeds", "--batch-size"],
    "manifest": ["--valid-percent", "--sample-rate", "--min-seconds", "--workers"],
    "rvq fit": ["--steps", "--seed"],
}
ZERO_IS_VALID = {"--context-seconds", "--layer", "--valid-percent", "--min-seconds", "--seed"}  # layer 0: the Transformer input
NAME_OPTIONS = {
    "pretrain musichubert": ["--preset"], "pretrain music2vec": ["--preset", "--variant"],
    "pretrain bestrq": ["--preset"],
    "probe": ["--task"], "benchmark": ["--tasks"], "synth": ["--preset"], "rvq fit": ["--preset"],
}
DEVICE_COMMANDS = ["extract", "labels mfcc", "labels layer", "probe", "benchmark", "rvq fit"]


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with `flag value` set (replacing it if present); `--flag=value` so '-1' is not an option."""
    if flag in argv:
        index = argv.index(flag)
        argv = argv[:index] + argv[index + 2:]
    return argv + [f"{flag}={value}"]


@st.composite
def bad_invocations(draw, workdir: Path):
    """(argv, the strings of which the error line must name one)."""
    data = draw(st.data())
    kind = draw(st.sampled_from(["file", "number", "name", "device"]))
    if kind == "file":
        command = draw(st.sampled_from(sorted(DAMAGEABLE)))
        relative = draw(st.sampled_from(DAMAGEABLE[command]))
        names = [str(workdir / relative), Path(relative).name]
        if relative.startswith("manifest/"):  # a truncated row's count is refused naming the audio file it lists
            # ... or, for pretrain musichubert, the label file that no longer matches "the manifest"
            names += [(workdir / relative).read_text().splitlines()[0], "the manifest"]
        # Not damage: an absent preprocessor config (the model type's default, logged) and a valid.tsv
        # cut to one line (an empty split, as --valid-percent 0 writes; random bytes are one line too).
        allowed = {"preprocessor_config.json": {"missing"}, "valid.tsv": {"truncated", "random", "text"}}
        harmless = allowed.get(Path(relative).name, set())
        damage(workdir / relative, draw(FILE_DAMAGE.filter(lambda kind: kind not in harmless)), data)
        return COMMANDS[command](workdir), names
    if kind == "number":
        command = draw(st.sampled_from(sorted(NUMERIC_OPTIONS)))
        flag, value = draw(st.sampled_from(NUMERIC_OPTIONS[command])), draw(BAD_NUMBERS)
        if value == "0" and flag in ZERO_IS_VALID:
            value = "-1"
        return with_option(COMMANDS[command](workdir), flag, value), [flag, value]
    if kind == "name":
        command = draw(st.sampled_from(sorted(NAME_OPTIONS)))
        flag, value = draw(st.sampled_from(NAME_OPTIONS[command])), draw(UNKNOWN_NAMES)
        return with_option(COMMANDS[command](workdir), flag, value), [flag, repr(value), f"{value!r}"[1:-1] or "''"]
    command = draw(st.sampled_from(DEVICE_COMMANDS))
    value = draw(BAD_DEVICES)
    return with_option(COMMANDS[command](workdir), "--device", value), ["--device", value]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_user_error_is_one_line_naming_the_input_and_exit_2(valid, data):
    with tempfile.TemporaryDirectory() as name:
        workdir = Path(name)
        for entry in valid.iterdir():
            (shutil.copytree if entry.is_dir() else shutil.copy)(entry, workdir / entry.name)
        argv, names = data.draw(bad_invocations(workdir), label="invocation")
        before = snapshot(workdir)
        code, stderr = run_cli(argv)
        lines = stderr.splitlines()
        assert code == 2, (argv, stderr)
        assert len(lines) == 1, (argv, stderr)
        assert lines[0].startswith("musicssl ") and "Traceback" not in stderr, (argv, stderr)
        assert any(name in lines[0] for name in names), (argv, lines[0], names)
        assert snapshot(workdir) == before, argv


def test_a_bug_keeps_its_traceback(valid, monkeypatch):
    # An unexpected exception type is not a user error: main lets it through, traceback and all.
    monkeypatch.setattr("musicssl.interop.fairseq.convert_fairseq",
                        lambda *args: (_ for _ in ()).throw(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(["convert", "fairseq", str(valid / "checkpoint.pt"), str(valid / "never")])


def test_keyboard_interrupt_is_one_line_and_exit_130(valid, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr("musicssl.interop.fairseq.convert_fairseq", interrupted)
    code, stderr = run_cli(["convert", "fairseq", str(valid / "checkpoint.pt"), str(valid / "never")])
    assert (code, stderr) == (130, "musicssl convert: interrupted\n")


def test_cuda_without_cuda_names_the_torch_build(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, stderr = run_cli(["extract", "m", "a.wav", "-o", "x.npz", "--device", "cuda"])
    assert code == 2 and stderr.count("\n") == 1
    assert "CUDA is not available" in stderr and torch.__version__ in stderr and "--device" in stderr


@pytest.mark.parametrize("text, expected", [("cpu", "cpu"), ("CPU", "cpu"), (" cpu ", "cpu")])
def test_cpu_is_always_a_device(text, expected):
    from musicssl.errors import device_argument

    assert device_argument(text) == expected


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "cuda:-1", "mps:0", "gpu", ""])
def test_unknown_device_names_are_refused_at_parse_time(text):
    import argparse

    from musicssl.errors import device_argument

    with pytest.raises(argparse.ArgumentTypeError, match="expected cpu, cuda, cuda:N or mps"):
        device_argument(text)


def test_one_line_names_an_os_errors_file_and_collapses_newlines():
    from musicssl.errors import one_line

    assert one_line(FileNotFoundError(2, "No such file or directory", "/data/x.tsv")) == \
        "[Errno 2] No such file or directory: '/data/x.tsv'"
    assert one_line(ValueError("a.json: bad\n  value\tthere")) == "a.json: bad value there"
