"""Checking a loaded parameter tree against the one a config expects.

Every importer ends here, so every mismatch reads the same: one line naming
the first offending parameter path and both shapes.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from prompt_tuning.param_tree import flatten


class CheckpointError(ValueError):
  """A checkpoint that cannot be read, or does not fit the model. One line, naming the culprit."""


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
    raise CheckpointError(
      f"{source}: unexpected parameter {extra[0]} (shape {tuple(np.shape(got[extra[0]]))}) "
      f"that the config does not have ({len(extra)} unexpected in all)"
    )
