"""The atomic-write helper: the target is replaced whole or left exactly as it was."""

import os

import pytest

from musicssl import atomic


def test_file_replaced_only_on_clean_exit(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as partial:
            partial.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary left behind
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_directory_replaces_a_non_empty_directory(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "a").write_text("old")
    with atomic.atomic_path(target) as partial:
        partial.mkdir()
        (partial / "b").write_text("new")
    assert sorted(os.listdir(target)) == ["b"]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_temporary_name_is_per_process_and_hidden(tmp_path):
    name = atomic.temporary_sibling(tmp_path / "x.npz").name
    assert name.startswith(".") and str(os.getpid()) in name
