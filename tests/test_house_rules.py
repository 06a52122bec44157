"""The house rules (ruff.toml) hold for the repository, catch what they are meant to, and CI runs them."""

from __future__ import annotations

import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUFF = shutil.which("ruff") or "ruff"  # the test extra installs it


def _ruff(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([RUFF, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_repository_follows_its_lint_and_format_rules():
  lint = _ruff("check", ".")
  assert lint.returncode == 0, lint.stdout[-3000:]
  formatting = _ruff("format", "--check", ".")
  assert formatting.returncode == 0, formatting.stdout[-3000:]


def test_the_rules_catch_a_violation(tmp_path):
  shutil.copy(os.path.join(ROOT, "ruff.toml"), tmp_path / "ruff.toml")
  (tmp_path / "good.py").write_text('"""Fine."""\n\nimport os\n\n\ndef f(x):\n  return os.path.join(x, "y")\n')
  assert _ruff("check", ".", cwd=str(tmp_path)).returncode == 0
  assert _ruff("format", "--check", ".", cwd=str(tmp_path)).returncode == 0
  (tmp_path / "unused.py").write_text("import os\n")  # lint: an unused import
  assert "F401" in _ruff("check", ".", cwd=str(tmp_path)).stdout
  (tmp_path / "unused.py").unlink()
  (tmp_path / "four_spaces.py").write_text("def f(x):\n    return x\n")  # format: Google's 2-space indent
  assert _ruff("format", "--check", ".", cwd=str(tmp_path)).returncode == 1


def test_ci_runs_the_rules_before_the_tests():
  lines = [line.strip() for line in open(os.path.join(ROOT, ".ci", "run")) if not line.startswith("#")]
  assert "set -euo pipefail" in lines  # a failing rule stops the run
  rules = next(i for i, line in enumerate(lines) if "ruff check ." in line and "ruff format --check ." in line)
  tests = next(i for i, line in enumerate(lines) if "pytest -q -n auto tests" in line)
  assert rules < tests
