"""Checking a loaded parameter tree against the one a config expects.

Every importer ends here, so every mismatch reads the same: one line naming
the first offending parameter path and both shapes.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from flax import traverse_util


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or does not fit the model. One line, naming the culprit."""


def flatten(tree: Mapping[str, Any], is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
  """Nested dicts -> {'encoder/layers_0/attention/query/kernel': leaf} (flax.traverse_util).

  `is_leaf(node)` stops the descent at dicts that are values themselves (e.g. a
  tensorstore spec). Empty dicts leave no entry.
  """
  stop = None if is_leaf is None else (lambda _, node: is_leaf(node))
  return traverse_util.flatten_dict(dict(tree), is_leaf=stop, sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `flatten`."""
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def check_params(loaded: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
  """Raises CheckpointError unless `loaded` has exactly the paths and shapes of `expected`.

  Args:
    loaded: nested dict of arrays read from a checkpoint.
    expected: nested dict of arrays or ShapeDtypeStructs (e.g. from jax.eval_shape).
    source: the checkpoint path, for the message.
  """
  got, want = flatten(loaded), flatten(expected)
  for path in sorted(want):
    if path not in got:
      raise CheckpointError(f"{source}: missing parameter {path} (expected shape {tuple(want[path].shape)})")
    got_shape, want_shape = tuple(np.shape(got[path])), tuple(want[path].shape)
    if got_shape != want_shape:
      raise CheckpointError(f"{source}: parameter {path} has shape {got_shape}, the config expects {want_shape}")
  extra = sorted(set(got) - set(want))
  if extra:
    raise CheckpointError(f"{source}: unexpected parameter {extra[0]} (shape {tuple(np.shape(got[extra[0]]))}) "
                          f"that the config does not have ({len(extra)} unexpected in all)")
