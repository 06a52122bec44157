"""The optimizer of a multi-task prompt table: each task's row on its own, moved only by its examples.

A table [k, p, embed] trained with one optax transformation over the whole array would couple the
tasks even though each example's gradient reaches only its own row (the gather in
models/prompt.py): Adafactor clips by the RMS of the whole parameter, decays its second moments
and applies weight decay every step, and Adam's momentum keeps moving a row after its last
example. So `per_task_rows` runs the optimizer once per row (vmapped: row t is a parameter
[p, embed] with its own statistics and step count, as in a single-task run), and a row whose
gradient is exactly zero in a step (no example of its task in the batch) keeps its value and its
optimizer state bit for bit: the step does not exist for that task. Everything else trainable (the
shared part of the prompt, which every example trains) is updated by the optimizer as usual.

One consequence, by design: a task's learning-rate schedule (and Adafactor's decay schedule)
counts the steps that task was trained in, not the run's steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from prompt_tuning.param_tree import flatten, unflatten

TABLE = "prompt/prompt"  # the trainable path of the task rows [k, p, embed]


class PerTaskRowsState(NamedTuple):
  """tasks: the optimizer state of every row, each leaf with a leading [k] axis; shared: of the
  other trainable parameters (optax.EmptyState() when there are none)."""

  tasks: Any
  shared: Any


def _split(tree: Any) -> tuple[jax.Array, dict]:
  flat = flatten(tree)
  if TABLE not in flat:
    raise ValueError(f"per-task prompt rows: the trainable parameters have no {TABLE} table (paths: {sorted(flat)})")
  table = flat.pop(TABLE)
  return table, unflatten(flat)


def per_task_rows(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` applied to each row of the prompt table apart (see the module docstring), and to the
  rest of the trainable tree as a whole."""

  def init(params: Any) -> PerTaskRowsState:
    table, rest = _split(params)
    return PerTaskRowsState(tasks=jax.vmap(inner.init)(table), shared=inner.init(rest) if rest else optax.EmptyState())

  def update(updates: Any, state: PerTaskRowsState, params: Any = None) -> tuple[Any, PerTaskRowsState]:
    grads, grads_rest = _split(updates)
    table, rest = _split(params) if params is not None else (None, None)
    row_updates, row_state = jax.vmap(inner.update)(grads, state.tasks, table)
    # A row without examples in this batch has an all-zero gradient (the gather gives it none).
    present = jnp.any(grads != 0, axis=tuple(range(1, grads.ndim)))  # [k]

    def if_present(new: jax.Array, old: jax.Array) -> jax.Array:
      return jnp.where(present.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    row_state = jax.tree.map(if_present, row_state, state.tasks)
    out = {TABLE: if_present(row_updates, jnp.zeros_like(row_updates))}
    shared = state.shared
    if grads_rest:
      rest_updates, shared = inner.update(grads_rest, state.shared, rest)
      out.update(flatten(rest_updates))
    return unflatten(out), PerTaskRowsState(tasks=row_state, shared=shared)

  return optax.GradientTransformation(init, update)
