"""A tiny experiment grid, for the sweep tests and for anything that reads a finished grid (results).

  experiment = sweeps.write_tiny_experiment(tmp_path)          # the experiment gin file
  result = sweeps.run_sweep([experiment, "--root", str(root)])  # `prompt-tuning sweep` in a subprocess
  run_dirs = sweeps.finished_tiny_grid(tmp_path)                # both at once: the 8 finished runs

The grid is 2 x 2 x 2 on the quick start's tiny random T5 (one layer each way) and built-in task, 2
steps a run:
`model` (d64: emb_dim 64, mlp_dim 128; d128: the quick start's 128 / 256), `PROMPT_LENGTH` (2, 4),
`method` (prompt_tuning: the prompt trains; model_tuning: every weight, TRAINABLE_PARAMS '.*').
A checkpoint is saved every step (so a run killed after step 1 resumes from it). The runs
share the session's JAX compilation cache (tests/conftest.py) through the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping, Sequence

TINY_EXPERIMENT = """\
# A 2 x 2 x 2 grid on the quick start's tiny random T5: 2 training steps a run.
include 'quickstart.gin'

# One layer each way: the grid's 8 shapes compile once each (about 20 s apiece on a CPU core), and
# a layer less compiles a quarter faster.
random_init_config.num_encoder_layers = 1
random_init_config.num_decoder_layers = 1
TRAIN_STEPS = 2
TrainSpec.save_period = 1
TrainSpec.log_period = 1
# The final evaluation decodes only: rank classification would compile one more program per shape.
EvaluationSpec.rank_classification = False

sweep.name = 'tiny_grid'
sweep.axes = {
    'model': {
        'd64': ['random_init_config.emb_dim = 64', 'random_init_config.mlp_dim = 128'],
        'd128': ['random_init_config.emb_dim = 128', 'random_init_config.mlp_dim = 256'],
    },
    'PROMPT_LENGTH': [2, 4],
    'method': {
        'prompt_tuning': "TRAINABLE_PARAMS = 'prompt/prompt'",
        'model_tuning': "TRAINABLE_PARAMS = '.*'",
    },
}
"""

# The run directories of the grid, in the order sweep runs them (the last axis varies fastest).
TINY_RUNS = [
  f"model={model},prompt_length={length},method={method}"
  for model in ("d64", "d128")
  for length in (2, 4)
  for method in ("prompt_tuning", "model_tuning")
]


def write_tiny_experiment(directory: str | os.PathLike, name: str = "tiny_grid.gin") -> str:
  """Writes the tiny experiment into `directory`; returns its path."""
  path = os.path.join(os.fspath(directory), name)
  with open(path, "w") as f:
    f.write(TINY_EXPERIMENT)
  return path


def run_sweep(
  args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
  """`prompt-tuning sweep ARGS` in a subprocess of this interpreter (output captured as text)."""
  return subprocess.run(
    [sys.executable, "-m", "prompt_tuning.cli.main", "sweep", *args],
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def finished_tiny_grid(directory: str | os.PathLike) -> list[str]:
  """Trains the whole tiny grid under `directory`/grid; returns the 8 run directories (in TINY_RUNS order)."""
  root = os.path.join(os.fspath(directory), "grid")
  result = run_sweep([write_tiny_experiment(directory), "--root", root])
  assert result.returncode == 0, result.stderr[-3000:]
  return [os.path.join(root, name) for name in TINY_RUNS]
