"""Multi-task prompt training: one run, a mixture, one prompt per member task (PromptSpec.per_task).

The prompt is a table [k, p, embed] (models/prompt.py), row t for the mixture's t-th member task
(its member order); every example carries its task's row as batch['task_ids'] (from the
mixture's `task` tag, data/pipeline.py), so its gradient reaches only that row, and the
optimizer runs per row (train/per_task.py): a row is moved only in steps with examples of its
task. Optionally the tasks share a part of the prompt (PromptSpec.shared_length; 'concat' or
'add' as the reference repository's multi-task prompts), trained by every example.

What a run writes for each task: 'train/<task>/loss' and 'train/<task>/token_accuracy' in the
metrics, the mixture evaluation's '<task>/<metric>', and a bundle per task and saved step,
MODEL_DIR/prompts/step_<n>/<task>.safetensors, holding the task's whole prompt (shared part
included), so it serves alone or in PROMPT_BUNDLES ({'task': MODEL_DIR} picks it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from prompt_tuning.data.task import DataError, Task
from prompt_tuning.models.prompt import PromptConfig, task_prompts
from prompt_tuning.param_tree import flatten
from prompt_tuning.runs.specs import PromptSpec

SHARED = "shared_prompt"  # the parameter name of the shared part, beside the table 'prompt'


def member_tasks(task: Task) -> list[str]:
  """The member tasks of a mixture, in its order: the rows of the prompt table. One line otherwise."""
  members = getattr(task, "tasks", None)
  if members is None:
    raise DataError(
      f"MULTI_TASK_PROMPTS = True trains one prompt per task of a mixture, but {task.name} is a single task; "
      f"name a mixture in MIXTURE_OR_TASK_NAME, or train without MULTI_TASK_PROMPTS"
    )
  return [t.name for t in members]


def check_splits(task: Task, split: str = "train") -> None:
  """One line when a member task has no `split`: its prompt would never train."""
  for member in getattr(task, "tasks", ()):
    if split not in member.splits:
      raise DataError(
        f"task {member.name} of the mixture has no {split} split, so its prompt would never train; "
        f"drop it from the mixture (MULTI_TASK_PROMPTS)"
      )


def initial_prompt(
  spec: PromptSpec, task: Task, init_fn: Callable, emb_dim: int, seed: int
) -> tuple[PromptConfig, dict[str, np.ndarray], dict[str, int]]:
  """The prompt layer of a multi-task run and its initial parameters (host float32).

  Returns (PromptConfig with num_tasks k, {'prompt': [k, p_t, embed], 'shared_prompt': [s, embed]
  (with a shared part)}, {task name: row}). Row t is init_fn(fold_in(key, t), (p_t, embed)) with
  key = PRNGKey(seed + 1), the shared part init_fn(PRNGKey(seed + 2), (s, embed)).
  """
  names = member_tasks(task)
  config = PromptConfig(
    spec.length,
    spec.placement,
    num_tasks=len(names),
    shared_length=spec.shared_length,
    shared_combine=spec.shared_combine,
  )
  key = jax.random.PRNGKey(seed + 1)
  shape = (config.task_length, emb_dim)
  table = np.stack([np.asarray(init_fn(jax.random.fold_in(key, row), shape), np.float32) for row in range(len(names))])
  params = {"prompt": table}
  if config.shared_length:
    params[SHARED] = np.asarray(init_fn(jax.random.PRNGKey(seed + 2), (config.shared_length, emb_dim)), np.float32)
  return config, params, {name: row for row, name in enumerate(names)}


def check_examples(task_counts: Mapping[str, int], prompt_ids: Mapping[str, int], split: str = "train") -> None:
  """One line when a member task has no `split` examples: its prompt would never train."""
  empty = [name for name in prompt_ids if not task_counts.get(name)]
  if empty:
    raise DataError(
      f"task {empty[0]} of the mixture has no {split} examples, so its prompt would never train; "
      f"drop it from the mixture or give it {split} data"
    )


def prompts_of(config: PromptConfig, names: Sequence[str]) -> Callable[[Any], dict[str, np.ndarray]]:
  """trainable tree -> {task: its whole prompt [p, embed] float32} (shared part combined in): what
  each task's bundle holds."""

  def whole(trainable: Any) -> dict[str, np.ndarray]:
    flat = flatten(trainable)
    shared = flat.get(f"prompt/{SHARED}")
    table = np.asarray(
      task_prompts(
        np.asarray(flat["prompt/prompt"], np.float32),
        None if shared is None else np.asarray(shared, np.float32),
        config.shared_combine,
      )
    )
    return {name: table[row] for row, name in enumerate(names)}

  return whole
