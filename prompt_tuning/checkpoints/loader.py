"""One entry point for every checkpoint kind: detect the format, read, check.

Formats:
  native  a directory with t5_config.json + params/ (see native.py)
  hf      a HuggingFace directory with config.json (see hf.py)
  t5x     checkpoint_<step>/ (msgpack + zarr, or orbax state/), or its parent (see t5x.py)
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np

from prompt_tuning.checkpoints import hf, native
from prompt_tuning.checkpoints.structure import CheckpointError, check_params, flatten
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import T5Config, get_config

_STEP_DIR = re.compile(r"^checkpoint_\d+$")


def detect_format(path: str) -> str:
  """Returns 'native', 'hf' or 't5x' for a checkpoint path; CheckpointError if none fits."""
  if path.startswith("gs://"):
    return "t5x"  # remote checkpoints are t5x's public ones; HF and native are local directories
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: checkpoint path does not exist")
  if os.path.isfile(path):
    if os.path.basename(path) == "checkpoint":
      return "t5x"  # the msgpack file of a legacy t5x step directory
    raise CheckpointError(f"{path}: is a file; pass the checkpoint directory")
  if native.is_native_checkpoint(path):
    return "native"
  if hf.is_hf_checkpoint(path):
    return "hf"
  if (os.path.isfile(os.path.join(path, "checkpoint")) or os.path.isdir(os.path.join(path, "state"))
      or any(_STEP_DIR.match(name) for name in os.listdir(path))):
    return "t5x"
  raise CheckpointError(f"{path}: not a recognised checkpoint (no t5_config.json, config.json, "
                        f"checkpoint_<step>/, checkpoint or state/)")


def resolve_config(config: str | T5Config | None) -> T5Config | None:
  return None if config is None else get_config(config)


def load_checkpoint(path: str, config: str | T5Config | None = None, *, dtype: str | None = None
                    ) -> tuple[T5Config, Any]:
  """Reads any supported checkpoint into (config, params).

  Args:
    path: a native, HF or t5x checkpoint (local, or gs:// for t5x).
    config: a named config or a T5Config. Required for t5x checkpoints, which
      carry none; for the others it must agree with the arrays (its dtype and
      dropout fields win).
    dtype: if given, the parameter and activation dtype ('float32', 'bfloat16').
  Returns:
    (config, params) with params a nested dict of arrays in config.param_dtype.
  """
  fmt = detect_format(path)
  config = resolve_config(config)
  if fmt == "native":
    config = config or native.read_native_config(path)
  elif fmt == "hf":
    hf_config, params = hf.load_hf(path)
    config = config or hf_config
  else:
    from prompt_tuning.checkpoints import t5x  # tensorstore/msgpack only when needed

    params = t5x.load_t5x_params(path)
    if config is None:
      raise CheckpointError(f"{path}: a t5x checkpoint carries no model config; pass config= "
                            f"(e.g. 't5_1_1_base') or --config")
  if dtype is not None:
    config = config.replace(dtype=dtype, param_dtype=dtype)
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, config.parameter_dtype),
                        network.abstract_params(config))
  if fmt == "native":
    return config, native.load_native(path, target)
  check_params(params, target, path)
  _check_finite(params, path)
  return config, jax.tree.map(lambda a: np.asarray(a, config.parameter_dtype), params)


def _check_finite(params: Any, source: str) -> None:
  for name, value in flatten(params).items():
    value = np.asarray(value)
    if value.dtype.kind == "f" and not np.isfinite(value).all():
      raise CheckpointError(f"{source}: parameter {name} holds NaN or infinite values; the checkpoint is corrupt")
