"""The README's Python snippet (Usage > Python), run as written, with gin unimportable."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _snippet() -> str:
  """The first ```python block of the README's "### Python" section."""
  section = open(README).read().split("\n### Python\n", 1)[1]
  return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow  # trains 30 steps and evaluates: ~20 s
def test_readme_python_snippet_trains_then_predicts_without_gin(tmp_path):
  code = _snippet()
  assert "train_prompt(" in code and "load_pretrained(prompt=" in code and ".predict(" in code
  # gin set to None in sys.modules: any `import gin` on the way raises, so nothing may need it.
  script = "import sys\nsys.modules['gin'] = None\n" + code
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  printed = result.stdout.splitlines()
  assert re.match(r"30 \{'decode/accuracy': [\d.]+, 'rank/accuracy': [\d.]+, 'examples': 100\}$", printed[0])
  assert re.match(
    r"\[Prediction\(text='(negative|positive)', score=-[\d.]+\), Prediction\(text='(negative|positive)'", printed[1]
  ), printed[1]
  assert re.match(
    r"Ranking\(prediction='(negative|positive)', scores=\{'negative': -[\d.]+, 'positive': -[\d.]+\}\)$", printed[2]
  ), printed[2]
  negative = float(re.search(r"'negative': (-[\d.]+)", printed[2]).group(1))
  assert abs(float(printed[3].strip("[]")) - negative) < 1e-4  # score() of a label is its rank score
  assert "resuming" not in result.stderr and os.path.isfile(tmp_path / "python_model" / "run_config.json")
