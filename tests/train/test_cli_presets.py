"""An unknown preset or variant on the command line: exit 2 and one line naming the known ones,
before any data or label directory is read."""

from __future__ import annotations

import pytest

from musicssl.cli import main


@pytest.mark.parametrize("arguments, message", [
    (["musichubert", "--preset", "nosuch", "--labels", "no_labels"],
     "musicssl pretrain: error: unknown musichubert preset 'nosuch'; known: base, tiny"),
    (["music2vec", "--preset", "nosuch"],
     "musicssl pretrain: error: unknown music2vec preset 'nosuch'; known: base, tiny"),
    (["bestrq", "--preset", "nosuch"],
     "musicssl pretrain: error: unknown bestrq preset 'nosuch'; known: base, tiny"),
    (["music2vec", "--preset", "tiny", "--variant", "span7"],
     "musicssl pretrain: error: unknown Music2Vec variant 'span7'; known: vanilla, span5, span15, prob50, "
     "prob80, target12, crop5s, steps800k"),
])
def test_unknown_preset_or_variant_exits_2_with_one_line(arguments, message, tmp_path, capsys):
    code = main(["pretrain", *arguments, "--data", str(tmp_path / "no_manifest"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_unknown_demo_preset_exits_2_with_one_line(tmp_path, capsys):
    assert main(["demo", "--preset", "nosuch", "--out", str(tmp_path / "demo")]) == 2
    assert capsys.readouterr().err == "musicssl demo: error: unknown demo preset 'nosuch'; known: demo, smoke\n"
