"""evaluate(): the task's metrics for a trained prompt in MODEL_DIR, on top of its frozen model.

It takes the specs train() took (gin builds them from the same files), rebuilds the frozen model
from its checkpoint and restores the trained subtree of MODEL_DIR (the latest step by default).
"""

from __future__ import annotations

from typing import Callable

import jax
from absl import logging

from prompt_tuning import progress as progress_lib
from prompt_tuning.errors import doing
from prompt_tuning.metrics_writer import MetricsWriter
from prompt_tuning.runs import preflight
from prompt_tuning.runs import setup as setup_lib
from prompt_tuning.runs.specs import EvaluationSpec, MeshSpec, ModelSpec, TaskSpec


def phase_lines(enabled: bool) -> Callable[[str], None]:
  """Prints phase lines on process 0 when `enabled`; does nothing otherwise."""
  return progress_lib.say if enabled and jax.process_index() == 0 else (lambda message: None)


def evaluate(
  model: ModelSpec,
  task: TaskSpec,
  model_dir: str,
  evaluation: EvaluationSpec = EvaluationSpec(),
  mesh: MeshSpec = MeshSpec(),
  checkpoint_step: int | None = None,
  progress: bool = True,
) -> dict[str, float]:
  """Scores the trained prompt of MODEL_DIR on `evaluation.split`; writes the metrics to MODEL_DIR.

  checkpoint_step: which saved step (None: the latest).
  progress: a line on stderr before each quiet phase (loading, evaluating), on process 0.
  Returns the metrics (see Evaluator.evaluate) and 'step' (an int).
  """
  if model.bundles:  # not silently MODEL_DIR's prompt instead
    raise ValueError("PROMPT_BUNDLES is read by infer (one batch, many prompts); evaluate scores MODEL_DIR's prompt")
  note = phase_lines(progress)
  # Before loading anything: the metrics go to MODEL_DIR, so a read-only one fails now, not after scoring.
  preflight.writable_model_dir(preflight.trained_model_dir(model_dir))
  split = evaluation.split
  setup, step = setup_lib.build_trained(
    model_dir, model, task, mesh, checkpoint_step=checkpoint_step, note=note, splits=[split]
  )
  evaluator = setup_lib.evaluator(setup, task, evaluation, note=note)
  metrics = evaluator.evaluate(setup.params, split)
  with doing(f"write MODEL_DIR {model_dir}"), MetricsWriter(model_dir) as writer:
    writer.write(step, metrics, prefix=f"eval_{split}" if split != "validation" else "eval")
  logging.info("step %d %s: %s", step, split, metrics)
  return {"step": step, **metrics}
