"""Prompt design on the frozen model: `evaluate` with a PromptDesignSpec (gin: runs/prompt_design.gin).

The paper's third curve (Figure 1, "Prompt Design"): no parameters are learned; the frozen T5 alone
reads each input written into a hand-made template after k demonstrations (data/design.py) and is
scored by rank classification over the task's candidates, and by decoding. MODEL_DIR needs no
checkpoint: it receives the metrics (at step 0), as with PROMPT_BUNDLES.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from prompt_tuning import partitioning
from prompt_tuning.data.design import DesignedTask
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.t5 import network
from prompt_tuning.runs.setup import Setup, frozen_model, task_with_splits
from prompt_tuning.runs.specs import MeshSpec, ModelSpec, PromptDesignSpec, TaskSpec


def _quiet(message: str) -> None:
  del message


def build(
  model: ModelSpec,
  task: TaskSpec,
  mesh: MeshSpec,
  design: PromptDesignSpec,
  *,
  split: str,
  note: Callable[[str], None] = _quiet,
) -> Setup:
  """The mesh, the designed task and the plain frozen T5 (no prompt layer), its weights on the mesh.

  The splits (`split`, and the demonstrations' when shots > 0) are checked before the model loads.
  ModelSpec's prompt settings do not apply: there is no prompt.
  """
  device_mesh = mesh.make()
  splits = [split] + ([design.demonstration_split] if design.shots else [])
  resolved = task_with_splits(task, splits)
  note(
    f"loading the frozen model from {model.checkpoint}"
    if model.checkpoint
    else "initializing the frozen model at random (no initial checkpoint), seed 0"
  )
  config, params = frozen_model(model)
  vocab_size = resolved.vocabulary.vocab_size
  if vocab_size is not None and vocab_size > config.vocab_size:
    raise ValueError(f"the task vocabulary has {vocab_size} ids but the model only {config.vocab_size}")
  designed = DesignedTask(
    resolved,
    design.template,
    design.shots,
    task.feature_lengths["inputs"],
    seed=design.seed,
    separator=design.separator,
    demonstration_split=design.demonstration_split,
  )
  module = network.Transformer(config)
  shardings = partitioning.logical_to_sharding(network.module_logical_axes(module), device_mesh)
  params = jax.device_put(params, shardings)
  return Setup(device_mesh, designed, EncoderDecoderModel(module, model.loss), config, params)


def demonstration_metrics(task: DesignedTask, split: str, shots: int) -> dict[str, float]:
  """'design/demonstrations': the mean number of demonstrations the examples kept (of `shots`), and
  'design/examples_short': how many kept fewer than `shots` (too long for the inputs length)."""
  used = np.asarray(task.used(split), np.float64)
  if not used.size:
    return {}
  return {"design/demonstrations": float(used.mean()), "design/examples_short": int(np.sum(used < shots))}
