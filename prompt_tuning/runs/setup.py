"""One way in for every entry point: specs -> (mesh, task, prompted model, parameters).

`build` loads the frozen T5 (checkpoint or random), checks the task's vocabulary against it and
initializes the prompt; `build_trained` does the same and swaps in the trained subtree of a
MODEL_DIR, placed on the mesh by the logical-axis rules (for `evaluate` and `infer`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Sequence

import jax
import numpy as np
from absl import logging

from prompt_tuning import partitioning, prompt_init
from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints.structure import check_params
from prompt_tuning.checkpoints.train_state import checkpoint_dir, restore_trained
from prompt_tuning.data.sentinel import TargetSentinel
from prompt_tuning.data.task import DataError, Task
from prompt_tuning.ensemble import EnsembleEvaluator
from prompt_tuning.errors import doing
from prompt_tuning.evaluation import Evaluator
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import fp8, network
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.param_tree import flatten
from prompt_tuning.runs import multitask, preflight
from prompt_tuning.runs.specs import EvaluationSpec, MeshSpec, ModelSpec, TaskSpec, TrainSpec
from prompt_tuning.task_registry import resolve_task


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run computes with.

  params: the T5 weights (t5x names) plus {'prompt': {'prompt': [p, embed] float32}}; host numpy
    from `build`, placed on `mesh` from `build_trained`.
  config: the frozen model's T5Config, in the run's dtypes.
  prompt_ids: with a table of prompts ([k, p, embed]: runs/bundles.py, or a multi-task run's,
    runs/multitask.py), {task name: its row}.
  ensemble: the table rows of an ensemble's members (its task runs with each; prompt_tuning/ensemble.py).
  """

  mesh: jax.sharding.Mesh
  task: Task
  model: EncoderDecoderModel
  config: T5Config
  params: dict
  prompt_ids: dict[str, int] | None = None
  ensemble: tuple[int, ...] | None = None


def _quiet(message: str) -> None:
  del message


def run_dtypes(spec: ModelSpec) -> tuple[str | None, str | None]:
  """(activation dtype, parameter dtype): bfloat16 activations on accelerators unless set, and
  parameters in the activation dtype unless set; None keeps the checkpoint's (float32)."""
  activation = spec.activation_dtype
  if activation is None and jax.default_backend() != "cpu":
    activation = "bfloat16"
  return activation, spec.param_dtype or activation


def frozen_model(spec: ModelSpec, seed: int = 0) -> tuple[T5Config, dict]:
  """The frozen T5's config (in the run's dtypes and runtime settings) and weights (host numpy)."""
  activation, param = run_dtypes(spec)
  if spec.checkpoint:
    with doing(f"read INITIAL_CHECKPOINT_PATH {spec.checkpoint}"):
      config, params = loader.load_checkpoint(spec.checkpoint, spec.config, dtype=activation, param_dtype=param)
    logging.info("loaded frozen model weights from %s", spec.checkpoint)
  else:
    if spec.config is None:
      raise ValueError("no INITIAL_CHECKPOINT_PATH and no model config: set one of them")
    config = loader.resolve_config(spec.config)
    config = config.replace(**{k: v for k, v in (("dtype", activation), ("param_dtype", param)) if v is not None})
    params = network.init_params(config, jax.random.PRNGKey(seed))
  settings = (
    ("attention_impl", spec.attention_impl),
    ("remat_policy", spec.remat_policy),
    ("matmul_dtype", spec.matmul_dtype),
    ("fuse_projections", spec.fuse_projections),
  )
  runtime = {k: v for k, v in settings if v is not None}
  config = config.replace(**runtime) if runtime else config
  # FP8 matmuls give the layers' kernels no gradient: model tuning with them would silently freeze them.
  paths = flatten(params)
  fp8.check_frozen(config.matmul_dtype, paths, spec.trainable_params)
  # A position bias that does not train needs no gradient (cuDNN's attention then skips computing it).
  config = config.replace(position_bias_gradient=trains_position_bias(paths, spec.trainable_params))
  return config, params


def trains_position_bias(paths: Iterable[str], trainable_pattern: str) -> bool:
  """Whether `trainable_pattern` (a full-path regex) trains a relative position bias among `paths`."""
  try:
    regex = re.compile(trainable_pattern)
  except re.error:
    return True  # param_tree.split_trainable names the bad regex
  return any(regex.fullmatch(path) for path in paths if "/relpos_bias/" in path)


def task_with_splits(task: TaskSpec, splits: Sequence[str]) -> Task:
  """The registered task of `task`, checked to have `splits` before anything is loaded (one line if not);
  with `target_sentinel`, wrapped so its targets start with <extra_id_0> (data/sentinel.py)."""
  with doing(f"read the data of task {task.name}"):
    resolved = resolve_task(task.name, task.module, task.vocabulary_path)
    if task.target_sentinel:
      resolved = TargetSentinel(resolved)
  missing = [split for split in dict.fromkeys(splits) if split not in resolved.splits]
  if missing:
    raise DataError(
      f"task {resolved.name} has no split {missing[0]!r} (splits: {', '.join(resolved.splits)}); "
      f"set EvaluationSpec.split to one of them"
    )
  return resolved


