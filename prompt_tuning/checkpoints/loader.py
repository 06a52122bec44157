"""One entry point for every checkpoint kind: detect the format, read, check.

Formats:
  native  a directory with t5_config.json + params/ (see native.py)
  hf      a HuggingFace directory with config.json (see hf.py), also named by a hub
          model id or hub-cache folder resolved offline (see hub.py)
  t5x     checkpoint_<step>/ (msgpack + zarr, or orbax state/), or its parent (see t5x.py);
          model settings from the run's saved config.gin when present (see t5x_gin.py)
  run     a MODEL_DIR of ours whose run trained the T5 weights (model tuning, LM adaptation),
          or its checkpoints/<step>/ (see trained_run.py)

Whose config wins: HF and native checkpoints carry their own; a config passed
in replaces it (it must fit the arrays), except a `RandomInitConfig`, which only
applies without a checkpoint. A t5x checkpoint needs one passed in unless its
run's config.gin names the sizes.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import jax
import numpy as np
from absl import logging

from prompt_tuning.checkpoints import hf, hub, native, trained_run
from prompt_tuning.checkpoints.structure import CheckpointError, check_params
from prompt_tuning.models.t5 import network
from prompt_tuning.models.t5.config import NAMED_CONFIGS, RandomInitConfig, T5Config, get_config
from prompt_tuning.param_tree import flatten

ConfigSpec = str | T5Config | RandomInitConfig | None
# Fields that describe how a run computes, not the checkpoint's architecture.

_STEP_DIR = re.compile(r"^checkpoint_\d+$")


def detect_format(path: str) -> str:
  """Returns 'native', 'hf', 't5x' or 'run' for a checkpoint path (or hub id); CheckpointError if none fits."""
  path = hub.resolve(path)
  if path.startswith("gs://"):  # remote checkpoints are t5x's public ones or our runs; HF and native are local
    return "run" if trained_run.split_path(path) is not None else "t5x"
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: checkpoint path does not exist")
  if os.path.isfile(path):
    if os.path.basename(path) == "checkpoint":
      return "t5x"  # the msgpack file of a legacy t5x step directory
    raise CheckpointError(f"{path}: is a file; pass the checkpoint directory")
  if native.is_native_checkpoint(path):
    return "native"
  if trained_run.split_path(path) is not None:
    return "run"
  if hf.is_hf_checkpoint(path):
    return "hf"
  if (
    os.path.isfile(os.path.join(path, "checkpoint"))
    or os.path.isdir(os.path.join(path, "state"))
    or any(_STEP_DIR.match(name) for name in os.listdir(path))
  ):
    return "t5x"
  raise CheckpointError(
    f"{path}: not a recognised checkpoint (no t5_config.json, config.json, checkpoint_<step>/, checkpoint or state/)"
  )


def read_config_file(path: str) -> T5Config:
  """A T5Config from a JSON file: our t5_config.json (as `convert` writes it) or an HF config.json."""
  try:
    with open(path) as f:
      values = json.load(f)
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read the config file ({e.strerror or e})") from None
  except ValueError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(values, dict):
    raise CheckpointError(f"{path}: expected a JSON object of config fields")
  if "d_model" in values or "model_type" in values:  # HF's field names
    try:
      return hf.config_from_hf(values)
    except KeyError as e:
      raise CheckpointError(f"{path}: missing field {e.args[0]!r}") from None
  try:
    return T5Config.from_dict(values)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: {e}") from None


def resolve_config(config: ConfigSpec) -> T5Config | None:
  """A named config, a T5Config, a RandomInitConfig's config or a .json config file -> T5Config."""
  if config is None or isinstance(config, T5Config):
    return config
  if isinstance(config, RandomInitConfig):
    return config.config
  if isinstance(config, str) and config not in NAMED_CONFIGS and (config.endswith(".json") or os.path.isfile(config)):
    return read_config_file(config)
  try:
    return get_config(config)
  except ValueError as e:
    raise ValueError(f"{e} (or a t5_config.json / HF config.json file)") from None


def _announce(message: str) -> None:
  """A line the user should see (which config was used), once per run."""
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)


def _architecture_diff(given: T5Config, own: T5Config) -> list[str]:
  return [
    f"{name}={mine!r} (the checkpoint's: {theirs!r})" for name, mine, theirs in given.architecture_differences(own)
  ]


def _own_config_hint(given: T5Config | None, own: T5Config | None) -> str:
  """Why a passed config that does not fit the arrays failed, and the fix, when the checkpoint has its own."""
  if given is None or own is None:
    return ""
  diff = _architecture_diff(given, own)
  return (
    (
      f"; the config passed in says {diff[0]}: leave MODEL_CONFIG / --config / config= unset to use "
      f"the checkpoint's own"
    )
    if diff
    else ""
  )


def load_checkpoint(
  path: str, config: ConfigSpec = None, *, dtype: str | None = None, param_dtype: str | None = None
) -> tuple[T5Config, Any]:
  """Reads any supported checkpoint into (config, params).

  Args:
    path: a native, HF or t5x checkpoint (local, or gs:// for t5x), or an HF hub
      model id / hub-cache folder already downloaded (resolved offline).
    config: a named config, a T5Config or a .json config file. HF and native
      checkpoints carry their own, which a config passed in replaces (its
      arrays must fit it; a RandomInitConfig is ignored). t5x checkpoints need
      one unless their run's config.gin names the sizes; its relative-attention
      settings always win.
    dtype: if given, the activation dtype ('float32', 'bfloat16'), and the parameters' unless
      param_dtype is given.
    param_dtype: if given, the dtype the weights are stored in.
  Returns:
    (config, params) with params a nested dict of arrays in config.param_dtype.
  """
  path = hub.resolve(path)
  fmt = detect_format(path)
  config = None if isinstance(config, RandomInitConfig) else resolve_config(config)
  own = None
  if fmt == "native":
    own = native.read_native_config(path)
  elif fmt == "run":
    own, params = trained_run.load_trained_run(path)
  elif fmt == "hf":
    own, params = hf.load_hf(path)
  else:
    from prompt_tuning.checkpoints import t5x, t5x_gin  # tensorstore/msgpack only when needed

    config, message = t5x_gin.config_for_checkpoint(path, t5x.find_step_dir(path), config)  # before the arrays
    _announce(message)
    params = t5x.load_t5x_params(path)
  given = config if own is not None else None  # a config passed in that replaces the checkpoint's own
  config = config or own
  param_dtype = param_dtype or dtype
  config = config.replace(**{k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None})
  target = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, config.parameter_dtype), network.abstract_params(config)
  )
  try:
    if fmt == "native":
      params = native.load_native(path, target)
    else:
      check_params(params, target, path)
  except CheckpointError as e:
    raise CheckpointError(f"{e}{_own_config_hint(given, own)}") from None
  if given is not None and _architecture_diff(given, own):  # it fits the arrays, but computes otherwise
    logging.warning("%s: using the config passed in, whose %s", path, "; ".join(_architecture_diff(given, own)))
  if fmt == "native":
    return config, params
  _check_finite(params, path)
  return config, jax.tree.map(lambda a: np.asarray(a, config.parameter_dtype), params)


def _check_finite(params: Any, source: str) -> None:
  for name, value in flatten(params).items():
    value = np.asarray(value)
    if value.dtype.kind == "f" and not np.isfinite(value).all():
      raise CheckpointError(f"{source}: parameter {name} holds NaN or infinite values; the checkpoint is corrupt")
