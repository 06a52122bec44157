"""Optimizers and schedules, also as gin builds them at the entry point."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gin
from prompt_tuning import gin_utils
from prompt_tuning.cli import gin_runner
from prompt_tuning.train import optimizer


def test_schedules():
  np.testing.assert_allclose(optimizer.constant_schedule(0.3)(1234), 0.3)
  rsqrt = optimizer.linear_warmup_rsqrt_decay(1.0, warmup_steps=100)
  np.testing.assert_allclose([rsqrt(49), rsqrt(99), rsqrt(399)], [0.5 / 10, 1 / 10, 1 / 20], rtol=1e-6)
  t5 = optimizer.rsqrt_decay(1.0, warmup_steps=100)  # t5x's 'constant * rsqrt_decay': no linear warm-up
  np.testing.assert_allclose([t5(0), t5(100), t5(400)], [1 / 10, 1 / 10, 1 / 20], rtol=1e-6)
  np.testing.assert_allclose(optimizer.rsqrt_decay(1.0, 10_000, step_offset=1_000_000)(0), 1e-3, rtol=1e-6)
  cosine = optimizer.warmup_cosine_decay(0.3, warmup_steps=10, decay_steps=110)
  np.testing.assert_allclose([cosine(0), cosine(10), cosine(110)], [0.0, 0.3, 0.0], atol=1e-7)
  np.testing.assert_allclose(optimizer.linear_decay(0.3, decay_steps=100)(50), 0.15, rtol=1e-6)


def test_paper_defaults_and_adamw_step():
  tx, schedule = optimizer.adafactor()
  assert float(schedule(0)) == pytest.approx(0.3)
  params = {"prompt": jnp.ones((4, 8))}
  grads = {"prompt": jnp.full((4, 8), 0.1)}
  for build in (optimizer.adafactor, optimizer.adamw):
    tx, _ = build()
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["prompt"]).max()) > 0
  tx, _ = optimizer.adamw(learning_rate=0.1, max_grad_norm=1.0)
  assert isinstance(tx, optax.GradientTransformation)


@pytest.fixture
def gin_config():
  gin.clear_config()
  gin_runner.register_all()
  yield
  gin.clear_config()


def test_gin_picks_adam_and_a_schedule(gin_config):
  gin_utils.parse_gin_flags(
    [],
    [
      "TrainSpec.optimizer = @optimizer.adamw",
      "optimizer.adamw.learning_rate = @optimizer.warmup_cosine_decay()",
      "warmup_cosine_decay.learning_rate = 0.01",
      "warmup_cosine_decay.warmup_steps = 5",
    ],
    finalize=False,
  )
  build = gin.query_parameter("TrainSpec.optimizer").scoped_configurable_fn
  tx, schedule = build()
  np.testing.assert_allclose([schedule(0), schedule(5)], [0.0, 0.01], atol=1e-8)
