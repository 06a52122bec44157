"""Many trained prompts on one frozen model: bundles -> one prompt table, placed on the mesh.

ModelSpec.bundles maps each task to its trained prompt (a bundle, a MODEL_DIR's latest bundle,
or a PEFT adapter folder). Every bundle is checked against the frozen model (architecture and
weight fingerprint); the prompts, of any lengths, fill one [k, p_max, embed] table
(PromptConfig.task_lengths), and each example of the task (a mixture: of its member tasks) runs
with its own row, so one batch mixes tasks and computes what each task would alone.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from prompt_tuning import param_tree, partitioning
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.structure import check_params
from prompt_tuning.checkpoints.train_state import PROMPTS_DIR
from prompt_tuning.data.task import DataError
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import network
from prompt_tuning.runs.setup import Setup, frozen_model, task_with_splits
from prompt_tuning.runs.specs import MeshSpec, ModelSpec, TaskSpec


def read_bundles(sources: dict[str, str], names: Sequence[str]) -> dict[str, bundle_lib.PromptBundle]:
  """The bundle of each task in `names` (in that order), from ModelSpec.bundles; one line for a missing one."""
  missing = [name for name in names if name not in sources]
  if missing:
    raise DataError(
      f"no prompt bundle for task {missing[0]} (ModelSpec.bundles has {', '.join(sorted(sources)) or 'none'}); "
      f"every task evaluated needs one"
    )
  return {name: bundle_lib.read_bundle(bundle_lib.latest_bundle(sources[name], PROMPTS_DIR)) for name in names}


def build(
  model: ModelSpec, task: TaskSpec, mesh: MeshSpec, *, note: Callable[[str], None], splits: Sequence[str] = ()
) -> Setup:
  """The mesh, the task, and the frozen model with every task's trained prompt in one table (placed)."""
  device_mesh = mesh.make()
  resolved = task_with_splits(task, splits)
  names = [t.name for t in getattr(resolved, "tasks", [resolved])]
  bundles = read_bundles(dict(model.bundles or {}), names)
  placements = sorted({b.placement for b in bundles.values()})
  if len(placements) > 1:
    raise ValueError(f"the prompt bundles mix placements ({', '.join(placements)}); one table needs one placement")
  note(f"loading the frozen model from {model.checkpoint}" if model.checkpoint else "initializing the frozen model")
  config, t5_params = frozen_model(model)
  fingerprint = param_tree.fingerprint(t5_params)
  for name, bundle in bundles.items():
    bundle_lib.check_fits(bundle, config, fingerprint, f"the prompt bundle of task {name} ({model.bundles[name]})")
  lengths = tuple(int(bundles[name].prompt.shape[0]) for name in names)
  table = np.zeros((len(names), max(lengths), config.emb_dim), np.float32)
  for row, name in enumerate(names):
    table[row, : lengths[row]] = bundles[name].prompt
  prompt = PromptConfig(max(lengths), placements[0], num_tasks=len(names), task_lengths=lengths)
  module = PromptedTransformer(config, prompt_config=prompt)
  params = {**t5_params, "prompt": {"prompt": table}}
  check_params(params, network.abstract_module_params(module), "prompt table")
  note(
    f"serving {len(names)} prompt(s) from one frozen model: " + ", ".join(f"{n} ({p})" for n, p in zip(names, lengths))
  )
  shardings = partitioning.logical_to_sharding(network.module_logical_axes(module), device_mesh)
  return Setup(
    device_mesh,
    resolved,
    EncoderDecoderModel(module, model.loss),
    config,
    jax.device_put(params, shardings),
    prompt_ids={name: row for row, name in enumerate(names)},
  )
