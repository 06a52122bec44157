"""evaluate(): the task's metrics for a trained prompt in MODEL_DIR, on top of its frozen model.

It takes the specs train() took (gin builds them from the same files), rebuilds the frozen model
from its checkpoint and restores the trained subtree of MODEL_DIR (the latest step by default);
or, with PROMPT_BUNDLES, scores those prompts (one per task, or an ensemble) on the frozen model;
or, with a PromptDesignSpec, scores the frozen model alone on designed text inputs (prompt design).
"""

from __future__ import annotations

from typing import Callable

import jax
from absl import logging

from prompt_tuning import ensemble as ensemble_lib
from prompt_tuning import progress as progress_lib
from prompt_tuning.errors import doing
from prompt_tuning.metrics_writer import MetricsWriter
from prompt_tuning.runs import bundles as bundles_lib
from prompt_tuning.runs import preflight
from prompt_tuning.runs import prompt_design as prompt_design_lib
from prompt_tuning.runs import setup as setup_lib
from prompt_tuning.runs.specs import EvaluationSpec, MeshSpec, ModelSpec, PromptDesignSpec, TaskSpec


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
  design: PromptDesignSpec | None = None,
) -> dict[str, float]:
  """Scores the trained prompt of MODEL_DIR on `evaluation.split`; writes the metrics to MODEL_DIR.

  With model.bundles (PROMPT_BUNDLES) it scores those prompts instead, in one table, and MODEL_DIR
  needs no checkpoint: each task of `task` with its bundle (a mixture's tasks mixed in every
  batch), or a task mapped to a list of bundles as an ensemble (prompt_tuning/ensemble.py: each
  member's metrics 'member_<m>/...' in the list's order and the ensemble's 'ensemble/...'; every
  batch of EVAL_BATCH_SIZE examples runs as one device batch of EVAL_BATCH_SIZE x members rows).
  Bundle metrics are written at step 0.
  checkpoint_step: which saved step (None: the latest); not used with bundles.
  progress: a line on stderr before each quiet phase (loading, evaluating), on process 0.
  design: prompt design instead of a prompt (runs/prompt_design.py; gin: runs/prompt_design.gin): the
    frozen model alone on templated inputs with demonstrations; MODEL_DIR needs no checkpoint, and the
    metrics (step 0) add 'design/demonstrations' (mean kept per example) and 'design/examples_short'.
  Returns the metrics (see Evaluator.evaluate) and, without bundles or design, 'step' (an int).
  """
  note = phase_lines(progress)
  split = evaluation.split
  if design is not None:
    if model.bundles or checkpoint_step is not None:
      raise ValueError(
        "prompt design (evaluate.design) scores the frozen model without a prompt; "
        f"unset {'PROMPT_BUNDLES' if model.bundles else 'evaluate.checkpoint_step'}"
      )
    preflight.writable_model_dir(model_dir)  # MODEL_DIR only receives the metrics
    setup, step = prompt_design_lib.build(model, task, mesh, design, split=split, note=note), None
  elif model.bundles:
    if checkpoint_step is not None:
      raise ValueError(
        "evaluate.checkpoint_step picks a MODEL_DIR checkpoint; with PROMPT_BUNDLES there is none to pick"
      )
    # The bundles are the prompts; MODEL_DIR only receives the metrics (no checkpoint needed there).
    preflight.writable_model_dir(model_dir)
    setup, step = bundles_lib.build(model, task, mesh, note=note, splits=[split]), None
  else:
    # Before loading anything: the metrics go to MODEL_DIR, so a read-only one fails now, not after scoring.
    preflight.writable_model_dir(preflight.trained_model_dir(model_dir))
    setup, step = setup_lib.build_trained(
      model_dir, model, task, mesh, checkpoint_step=checkpoint_step, note=note, splits=[split]
    )
  evaluator = setup_lib.evaluator(setup, task, evaluation, note=note)
  metrics = evaluator.evaluate(setup.params, split)
  if design is not None:
    metrics.update(prompt_design_lib.demonstration_metrics(setup.task, split, design.shots))
  with doing(f"write MODEL_DIR {model_dir}"), MetricsWriter(model_dir) as writer:
    writer.write(step or 0, metrics, prefix=f"eval_{split}" if split != "validation" else "eval")
  if setup.ensemble is not None:  # the members by their bundle paths, beside their metrics
    for line in ensemble_lib.member_table(list(model.bundles[setup.task.name]), metrics):
      note(line)
      logging.info("%s", line)
  logging.info("%s %s: %s", "no checkpoint" if step is None else f"step {step}", split, metrics)
  return metrics if step is None else {"step": step, **metrics}
