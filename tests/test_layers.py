"""The package's shape, checked: imports run one way down the layers of pyproject.toml's
[tool.importlinter] (STYLE.md practice 8), and no module outgrows a reader (STYLE.md practice 3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
MAX_MODULE_LINES = 500


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under root/src, with root/pyproject.toml's contracts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True)


def test_imports_run_down_the_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    # The contract has teeth: evaluate importing train (even inside a function) is reported.
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "musicssl", tmp_path / "src" / "musicssl",
                    ignore=shutil.ignore_patterns("__pycache__"))
    metrics = tmp_path / "src" / "musicssl" / "evaluate" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _upward():\n    from musicssl.train import trainer\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "musicssl.evaluate.metrics -> musicssl.train.trainer" in result.stdout


def test_no_module_is_over_500_lines():
    lengths = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
               for path in (ROOT / "src").rglob("*.py")}
    assert len(lengths) > 50  # the package was found
    too_long = {path: lines for path, lines in lengths.items() if lines > MAX_MODULE_LINES}
    assert not too_long, f"split these modules (at most {MAX_MODULE_LINES} lines each): {too_long}"
