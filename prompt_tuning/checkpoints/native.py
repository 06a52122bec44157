"""The native model format: an orbax checkpoint of our parameters plus our config.

Layout of a native directory:
  t5_config.json   our T5Config as JSON
  params/          orbax (OCDBT) checkpoint of the parameter tree

Restoring takes an abstract target, so each array can be placed straight onto
its sharding (no host round trip of the whole model).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from prompt_tuning.checkpoints.structure import CheckpointError, check_params
from prompt_tuning.errors import first_line
from prompt_tuning.models.t5.config import T5Config

CONFIG_FILE = "t5_config.json"
PARAMS_DIR = "params"


def is_native_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_native_config(path: str) -> T5Config:
  file = os.path.join(path, CONFIG_FILE)
  try:
    with open(file) as f:
      return T5Config.from_dict(json.load(f))
  except FileNotFoundError:
    raise CheckpointError(f"{path}: no {CONFIG_FILE}; not a native prompt_tuning checkpoint") from None
  except ValueError as e:
    raise CheckpointError(f"{file}: {e}") from None


def save_native(path: str, config: T5Config, params: Any) -> None:
  """Writes config and params to `path` (must not exist yet, so nothing is overwritten)."""
  import orbax.checkpoint as ocp

  path = os.path.abspath(path)
  if os.path.exists(path):
    raise CheckpointError(f"{path}: already exists; choose a new destination")
  os.makedirs(path)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, PARAMS_DIR), params)
  # The config goes last: a directory without it is not mistaken for a finished checkpoint.
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    f.write(config.to_json())


def load_native(path: str, target: Any) -> Any:
  """Restores params into the structure of `target`.

  Args:
    target: nested dict of jax.ShapeDtypeStruct (optionally with `.sharding`)
      giving the expected shapes, the dtype to restore to, and placement.
  """
  import orbax.checkpoint as ocp

  params_dir = os.path.join(os.path.abspath(path), PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{path}: no {PARAMS_DIR}/ directory; the checkpoint is incomplete")
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      stored = checkpointer.metadata(params_dir)
      stored_tree = getattr(stored, "item_metadata", stored)
      stored_tree = getattr(stored_tree, "tree", stored_tree)
    except Exception as e:
      raise CheckpointError(f"{params_dir}: unreadable orbax metadata ({first_line(e, typed=True)})") from None
    if not isinstance(stored_tree, dict):
      raise CheckpointError(f"{params_dir}: orbax metadata is missing or incomplete; the checkpoint is corrupt")
    check_params(_as_shapes(stored_tree), target, path)
    target = jax.tree.map(_with_default_sharding, target)
    try:
      return checkpointer.restore(params_dir, target)
    except Exception as e:
      raise CheckpointError(f"{params_dir}: cannot restore parameters ({first_line(e, typed=True)})") from None


def _as_shapes(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _as_shapes(v) for k, v in tree.items()}
  return jax.ShapeDtypeStruct(tuple(tree.shape), np.dtype(tree.dtype))


def _with_default_sharding(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  if getattr(leaf, "sharding", None) is not None:
    return leaf
  device = jax.local_devices()[0]
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=jax.sharding.SingleDeviceSharding(device))
