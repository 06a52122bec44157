"""evaluate() and infer(): a trained prompt from MODEL_DIR on top of its frozen model.

They take the same model and prompt arguments as train() (bound by the same
gin files), rebuild the frozen model from its checkpoint, and restore the
trained subtree from MODEL_DIR/checkpoints (the latest step by default).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging

from prompt_tuning import partitioning, progress as progress_lib, prompt_init as prompt_init_lib
from prompt_tuning.checkpoints.structure import check_params, flatten, unflatten
from prompt_tuning.checkpoints.train_state import TrainCheckpointer, checkpoint_dir
from prompt_tuning.data.task import get_leaderboard
from prompt_tuning.evaluation import Evaluator, write_predictions
from prompt_tuning.metrics_writer import MetricsWriter
from prompt_tuning.models.model import LossConfig
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.task_registry import resolve_task
from prompt_tuning.train import model_setup, optimizer as optimizer_lib


def _note(enabled: bool) -> Callable[[str], None]:
  """Prints phase lines on process 0 when `enabled`; does nothing otherwise."""
  return progress_lib.say if enabled and jax.process_index() == 0 else (lambda message: None)


def restore_trained(model_dir: str, params: dict, trainable_params: str, step: int | None) -> tuple[dict, int]:
  """Params with the trained subtree of MODEL_DIR's checkpoint `step` (default latest) swapped in."""
  trainable, _ = optimizer_lib.split_trainable(params, trainable_params)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), trainable)
  checkpointer = TrainCheckpointer(model_dir, save_period=0, keep=None)
  try:
    restored, step = checkpointer.restore_params(abstract, step)
  finally:
    checkpointer.close()
  check_params(restored, abstract, f"{model_dir} step {step}")
  return unflatten({**flatten(params), **flatten(restored)}), int(step)


def _setup(model_dir, mixture_or_task_name, model_config, initial_checkpoint_path, prompt_length, prompt_placement,
           trainable_params, dtype, checkpoint_step, mixture_or_task_module, vocabulary_path, num_partitions,
           mesh_shape, note):
  """(task, model, params placed on the mesh by the logical-axis rules, step, mesh)."""
  mesh = partitioning.make_mesh(num_partitions, mesh_shape=mesh_shape)
  task = resolve_task(mixture_or_task_name, mixture_or_task_module, vocabulary_path)
  note(f"loading the frozen model from {initial_checkpoint_path}" if initial_checkpoint_path else
       "initializing the frozen model at random (no initial checkpoint), seed 0")
  # The prompt value is replaced by the trained one, so a cheap initializer suffices here.
  model, params, _ = model_setup.load_prompted_model(
      model_config, initial_checkpoint_path, PromptConfig(prompt_length, prompt_placement),
      prompt_init_lib.random_uniform, tokenize=task.vocabulary.encode, vocab_size=task.vocabulary.vocab_size,
      loss=LossConfig(), dtype=dtype, seed=0)
  params, step = restore_trained(model_dir, params, trainable_params, checkpoint_step)
  note(f"restored the trained parameters of step {step} from {checkpoint_dir(model_dir, step)}")
  params = jax.device_put(params, partitioning.logical_to_sharding(network.module_logical_axes(model.module), mesh))
  return task, model, params, step, mesh


def evaluate(*, model_dir: str, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
             batch_size: int, model_config: str | T5Config | None = None, initial_checkpoint_path: str = "",
             prompt_length: int = 100, prompt_placement: str = "prefix",
             trainable_params: str = optimizer_lib.PROMPT_ONLY, dtype: str | None = None,
             checkpoint_step: int | None = None, split: str = "validation", decode_method: str = "greedy",
             decode_options: Mapping[str, Any] | None = None, rank_classification: bool | None = None,
             mixture_or_task_module: str | None = None, vocabulary_path: str | None = None,
             num_partitions: int = 1, mesh_shape: tuple[int, int] | None = None,
             progress: bool = True) -> dict[str, float]:
  """Scores the trained prompt of MODEL_DIR on `split`; writes eval metrics to MODEL_DIR.

  num_partitions / mesh_shape: the device mesh (the frozen weights sharded by the rules), as in train().
  progress: a line on stderr before each quiet phase (loading, evaluating), on process 0.
  Returns the metrics (see Evaluator.evaluate) and 'step' (an int).
  """
  note = _note(progress)
  task, model, params, step, mesh = _setup(model_dir, mixture_or_task_name, model_config, initial_checkpoint_path,
                                           prompt_length, prompt_placement, trainable_params, dtype, checkpoint_step,
                                           mixture_or_task_module, vocabulary_path, num_partitions, mesh_shape, note)
  evaluator = Evaluator(model, task, task_feature_lengths, batch_size, decode_method=decode_method,
                        decode_options=decode_options, rank_classification=rank_classification, mesh=mesh, note=note)
  metrics = evaluator.evaluate(params, split)
  with MetricsWriter(model_dir) as writer:
    writer.write(step, metrics, prefix=f"eval_{split}" if split != "validation" else "eval")
  logging.info("step %d %s: %s", step, split, metrics)
  return {"step": step, **metrics}


def infer(*, model_dir: str, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], batch_size: int,
          model_config: str | T5Config | None = None, initial_checkpoint_path: str = "", prompt_length: int = 100,
          prompt_placement: str = "prefix", trainable_params: str = optimizer_lib.PROMPT_ONLY,
          dtype: str | None = None, checkpoint_step: int | None = None, split: str = "validation",
          decode_method: str = "greedy", decode_options: Mapping[str, Any] | None = None,
          output_path: str = "", mixture_or_task_module: str | None = None,
          vocabulary_path: str | None = None, leaderboard_dir: str = "", num_partitions: int = 1,
          mesh_shape: tuple[int, int] | None = None, progress: bool = True) -> str:
  """Writes predictions as JSONL (input, prediction, score, target); returns the file path.

  output_path defaults to MODEL_DIR/inference/<task>-<split>-step<N>.jsonl. With
  leaderboard_dir, SuperGLUE tasks (alone or in a mixture) also get their
  submission files there (BoolQ.jsonl, CB.jsonl, ...), from the same predictions.
  progress: a line on stderr before each quiet phase (loading, decoding), on process 0.
  """
  if leaderboard_dir:  # before loading anything, on every process
    leaderboard_members(resolve_task(mixture_or_task_name, mixture_or_task_module, vocabulary_path))
  note = _note(progress)
  task, model, params, step, mesh = _setup(model_dir, mixture_or_task_name, model_config, initial_checkpoint_path,
                                           prompt_length, prompt_placement, trainable_params, dtype, checkpoint_step,
                                           mixture_or_task_module, vocabulary_path, num_partitions, mesh_shape, note)
  evaluator = Evaluator(model, task, task_feature_lengths, batch_size, decode_method=decode_method,
                        decode_options=decode_options, rank_classification=False, mesh=mesh)
  path = output_path or os.path.join(model_dir, "inference", f"{task.name}-{split}-step{step}.jsonl")
  note(f"predicting {task.name} {split} with {evaluator.decoding}")
  records = list(evaluator.predictions(params, split))
  count = write_predictions(iter(records), path)
  logging.info("wrote %d predictions to %s", count, path)
  if leaderboard_dir and jax.process_index() == 0:  # every process holds all records; one writes
    for written in write_leaderboards(task, records, leaderboard_dir):
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