def build(
  model: ModelSpec,
  task: TaskSpec,
  mesh: MeshSpec,
  *,
  seed: int = 0,
  note: Callable[[str], None] = _quiet,
  splits: Sequence[str] = (),
  trained_in: str | None = None,
) -> Setup:
  """The mesh, the task, and the prompted model with its initial parameters (host numpy).

  seed: random frozen weights use it, the prompt initializer seed + 1.
  note: prints a line before the slow part (loading the checkpoint).
  splits: the task's splits the run reads, checked before the model is loaded.
  trained_in: a MODEL_DIR whose training this run continues or reads: its prompt settings are
    checked before the model is loaded, the frozen model's architecture after (preflight.same_run).
  """
  device_mesh = mesh.make()
  resolved = task_with_splits(task, splits)
  tasks = None
  if model.prompt.per_task:  # before the model is loaded: a single task is refused in one line
    tasks = tuple(multitask.member_tasks(resolved))
    if "train" in splits:
      multitask.check_splits(resolved)
  same = dict(prompt_tasks=tasks, shared_length=model.prompt.shared_length)
  if trained_in is not None:
    preflight.same_run(trained_in, model.prompt.length, model.prompt.placement, model.trainable_params, **same)
  note(
    f"loading the frozen model from {model.checkpoint}"
    if model.checkpoint
    else f"initializing the frozen model at random (no initial checkpoint), seed {seed}"
  )
  config, t5_params = frozen_model(model, seed)
  if trained_in is not None:
    preflight.same_run(trained_in, model.prompt.length, model.prompt.placement, model.trainable_params, config, **same)
  vocab_size = resolved.vocabulary.vocab_size
  if vocab_size is not None and vocab_size > config.vocab_size:
    raise ValueError(f"the task vocabulary has {vocab_size} ids but the model only {config.vocab_size}")
  embedding = np.asarray(t5_params["token_embedder"]["embedding"], np.float32)
  init_fn = model.prompt.init(embedding=embedding, tokenize=resolved.vocabulary.encode)
  prompt_ids = None
  if model.prompt.per_task:  # a table, one row per task of the mixture (runs/multitask.py)
    prompt, prompt_params, prompt_ids = multitask.initial_prompt(model.prompt, resolved, init_fn, config.emb_dim, seed)
  else:
    prompt = PromptConfig(model.prompt.length, model.prompt.placement)
    # The prompt is kept in float32 whatever the frozen weights are (PromptedTransformer.prompt_param_dtype).
    prompt_params = {
      "prompt": np.asarray(init_fn(jax.random.PRNGKey(seed + 1), (prompt.length, config.emb_dim)), np.float32)
    }
  module = PromptedTransformer(config, prompt_config=prompt)
  params = {**t5_params, "prompt": prompt_params}
  check_params(params, network.abstract_module_params(module), "prompted model")
  return Setup(device_mesh, resolved, EncoderDecoderModel(module, model.loss), config, params, prompt_ids)


def build_trained(
  model_dir: str,
  model: ModelSpec,
  task: TaskSpec,
  mesh: MeshSpec,
  *,
  checkpoint_step: int | None = None,
  note: Callable[[str], None] = _quiet,
  splits: Sequence[str] = (),
) -> tuple[Setup, int]:
  """`build` with the trained subtree of MODEL_DIR's checkpoint (default: the latest) swapped in,
  every parameter placed on the mesh by the logical-axis rules. Returns (setup, the restored step).

  splits: the task's splits the run reads, checked before anything is loaded.
  """
  preflight.trained_model_dir(model_dir)  # before loading: a mistyped MODEL_DIR is not created
  # The prompt's value is replaced by the trained one, so the cheapest initializer does.
  cheap = dataclasses.replace(model, prompt=dataclasses.replace(model.prompt, init=prompt_init.random_uniform))
  setup = build(cheap, task, mesh, note=note, splits=splits, trained_in=model_dir)
  params, step = restore_trained(model_dir, setup.params, model.trainable_params, checkpoint_step)
  note(f"restored the trained parameters of step {step} from {checkpoint_dir(model_dir, step)}")
  shardings = partitioning.logical_to_sharding(network.module_logical_axes(setup.model.module), setup.mesh)
  return dataclasses.replace(setup, params=jax.device_put(params, shardings)), step


def evaluator(
  setup: Setup,
  task: TaskSpec,
  evaluation: EvaluationSpec,
  *,
  train_batch_size: int = TrainSpec.batch_size,
  rank_classification: bool | None = None,
  note: Callable[[str], None] = _quiet,
) -> Evaluator:
  """The Evaluator of `evaluation` on the setup's model, task and mesh (an EnsembleEvaluator for an
  ensemble's setup).

  train_batch_size: the batch size when `evaluation.batch_size` is None.
  rank_classification: overrides `evaluation.rank_classification` when given (infer: False).
  """
  members = {} if setup.ensemble is None else {"members": setup.ensemble}
  return (Evaluator if setup.ensemble is None else EnsembleEvaluator)(
    setup.model,
    setup.task,
    task.feature_lengths,
    evaluation.batch_size_or(train_batch_size),
    decode_method=evaluation.decode_method,
    decode_options=evaluation.decode_options,
    rank_classification=evaluation.rank_classification if rank_classification is None else rank_classification,
    mesh=setup.mesh,
    note=note,
    prompt_ids=setup.prompt_ids,
    length_buckets=task.buckets(),
    **members,
  )
