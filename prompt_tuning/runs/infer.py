"""infer(): predictions of a trained prompt in MODEL_DIR as JSONL, and leaderboard files.

It takes the specs train() took (gin builds them from the same files), rebuilds the frozen model
from its checkpoint and restores the trained subtree of MODEL_DIR (the latest step by default).
"""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

from prompt_tuning.data.task import get_leaderboard
from prompt_tuning.errors import doing
from prompt_tuning.evaluation import write_predictions
from prompt_tuning.runs import bundles as bundles_lib
from prompt_tuning.runs import preflight
from prompt_tuning.runs import setup as setup_lib
from prompt_tuning.runs.evaluate import phase_lines
from prompt_tuning.runs.specs import EvaluationSpec, MeshSpec, ModelSpec, TaskSpec
from prompt_tuning.task_registry import resolve_task


def infer(
  model: ModelSpec,
  task: TaskSpec,
  model_dir: str,
  evaluation: EvaluationSpec = EvaluationSpec(),
  mesh: MeshSpec = MeshSpec(),
  checkpoint_step: int | None = None,
  output_path: str = "",
  leaderboard_dir: str = "",
  progress: bool = True,
) -> str:
  """Writes predictions as JSONL (input, prediction, score, target); returns the file path.

  evaluation: the split, batch size and decoding (rank classification is not used here).
  checkpoint_step: which saved step (None: the latest).
  output_path: default MODEL_DIR/inference/<task>-<split>-step<N>.jsonl (with model.bundles:
    <task>-<split>-bundles.jsonl; MODEL_DIR then needs no checkpoint). A task mapped to a list of
    bundles (an ensemble): <task>-<split>-ensemble.jsonl, 'prediction' the members' majority vote
    and each member's in 'member_predictions' (prompt_tuning/ensemble.py).
  leaderboard_dir: SuperGLUE tasks (alone or in a mixture) also get their submission files there
    (BoolQ.jsonl, CB.jsonl, ...), from the same predictions.
  progress: a line on stderr before each quiet phase (loading, decoding), on process 0.
  """
  if leaderboard_dir:  # before loading anything, on every process
    leaderboard_members(resolve_task(task.name, task.module, task.vocabulary_path))
  note = phase_lines(progress)
  if not model.bundles:
    preflight.trained_model_dir(model_dir)
  if not output_path:  # the predictions go to MODEL_DIR: a read-only one fails now, not after decoding
    preflight.writable_model_dir(model_dir)
  split = evaluation.split
  if model.bundles:  # several trained prompts, one table, batches mixing the tasks
    setup = bundles_lib.build(model, task, mesh, note=note, splits=[split])
    name = "bundles" if setup.ensemble is None else "ensemble"
  else:
    setup, step = setup_lib.build_trained(
      model_dir, model, task, mesh, checkpoint_step=checkpoint_step, note=note, splits=[split]
    )
    name = f"step{step}"
  evaluator = setup_lib.evaluator(setup, task, evaluation, rank_classification=False)
  path = output_path or os.path.join(model_dir, "inference", f"{setup.task.name}-{split}-{name}.jsonl")
  note(f"predicting {setup.task.name} {split} with {evaluator.decoding}")
  records = list(evaluator.predictions(setup.params, split))
  with doing(f"write the predictions to {path}"):
    count = write_predictions(iter(records), path)
  logging.info("wrote %d predictions to %s", count, path)
  if leaderboard_dir and jax.process_index() == 0:  # every process holds all records; one writes
    with doing(f"write the leaderboard files to {leaderboard_dir}"):
      for written in write_leaderboards(setup.task, records, leaderboard_dir):
        logging.info("wrote leaderboard file %s", written)
  return path


def leaderboard_members(task: Any) -> list[str]:
  """Names of `task` (or of its mixture members) that have a leaderboard writer (SuperGLUE's tasks)."""
  names = [t.name for t in getattr(task, "tasks", [task]) if get_leaderboard(t.name) is not None]
  if not names:
    raise ValueError(f"leaderboard_dir is set but task {task.name} has no SuperGLUE leaderboard format")
  return names


def write_leaderboards(task: Any, records: list[dict], directory: str) -> list[str]:
  """Leaderboard submission files of `task` (or of each member of a mixture that has one)."""
  by_task: dict[str, list[dict]] = {}
  for record in records:
    by_task.setdefault(record["example"].get("task", task.name), []).append(record)
  return [get_leaderboard(name)(by_task[name], directory) for name in leaderboard_members(task) if name in by_task]
