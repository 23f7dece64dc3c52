"""Damaged checkpoints and model directories are refused as a ValueError naming the file (the
CLI's one-line policy), never with the reader's own exception type and no file name."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from musicssl.interop.huggingface import export_pretrained, load_pretrained
from musicssl.interop.safe_pickle import load_checkpoint
from tests.conftest import micro_backbone

CHECKPOINT = Path(__file__).parent / "fixtures" / "hubert_tiny.pt"


def foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a torch archive")


DAMAGES = {
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("[model]\nlayers = 12\n"),
    "truncated": lambda path: path.write_bytes(CHECKPOINT.read_bytes()[:4097]),
    "truncated_early": lambda path: path.write_bytes(CHECKPOINT.read_bytes()[:100]),
    "foreign_zip": foreign_zip,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_a_value_error_naming_it(tmp_path, damage):
    path = tmp_path / "checkpoint_best.pt"
    DAMAGES[damage](path)
    with pytest.raises(ValueError, match="checkpoint_best.pt") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value).strip()


def test_the_intact_checkpoint_still_loads():
    assert isinstance(load_checkpoint(CHECKPOINT)["model"], dict)


@pytest.fixture
def micro_dir(tmp_path) -> Path:
    return export_pretrained(micro_backbone("hubert"), tmp_path / "micro")


def _edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(edit(config)))


@pytest.mark.parametrize("name, damage", [
    ("config.json", lambda d: (d / "config.json").write_text('{"model_type": "hubert", ')),
    ("config.json", lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00")),
    ("config.json", lambda d: (d / "config.json").write_text("[1, 2]")),
    ("config.json", lambda d: _edit_config(d, lambda c: {"model_type": "hubert"})),  # no conv_dim, ...
    ("config.json", lambda d: _edit_config(d, lambda c: {k: v for k, v in c.items() if k != "musicssl"}
                                           | {"conv_dim": 16})),  # a number where a list belongs
    ("model.safetensors", lambda d: (d / "model.safetensors").write_bytes(b"")),
    ("model.safetensors", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:999])),
    ("preprocessor_config.json", lambda d: (d / "preprocessor_config.json").write_text("{")),
])
def test_a_damaged_model_directory_names_the_file(micro_dir, name, damage):
    damage(micro_dir)
    with pytest.raises(ValueError, match=f"{micro_dir / name}"):
        load_pretrained(micro_dir)


def test_a_garbage_pytorch_model_bin_names_the_file(micro_dir):
    (micro_dir / "model.safetensors").unlink()
    (micro_dir / "pytorch_model.bin").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_pretrained(micro_dir)
