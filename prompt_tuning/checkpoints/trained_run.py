"""A training run's MODEL_DIR as a model checkpoint: model tuning and LM adaptation feed prompt tuning.

A run that trained the T5 weights (`TRAINABLE_PARAMS = '.*'`: runs/model_finetune.gin,
runs/lm_adaptation.gin) leaves them in MODEL_DIR/checkpoints/<step>/ beside its optimizer state,
with the model's config in MODEL_DIR/run_config.json. As t5x takes a model directory or one of its
checkpoint_<step>/ directories, INITIAL_CHECKPOINT_PATH (and `convert`, `generate`,
`load_pretrained`) takes MODEL_DIR (its latest good checkpoint) or MODEL_DIR/checkpoints/<step>.
What the run trained is restored from the checkpoint (verified against its checksums); weights it
did not train come from its own initial checkpoint (or its random init); the run's prompt is not
part of the model and is left out.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import numpy as np
from etils import epath

from prompt_tuning import param_tree
from prompt_tuning.checkpoints import integrity
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import (
  CHECKPOINTS_DIR,
  PARAMS_KEY,
  RUN_CONFIG_FILE,
  TrainCheckpointer,
  read_run_config,
)
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import T5Config

_STEP = re.compile(r"^\d+$")


def split_path(path: str) -> tuple[str, int | None] | None:
  """(MODEL_DIR, step or None) when `path` (local or gs://) is a training run's MODEL_DIR or
  MODEL_DIR/checkpoints/<step>; None otherwise."""
  path = str(path).rstrip("/")
  if "://" not in path:
    path = os.path.abspath(path)
  here = epath.Path(path)
  try:
    if _STEP.match(here.name) and here.parent.name == CHECKPOINTS_DIR:
      model_dir = here.parent.parent
      if (model_dir / RUN_CONFIG_FILE).is_file():
        return os.fspath(model_dir), int(here.name)
    if (here / RUN_CONFIG_FILE).is_file() and (here / CHECKPOINTS_DIR).is_dir():
      return path, None
  except OSError:  # unreadable here: not ours to claim; the t5x reader reports it in its own words
    return None
  return None


def model_config(run_config: T5Config) -> T5Config:
  """The run's model config with its run-time choices (dtypes, attention, remat, matmuls, fused projections) back at their defaults:
  the caller's run picks its own, as for any checkpoint."""
  defaults = {f.name: f.default for f in dataclasses.fields(T5Config)}
  return run_config.replace(
    **{
      k: defaults[k]
      for k in ("dtype", "param_dtype", "attention_impl", "remat_policy", "matmul_dtype", "fuse_projections")
    }
  )


def load_trained_run(path: str) -> tuple[T5Config, dict]:
  """(config, T5 params as float32 host numpy) of the run at `path` (see `split_path`)."""
  where = split_path(path)
  if where is None:
    raise CheckpointError(f"{path}: not a training run's MODEL_DIR (no {RUN_CONFIG_FILE} and {CHECKPOINTS_DIR}/)")
  model_dir, step = where
  run = read_run_config(model_dir)
  config = model_config(run.model_config)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.float32), network.abstract_params(config))
  regex = re.compile(run.trainable_params)
  flat = param_tree.flatten(abstract)
  trained = {k for k in flat if regex.fullmatch(k)}
  if not trained:
    raise CheckpointError(
      f"{model_dir} trained only its prompt (TRAINABLE_PARAMS={run.trainable_params!r}): its model is "
      f"{run.initial_checkpoint_path or 'a random init'}; use that as the checkpoint, or the run's prompt "
      f"with load_pretrained(prompt=...)"
    )
  checkpointer = TrainCheckpointer(model_dir, save_period=0, keep=None, read_only=True)
  try:  # the trained parameters, not the optimizer state; the prompt comes along and is dropped
    target = {k: flat[k] for k in trained}
    target.update(_other_trained(model_dir, checkpointer.manager.all_steps(), step, trained, run, config))
    restored, _ = checkpointer.restore_params(param_tree.unflatten(target), step)
  finally:
    checkpointer.close()
  restored = {k: v for k, v in param_tree.flatten(restored).items() if k in trained}
  if len(trained) < len(flat):  # the rest is what the run froze: its own initial model
    from prompt_tuning.checkpoints import loader

    if run.initial_checkpoint_path:
      _, initial = loader.load_checkpoint(run.initial_checkpoint_path, config)
    else:
      initial = network.init_params(run.model_config, jax.random.PRNGKey(run.seed))
    restored = {**param_tree.flatten(initial), **restored}
  return config, jax.tree.map(lambda a: np.asarray(a, np.float32), param_tree.unflatten(restored))


def _other_trained(model_dir: str, steps, step: int | None, t5_paths: set, run, config: T5Config) -> dict:
  """{path: abstract array} of what the run trained besides T5 weights (its prompt): a restore must
  name every parameter the checkpoint recorded (integrity.structure_mismatch). From the checksum
  manifest (every step of a run records the same tree); the run config's prompt shape without one."""
  manifest = integrity.read_manifest(epath.Path(model_dir), step if step is not None else max(steps)) if steps else None
  if manifest is None:
    return {"prompt/prompt": jax.ShapeDtypeStruct((run.prompt_length, config.emb_dim), np.float32)}
  prefix = f"{PARAMS_KEY}/"
  return {
    path[len(prefix) :]: jax.ShapeDtypeStruct(tuple(leaf["shape"]), np.float32)
    for path, leaf in manifest["leaves"].items()
    if path.startswith(prefix) and path[len(prefix) :] not in t5_paths
  }
