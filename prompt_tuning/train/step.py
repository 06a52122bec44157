"""The train step: gradients with respect to the trainable subtree only.

`make_train_step` returns a pure function; `compile_train_step` jits it over a
device Mesh with explicit shardings (frozen weights by the logical-axis
rules, batches over the data axis, the small trainable state replicated) and
donates the state buffers. One device is a 1x1 mesh.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import partitioning
from prompt_tuning.models.model import EncoderDecoderModel, num_examples
from prompt_tuning.param_tree import merge_params
from prompt_tuning.train import guard as guard_lib
from prompt_tuning.train.state import TrainState

Batch = dict[str, jax.Array]
METRIC_SUMS = ("loss_sum", "z_loss_sum", "correct_tokens", "num_tokens")
TASK_SUMS = ("task_loss_sum", "task_correct_tokens", "task_num_tokens")  # [k] each, multi-task runs only


def make_train_step(
  model: EncoderDecoderModel,
  tx: optax.GradientTransformation,
  schedule: Callable[[Any], Any],
  skip_nonfinite: int = 0,
  num_tasks: int | None = None,
) -> Callable:
  """(state, frozen, batch, rng) -> (state, metrics). Dropout uses fold_in(rng, step).

  With `num_tasks` k (a multi-task prompt table; batches carry task_ids), the metrics also hold
  the sums per task (TASK_SUMS, each [k]), for `summarize`'s per-task loss and accuracy.

  A step whose loss, gradient norm or updated state is not finite is not applied: the state keeps
  its parameters and optimizer state (its step still advances), the step's metric sums count as
  zero, metrics['skipped_steps'] is 1, and state.guard records it (train/guard.py; with
  `skip_nonfinite` = N, the (N+1)-th such step in a row marks the run to stop).
  """

  def train_step(state: TrainState, frozen: Any, batch: Batch, rng: jax.Array) -> tuple[TrainState, dict]:
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(trainable):
      return model.loss(merge_params(trainable, frozen), batch, dropout_rng, num_tasks)

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    learning_rate = schedule(state.step)
    reason, value = guard_lib.check_step(loss, grad_norm, params, opt_state)
    applied = reason == 0

    # Not applied when non-finite: the state stays the last good one, so whatever the loop writes
    # at its next boundary is finite, with no copy of the state and no host sync per step.
    def if_applied(new, old):
      return jnp.where(applied, new, old)

    guard = guard_lib.advance(state.guard, reason, value, state.step + 1, learning_rate, skip_nonfinite)
    metrics = dict(
      jax.tree.map(lambda x: if_applied(x, jnp.zeros_like(x)), sums),
      loss=loss,
      grad_norm=grad_norm,
      learning_rate=learning_rate,
      examples=num_examples(batch),  # packed rows hold several
      skipped_steps=1.0 - applied.astype(jnp.float32),
    )
    new_state = TrainState(
      step=state.step + 1,
      params=jax.tree.map(if_applied, params, state.params),
      opt_state=jax.tree.map(if_applied, opt_state, state.opt_state),
      guard=guard,
    )
    return new_state, metrics

  return train_step


def compile_train_step(train_step: Callable, mesh: Mesh, frozen_shardings: Any) -> Callable:
  """jit with shardings: state replicated (donated), frozen by rules, batch on the data axis."""
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = partitioning.data_sharding(mesh)
  return jax.jit(
    train_step,
    in_shardings=(replicated, frozen_shardings, batch_sharding, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )


def batch_spec(lengths: Mapping[str, int], batch_size: int, mesh: Mesh, task_ids: bool = False) -> dict[str, Any]:
  """The abstract global batch the train step sees for {'inputs': n, 'targets': m}: int32
  encoder_input_tokens [batch, n], decoder_* [batch, m] (and task_ids [batch]), split over the
  data axis as partitioning.to_global_batch places them."""
  from prompt_tuning.data.features import BATCH_KEYS  # here: importing the benchmark keeps the data layer out

  sharding = partitioning.data_sharding(mesh)
  shapes = {key: (batch_size, lengths["inputs" if key == "encoder_input_tokens" else "targets"]) for key in BATCH_KEYS}
  if task_ids:
    shapes["task_ids"] = (batch_size,)
  return {key: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for key, shape in shapes.items()}


class PrecompiledStep:
  """The jitted train step, with executables compiled ahead for known batch shapes.

  A call whose batch has one of those shapes runs its executable directly; any other falls back
  to the jitted step (which compiles it then). Why not just warm the jit: its first call on a
  shape traces and lowers the step again, even when `lower().compile()` already built it (75-100 ms
  for the tiny test model on CPU, more for a big one) at the first batch of each bucket, mid-run.
  """

  def __init__(self, jitted: Callable, executables: Mapping[tuple, Any]):
    self.jitted = jitted
    self.executables = dict(executables)

  def __call__(self, state: TrainState, frozen: Any, batch: Mapping[str, jax.Array], rng: jax.Array) -> Any:
    executable = self.executables.get(_shapes(batch))
    return (executable or self.jitted)(state, frozen, batch, rng)


def _shapes(batch: Mapping[str, Any]) -> tuple:
  return tuple(sorted((key, tuple(value.shape)) for key, value in batch.items()))


def compile_ahead(
  train_step: Callable, state: TrainState, frozen: Any, rng: jax.Array, batches: Sequence[dict[str, Any]]
) -> tuple[PrecompiledStep, float]:
  """Compiles the jitted `train_step` for each abstract batch (`batch_spec`), so no step compiles
  or traces later. Nothing runs and nothing is donated. Returns the step to call in its place
  (`PrecompiledStep`) and the seconds it took."""
  start = time.perf_counter()
  executables = {_shapes(batch): train_step.lower(state, frozen, batch, rng).compile() for batch in batches}
  return PrecompiledStep(train_step, executables), time.perf_counter() - start


def accumulate(total: dict | None, metrics: dict) -> dict:
  """Running metric sums on device (no host sync); last values for loss/lr/grad_norm.

  A skipped (non-finite) step's sums are zero, and the last values stay those of the last
  applied step, so a period's summary is over the steps applied.
  """
  if total is None:
    return dict(metrics)
  out = dict(metrics)
  for key in (*METRIC_SUMS, *(k for k in TASK_SUMS if k in metrics), "examples", "skipped_steps"):
    out[key] = total[key] + metrics[key]
  skipped = metrics["skipped_steps"] > 0
  for key in ("loss", "grad_norm"):
    out[key] = jnp.where(skipped, total[key], metrics[key])
  return out


def summarize(total: dict, task_names: Sequence[str] = ()) -> dict[str, float]:
  """Host-side scalars for a logging period: per-token loss, z_loss and accuracy, and skipped steps.

  A period whose steps were all skipped has no loss, accuracy or gradient norm to report.
  task_names: with per-task sums, the name of each row: '<task>/loss' and '<task>/token_accuracy'
  for every task with target tokens in the period.
  """
  values = jax.device_get(total)
  out = {"learning_rate": float(values["learning_rate"]), "skipped_steps": int(values["skipped_steps"])}
  tokens = float(values["num_tokens"])
  if tokens > 0:
    out.update(
      loss=float(values["loss_sum"]) / tokens,
      z_loss=float(values["z_loss_sum"]) / tokens,
      token_accuracy=float(values["correct_tokens"]) / tokens,
    )
  if task_names and "task_num_tokens" in values:
    for name, tokens, loss_sum, correct in zip(
      task_names, values["task_num_tokens"], values["task_loss_sum"], values["task_correct_tokens"]
    ):
      if tokens > 0:
        out[f"{name}/loss"] = float(loss_sum) / float(tokens)
        out[f"{name}/token_accuracy"] = float(correct) / float(tokens)
  if np.isfinite(values["grad_norm"]):
    out["grad_norm"] = float(values["grad_norm"])
  return out
