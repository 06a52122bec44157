"""Test-side writers of the two t5x checkpoint layouts (the library only reads).

`write_t5x_checkpoint` mimics t5x's legacy msgpack + zarr layout byte for byte
where it matters to a reader; `write_orbax_t5x_checkpoint` mimics t5x's orbax
layout (`checkpoint_<step>/state/`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import serialization

from prompt_tuning.param_tree import flatten, unflatten


def _zarr_dtype(dtype: np.dtype) -> str:
  """Zarr v2 dtype string as t5x writes it: '<f4' etc., 'bfloat16' for bfloat16."""
  return "bfloat16" if dtype == ml_dtypes.bfloat16 else dtype.str


def _write_zarr(array: np.ndarray, step_dir: str, name: str) -> dict[str, Any]:
  """Writes `array` to step_dir/name as gzip zarr; returns the *relative* spec t5x stores."""
  metadata = {
    "shape": list(array.shape),
    "chunks": [max(1, math.ceil(d / 2)) for d in array.shape],  # several chunks per array
    "dtype": _zarr_dtype(array.dtype),
    "compressor": {"id": "gzip", "level": 1},
  }
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(step_dir, name)}, "metadata": metadata}
  store = ts.open(spec, create=True, delete_existing=True).result()
  store.write(array).result()
  return {
    "driver": "zarr",
    "dtype": np.dtype(array.dtype).name,
    "kvstore": {"driver": "file", "path": name},
    "metadata": metadata,
  }


def _adafactor_state(array: np.ndarray) -> dict[str, np.ndarray]:
  """Small factored second-moment stand-ins, shaped as t5x's Adafactor stores them."""
  if array.ndim >= 2:
    return {
      "v": np.zeros((1,), np.float32),
      "v_col": np.zeros(array.shape[-1:], np.float32),
      "v_row": np.zeros(array.shape[:-1], np.float32),
    }
  return {
    "v": np.zeros(array.shape, np.float32),
    "v_col": np.zeros((1,), np.float32),
    "v_row": np.zeros((1,), np.float32),
  }


def write_t5x_checkpoint(
  params: Mapping[str, Any], model_dir: str, step: int, *, zarr_min_size: int, dtype: Any = None
) -> str:
  """Writes `model_dir/checkpoint_<step>` in t5x's legacy msgpack + zarr layout.

  Args:
    params: nested dict of numpy arrays (the t5x `target` tree).
    model_dir: parent directory; created if missing.
    step: training step, names the directory.
    zarr_min_size: arrays with at least this many elements go to zarr, the rest inline.
    dtype: optional dtype (e.g. 'bfloat16') every parameter is cast to before saving.

  Returns:
    The step directory.
  """
  step_dir = os.path.join(os.path.abspath(model_dir), f"checkpoint_{step}")
  os.makedirs(step_dir, exist_ok=True)
  target, param_states = {}, {}
  for path, value in flatten(params).items():
    array = np.asarray(value)
    if dtype is not None:
      array = array.astype(np.dtype(dtype))
    if array.size >= zarr_min_size:
      target[path] = _write_zarr(array, step_dir, "target." + path.replace("/", "."))
    else:
      target[path] = array
    param_states[path] = _adafactor_state(array)
  state = {
    "optimizer": {
      "target": unflatten(target),
      "state": {"step": np.asarray(step, np.int32), "param_states": unflatten(param_states)},
    },
    "version": 3,
  }
  with open(os.path.join(step_dir, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(state))
  return step_dir


def write_orbax_t5x_checkpoint(
  params: Mapping[str, Any],
  model_dir: str,
  step: int,
  *,
  under_optimizer: bool = False,
  as_jax: bool = False,
  use_ocdbt: bool = True,
  param_states: bool = False,
) -> str:
  """Writes `model_dir/checkpoint_<step>/state` as an orbax PyTree checkpoint.

  Args:
    params: nested dict of numpy arrays.
    model_dir: parent directory.
    step: training step.
    under_optimizer: nest the tree as `{'optimizer': {'target', 'state'}}`.
    as_jax: save jax.Arrays (with sharding metadata, as t5x does) instead of numpy.
    use_ocdbt: orbax's default single OCDBT store; False gives one zarr directory per array.
    param_states: add Adafactor-like optimizer state arrays under `state/param_states`.

  Returns:
    The step directory.
  """
  step_dir = os.path.join(os.path.abspath(model_dir), f"checkpoint_{step}")
  target = jax.tree.map(jax.numpy.asarray, dict(params)) if as_jax else dict(params)
  tree = {"target": target, "state": {"step": np.int32(step)}}
  if param_states:
    tree["state"]["param_states"] = unflatten({p: _adafactor_state(np.asarray(a)) for p, a in flatten(params).items()})
  if under_optimizer:
    tree = {"optimizer": tree}
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt))
  checkpointer.save(os.path.join(step_dir, "state"), tree)
  checkpointer.close()
  return step_dir
