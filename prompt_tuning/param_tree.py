"""Parameter trees: flat '/'-joined paths, and the trainable/frozen split.

T5 parameters are nested dicts named as t5x names them
('encoder/layers_0/attention/query/kernel'); the prompt is 'prompt/prompt'.
Trainability is a regular expression over these paths, matched in full: the
tree splits into a trainable subtree and a frozen one, and gradients and
optimizer state exist for the trainable subtree alone, so a frozen
11B-parameter model costs no optimizer memory at all.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Mapping

import numpy as np
from flax import traverse_util

PROMPT_ONLY = r"prompt/prompt"  # prompt tuning: the paper's method
EVERYTHING = r".*"  # model tuning: the paper's baseline


def flatten(tree: Mapping[str, Any], is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
  """Nested dicts -> {'encoder/layers_0/attention/query/kernel': leaf}.

  `is_leaf(node)` stops the descent at dicts that are values themselves (e.g. a
  tensorstore spec). Empty dicts leave no entry.
  """
  stop = None if is_leaf is None else (lambda _, node: is_leaf(node))
  return traverse_util.flatten_dict(dict(tree), is_leaf=stop, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten`."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def split_trainable(params: Mapping[str, Any], trainable_pattern: str) -> tuple[dict, dict]:
  """Splits a nested param dict into (trainable, frozen) by a full-path regex.

  Raises ValueError when nothing matches (a typo would otherwise train nothing).
  """
  try:
    regex = re.compile(trainable_pattern)
  except re.error as e:
    raise ValueError(f"trainable parameter regex {trainable_pattern!r} is invalid: {e}") from None
  trainable, frozen = {}, {}
  for path, value in flatten(params).items():
    (trainable if regex.fullmatch(path) else frozen)[path] = value
  if not trainable:
    some = ", ".join(sorted(flatten(params))[:4])
    raise ValueError(f"trainable parameter regex {trainable_pattern!r} matches no parameter (paths look like {some})")
  return unflatten(trainable), unflatten(frozen)


def merge_params(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
  """Inverse of `split_trainable`: `trainable`'s leaves win where both have a path."""
  return unflatten({**flatten(frozen), **flatten(trainable)})


def fingerprint(params: Mapping[str, Any], samples_per_array: int = 256) -> str:
  """A short hash naming a frozen model's weights: every path and shape, and `samples_per_array`
  evenly spaced values of each array, rounded to bfloat16 so that float32 and bfloat16 copies of
  one checkpoint agree. Cheap for any size (it reads a few hundred values per array); the prompt
  ('prompt/...') is left out. Arrays must be host-readable (numpy, or fully addressable).
  """
  import ml_dtypes

  digest = hashlib.sha256()
  for path, value in sorted(flatten(params).items()):
    if path.split("/", 1)[0] == "prompt":
      continue
    array = np.asarray(value)
    flat = array.reshape(-1)
    index = np.linspace(0, flat.size - 1, min(flat.size, samples_per_array)).astype(np.int64) if flat.size else []
    sample = flat[index].astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    digest.update(f"{path}:{array.shape};".encode())
    digest.update(sample.tobytes())
  return digest.hexdigest()[:16]
