"""The train step: gradients with respect to the trainable subtree only.

`make_train_step` returns a pure function; `compile_train_step` jits it over a
device Mesh with explicit shardings (frozen weights by the logical-axis
rules, batches over the data axis, the small trainable state replicated) and
donates the state buffers. One device is a 1x1 mesh.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import partitioning
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.param_tree import merge_params
from prompt_tuning.train.state import TrainState

Batch = dict[str, jax.Array]
METRIC_SUMS = ("loss_sum", "z_loss_sum", "correct_tokens", "num_tokens")


def make_train_step(
  model: EncoderDecoderModel, tx: optax.GradientTransformation, schedule: Callable[[Any], Any]
) -> Callable:
  """(state, frozen, batch, rng) -> (state, metrics). Dropout uses fold_in(rng, step)."""

  def train_step(state: TrainState, frozen: Any, batch: Batch, rng: jax.Array) -> tuple[TrainState, dict]:
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(trainable):
      return model.loss(merge_params(trainable, frozen), batch, dropout_rng)

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(
      sums,
      loss=loss,
      grad_norm=optax.tree.norm(grads),
      learning_rate=schedule(state.step),
      examples=jnp.asarray(batch["encoder_input_tokens"].shape[0], jnp.float32),
    )
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

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


def accumulate(total: dict | None, metrics: dict) -> dict:
  """Running metric sums on device (no host sync); last values for loss/lr/grad_norm."""
  if total is None:
    return dict(metrics)
  out = dict(metrics)
  for key in (*METRIC_SUMS, "examples"):
    out[key] = total[key] + metrics[key]
  return out


def summarize(total: dict) -> dict[str, float]:
  """Host-side scalars for a logging period: per-token loss, z_loss and accuracy."""
  values = jax.device_get(total)
  tokens = max(float(values["num_tokens"]), 1.0)
  return {
    "loss": float(values["loss_sum"]) / tokens,
    "z_loss": float(values["z_loss_sum"]) / tokens,
    "token_accuracy": float(values["correct_tokens"]) / tokens,
    "learning_rate": float(values["learning_rate"]),
    "grad_norm": float(values["grad_norm"]),
  }
