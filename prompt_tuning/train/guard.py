"""The divergence guard: a non-finite step is never applied, and the run stops before writing anything.

The train step (train/step.py) checks, on the device, that its loss, its gradient norm and the
updated state (trainable parameters and optimizer state) are finite. A step that is not is
*not applied*: the state stays the last good one. `Guard`, a few int32/float32 scalars carried in
the TrainState, records what happened; the loop reads it (one small transfer) only where it is
about to write something (a metrics record, an evaluation, a checkpoint and its prompt), and
`diverged` turns it into one line when the run must stop.

Why this is both correct and cheap:
- Correct: the state on the device is finite at every step boundary, whatever the last steps
  did, so nothing non-finite can be written even if the loop looks at the guard late; and the
  loop looks before every write, so a diverged run writes nothing after its last good boundary.
- Cheap: the checks are reductions over the (small) trainable state inside the jitted step, and
  the select that keeps the old state is elementwise; no copy of the state is kept, and no host
  sync is added: the loop already syncs at those boundaries (metrics, evaluation, checkpoint).

With `skip_limit` = 0 (the default) the first non-finite step stops the run (at the next
boundary, before anything is written). With `skip_limit` = N, up to N non-finite steps in a row
are skipped (counted as train/skipped_steps); the (N+1)-th in a row stops it. A skipped step
leaves the optimizer state as it was, its step count (and so its learning-rate schedule)
included, as optax.apply_if_finite does. The counts start afresh when a run resumes (they are not
checkpointed: they say nothing about the state).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.param_tree import flatten

# What was not finite (the first of these, in this order), by code.
LOSS, GRAD_NORM, PARAMS, OPT_STATE = 1, 2, 3, 4


class DivergenceError(ValueError):
  """Training produced (or started from) non-finite values; nothing non-finite was written."""


@flax.struct.dataclass
class Guard:
  """Device scalars about non-finite steps since the run (re)started.

  skipped: int32, non-finite steps not applied; consecutive: int32, of them the latest run in a row.
  failed_step: int32, the step at which the run must stop (-1: it need not); reason: int32, what
  was non-finite at that step (LOSS, GRAD_NORM, PARAMS, OPT_STATE); value: float32, the loss or
  gradient norm there, or the number of non-finite values in the parameters / optimizer state;
  learning_rate: float32, the learning rate of that step.
  """

  skipped: jax.Array
  consecutive: jax.Array
  failed_step: jax.Array
  reason: jax.Array
  value: jax.Array
  learning_rate: jax.Array

  @classmethod
  def create(cls) -> Guard:
    i, f = np.int32, np.float32  # host numpy: placed with the state (replicated) by the step's jit
    return cls(i(0), i(0), i(-1), i(0), f(0), f(0))


def _count_nonfinite(tree: Any) -> jax.Array:
  counts = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return sum(counts, jnp.int32(0)).astype(jnp.int32)


def check_step(loss: jax.Array, grad_norm: jax.Array, params: Any, opt_state: Any) -> tuple[jax.Array, jax.Array]:
  """(reason, value) of one step, inside jit: reason 0 when all is finite, else the first culprit's code.

  A finite gradient norm implies finite gradients (an inf or nan in any of them makes it so).
  """
  bad_params, bad_opt = _count_nonfinite(params), _count_nonfinite(opt_state)
  reason = jnp.select(
    [~jnp.isfinite(loss), ~jnp.isfinite(grad_norm), bad_params > 0, bad_opt > 0],
    [jnp.int32(LOSS), jnp.int32(GRAD_NORM), jnp.int32(PARAMS), jnp.int32(OPT_STATE)],
    jnp.int32(0),
  )
  values = jnp.stack([jnp.float32(0), loss, grad_norm, bad_params, bad_opt]).astype(jnp.float32)
  return reason, values[reason]


def advance(
  guard: Guard, reason: jax.Array, value: jax.Array, step: jax.Array, lr: jax.Array, skip_limit: int
) -> Guard:
  """The guard after `step` (the step's number once done, 1-based), inside jit."""
  bad = reason > 0
  consecutive = jnp.where(bad, guard.consecutive + 1, 0)
  first_failure = bad & (consecutive > skip_limit) & (guard.failed_step < 0)

  def at_failure(new, old):
    return jnp.where(first_failure, jnp.asarray(new, old.dtype), old)

  return Guard(
    skipped=guard.skipped + bad.astype(jnp.int32),
    consecutive=consecutive.astype(jnp.int32),
    failed_step=at_failure(step, guard.failed_step),
    reason=at_failure(reason, guard.reason),
    value=at_failure(value, guard.value),
    learning_rate=at_failure(lr, guard.learning_rate),
  )


def diverged(guard: Guard, skip_limit: int) -> str | None:
  """None while the run may go on; else what happened, in one line ('at step 7: the loss is nan').

  Reads the guard's scalars from the device (the only host sync the guard costs).
  """
  g = jax.device_get(guard)
  step = int(g.failed_step)
  if step < 0:
    return None
  reason, value, lr = int(g.reason), float(g.value), float(g.learning_rate)
  if reason == LOSS:
    what = f"the loss is {value:g}"
  elif reason == GRAD_NORM:
    what = f"the gradient norm is {value:g}"
  else:
    held = "updated trainable parameters hold" if reason == PARAMS else "updated optimizer state holds"
    what = f"the {held} {int(value)} non-finite values"
  what += f" (learning rate {lr:g})"
  if skip_limit:
    return (
      f"at step {step}: {skip_limit + 1} non-finite steps in a row, more than "
      f"TrainSpec.skip_nonfinite_steps={skip_limit} allows; the last: {what}"
    )
  return f"at step {step}: {what}"


def check_initial(trainable: Any) -> None:
  """Raises DivergenceError when a trainable parameter starts non-finite (e.g. an inf in
  prompts/from_npy's file): training on it could only write non-finite prompts."""
  for name, value in _flat(trainable).items():
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
      bad = array[~np.isfinite(array)]
      raise DivergenceError(
        f"the initial value of {name} {list(array.shape)} holds {bad.size} non-finite values "
        f"(first: {bad.flat[0]}); check the prompt initializer's input (e.g. the file of prompts/from_npy.gin)"
      )


def _flat(tree: Any) -> dict[str, Any]:
  return flatten(tree) if isinstance(tree, dict) else {"params": tree}
