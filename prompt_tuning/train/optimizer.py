"""Optimizers and learning-rate schedules (of the trainable subtree: prompt_tuning.param_tree).

The factories here are plain functions with keyword defaults, registered with
gin at the entry point.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import optax

Params = Any
Schedule = Callable[[Any], Any]

# --- learning-rate schedules ---------------------------------------------------------------------


def constant_schedule(learning_rate: float = 0.3) -> Schedule:
  """The paper's schedule: a constant 0.3."""
  return optax.constant_schedule(learning_rate)


def linear_warmup_rsqrt_decay(learning_rate: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
  """T5 pre-training's schedule: lr * min(1, s / warmup) / sqrt(max(s, warmup)), s = step + 1."""
  warmup = float(max(warmup_steps, 1))

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0
    return learning_rate * jnp.minimum(1.0, s / warmup) / jnp.sqrt(jnp.maximum(s, warmup))

  return schedule


def rsqrt_decay(learning_rate: float = 1.0, warmup_steps: int = 10_000, step_offset: int = 0) -> Schedule:
  """T5 / t5x pre-training's schedule ('constant * rsqrt_decay'): lr / sqrt(max(step + step_offset, warmup_steps)).

  From scratch (offset 0): lr / sqrt(warmup) (0.01) for the first warmup_steps, then inverse square
  root decay. Continuing a checkpoint as T5 did (LM adaptation went on from T5 1.1's step 1M, so its
  rate was ~0.001), step_offset = the checkpoint's step keeps the rate where T5's was.
  """
  warmup = float(max(warmup_steps, 1))

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + float(step_offset)
    return learning_rate / jnp.sqrt(jnp.maximum(s, warmup))

  return schedule


def warmup_cosine_decay(
  learning_rate: float = 0.3, warmup_steps: int = 1000, decay_steps: int = 30_000, end_value: float = 0.0
) -> Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, decay_steps, end_value)


def linear_decay(learning_rate: float = 0.3, decay_steps: int = 30_000, end_value: float = 0.0) -> Schedule:
  return optax.linear_schedule(learning_rate, end_value, decay_steps)


# --- optimizers ----------------------------------------------------------------------------------


def _as_schedule(learning_rate: float | Schedule) -> Schedule:
  return learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)


def adafactor(
  learning_rate: float | Schedule = 0.3,
  decay_rate: float = 0.8,
  multiply_by_parameter_scale: bool = False,
  weight_decay_rate: float | None = 1e-5,
  clipping_threshold: float | None = 1.0,
  factored: bool = True,
) -> tuple[optax.GradientTransformation, Schedule]:
  """The paper's optimizer: Adafactor, lr 0.3, decay 0.8, no parameter scaling, weight decay 1e-5.

  Returns (transformation, schedule); the schedule is reported as learning_rate.
  """
  schedule = _as_schedule(learning_rate)
  tx = optax.adafactor(
    learning_rate=schedule,
    decay_rate=decay_rate,
    multiply_by_parameter_scale=multiply_by_parameter_scale,
    weight_decay_rate=weight_decay_rate,
    clipping_threshold=clipping_threshold,
    factored=factored,
  )
  return tx, schedule


def adamw(
  learning_rate: float | Schedule = 1e-3,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 1e-5,
  max_grad_norm: float | None = None,
) -> tuple[optax.GradientTransformation, Schedule]:
  """Adam with decoupled weight decay (optionally after global-norm clipping)."""
  schedule = _as_schedule(learning_rate)
  tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
  return tx, schedule


OPTIMIZERS = {"adafactor": adafactor, "adamw": adamw}
SCHEDULES = {
  "constant_schedule": constant_schedule,
  "linear_warmup_rsqrt_decay": linear_warmup_rsqrt_decay,
  "rsqrt_decay": rsqrt_decay,
  "warmup_cosine_decay": warmup_cosine_decay,
  "linear_decay": linear_decay,
}
