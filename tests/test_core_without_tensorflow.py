"""The core (model, checkpoints, decoding, CLI, the server) must import and run where TensorFlow is absent."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_core_imports_and_runs_with_tensorflow_blocked():
  script = textwrap.dedent("""
      import sys
      for name in ("tensorflow", "seqio", "tensorflow_datasets"):
        sys.modules[name] = None  # any import of these now raises ImportError
      import numpy as np
      import prompt_tuning
      from prompt_tuning import decoding, inspection, partitioning, pretrained
      from prompt_tuning.checkpoints import hf, hub, loader, native, t5x, t5x_gin
      from prompt_tuning.cli import convert, generate, inspect_prompt, main, results, serve
      from prompt_tuning.results import collect, plots
      from prompt_tuning.runs import records, selection
      from prompt_tuning.serving import app, batcher, engine, load, registry, start
      model = prompt_tuning.load_pretrained(None, config="tiny")
      print(model.generate(np.array([[5, 6, 1]]), 3).shape)
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith("(1, 3)")
