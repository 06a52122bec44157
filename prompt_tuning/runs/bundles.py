"""Many trained prompts on one frozen model: bundles -> one prompt table, placed on the mesh.

ModelSpec.bundles maps each task to its trained prompt (a bundle, a MODEL_DIR's latest bundle (of a
multi-task run: the task's own), or a PEFT adapter folder). Every bundle is checked against the
frozen model (architecture and weight fingerprint); the prompts, of any lengths, fill one [k, p_max, embed] table
(PromptConfig.task_lengths), and each example of the task (a mixture: of its member tasks) runs
with its own row, so one batch mixes tasks and computes what each task would alone. A task
mapped to a list of bundles is an ensemble: a row per member, every example run with each
(prompt_tuning/ensemble.py).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

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


def table_rows(sources: Mapping[str, Any], names: Sequence[str]) -> list[tuple[str, str, str]]:
  """(task, path, description) of each prompt-table row, for the tasks `names` (in that order) from
  ModelSpec.bundles: one row per task, or one per member for a task mapped to a list (an ensemble,
  which is evaluated on its task alone). One line for a missing task or a misplaced ensemble."""
  ensembles = [name for name, value in sources.items() if not isinstance(value, str)]
  for name in ensembles:
    if name not in names:
      raise DataError(
        f"PROMPT_BUNDLES has an ensemble for task {name}, which is not evaluated (MIXTURE_OR_TASK_NAME has "
        f"{', '.join(names)}); set MIXTURE_OR_TASK_NAME to {name}"
      )
  if ensembles and len(names) > 1:
    raise DataError(
      f"the ensemble of task {ensembles[0]} is evaluated on its task alone, not in a mixture of {', '.join(names)}; "
      f"set MIXTURE_OR_TASK_NAME to {ensembles[0]}"
    )
  missing = [name for name in names if name not in sources]
  if missing:
    raise DataError(
      f"no prompt bundle for task {missing[0]} (ModelSpec.bundles has {', '.join(sorted(sources)) or 'none'}); "
      f"every task evaluated needs one"
    )
  rows = []
  for name in names:
    if isinstance(sources[name], str):
      rows.append((name, sources[name], f"the prompt bundle of task {name} ({sources[name]})"))
    else:
      rows.extend(
        (name, path, f"member {m} of the ensemble of task {name} ({path})") for m, path in enumerate(sources[name])
      )
  return rows


def build(
  model: ModelSpec, task: TaskSpec, mesh: MeshSpec, *, note: Callable[[str], None], splits: Sequence[str] = ()
) -> Setup:
  """The mesh, the task, and the frozen model with every task's trained prompt in one table (placed).

  A task mapped to a list of bundles (an ensemble) gets a row per member: Setup.ensemble."""
  device_mesh = mesh.make()
  resolved = task_with_splits(task, splits)
  names = [t.name for t in getattr(resolved, "tasks", [resolved])]
  sources = dict(model.bundles or {})
  rows = table_rows(sources, names)
  bundles = [bundle_lib.read_bundle(bundle_lib.latest_bundle(path, PROMPTS_DIR, name)) for name, path, _ in rows]
  placements = sorted({b.placement for b in bundles})
  if len(placements) > 1:
    raise ValueError(f"the prompt bundles mix placements ({', '.join(placements)}); one table needs one placement")
  note(f"loading the frozen model from {model.checkpoint}" if model.checkpoint else "initializing the frozen model")
  config, t5_params = frozen_model(model)
  fingerprint = param_tree.fingerprint(t5_params)
  for (_, _, description), bundle in zip(rows, bundles):
    bundle_lib.check_fits(bundle, config, fingerprint, description)
  lengths = tuple(int(b.prompt.shape[0]) for b in bundles)
  table = np.zeros((len(rows), max(lengths), config.emb_dim), np.float32)
  for row, bundle in enumerate(bundles):
    table[row, : lengths[row]] = bundle.prompt
  prompt = PromptConfig(max(lengths), placements[0], num_tasks=len(rows), task_lengths=lengths)
  module = PromptedTransformer(config, prompt_config=prompt)
  params = {**t5_params, "prompt": {"prompt": table}}
  check_params(params, network.abstract_module_params(module), "prompt table")
  ensemble = not isinstance(sources[names[0]], str)  # table_rows: an ensemble's task is evaluated alone
  note(
    f"serving {len(rows)} prompt(s) from one frozen model: "
    + ", ".join(f"{n} ({p})" for (n, _, _), p in zip(rows, lengths))
  )
  shardings = partitioning.logical_to_sharding(network.module_logical_axes(module), device_mesh)
  return Setup(
    device_mesh,
    resolved,
    EncoderDecoderModel(module, model.loss),
    config,
    jax.device_put(params, shardings),
    prompt_ids={name: row for row, name in enumerate(names)},  # an ensemble: its first member
    ensemble=tuple(range(len(rows))) if ensemble else None,
  )
