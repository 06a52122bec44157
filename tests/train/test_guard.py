"""The divergence guard inside the jitted step: non-finite steps are never applied, and the guard says when to stop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import param_tree, partitioning
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.train import guard as guard_lib
from prompt_tuning.train import optimizer
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.state import TrainState

CONFIG = get_config("tiny", vocab_size=64)
PATTERN = r"decoder/decoder_norm/scale"


def _batch(seed: int, poisoned: bool = False) -> dict[str, np.ndarray]:
  """A batch of 2; `poisoned`: nan loss weights, so its loss and gradients are nan."""
  rng = np.random.RandomState(seed)
  targets = rng.randint(2, 64, size=(2, 3)).astype(np.int32)
  return {
    "encoder_input_tokens": rng.randint(2, 64, size=(2, 5)).astype(np.int32),
    "decoder_input_tokens": np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": np.full((2, 3), np.nan if poisoned else 1.0, np.float32),
  }


def _steps(learning_rate: float, steps: int, skip_nonfinite: int = 0, poisoned: tuple[int, ...] = ()):
  """Runs `steps` steps with Adafactor at `learning_rate`, the (1-based) steps in `poisoned` on nan
  batches; returns the trainable values before and after each step, the final state, each step's
  metrics (host numpy) and the summary of them all."""
  params = network.init_params(CONFIG, jax.random.PRNGKey(0))
  trainable, frozen = param_tree.split_trainable(params, PATTERN)
  tx, schedule = optimizer.adafactor(learning_rate=learning_rate)
  mesh = partitioning.make_mesh(1)
  frozen_shardings = partitioning.logical_to_sharding(
    param_tree.split_trainable(network.module_logical_axes(network.Transformer(CONFIG)), PATTERN)[1], mesh
  )
  train_step = step_lib.compile_train_step(
    step_lib.make_train_step(EncoderDecoderModel(network.Transformer(CONFIG)), tx, schedule, skip_nonfinite),
    mesh,
    frozen_shardings,
  )
  state = TrainState.create(trainable, tx)
  values, metrics, totals = [np.asarray(param_tree.flatten(trainable)[PATTERN])], [], None
  for i in range(steps):
    state, m = train_step(state, frozen, _batch(i, i + 1 in poisoned), jax.random.PRNGKey(1))
    totals = step_lib.accumulate(totals, m)
    values.append(np.asarray(param_tree.flatten(state.params)[PATTERN]))
    metrics.append(jax.device_get(m))
  return values, state, metrics, step_lib.summarize(totals)


@pytest.mark.slow
def test_a_non_finite_step_is_not_applied_and_stops_the_run_at_that_step():
  values, state, metrics, summary = _steps(float("nan"), 2)
  np.testing.assert_array_equal(values[2], values[0])  # the state stays the last good one
  kept = jax.device_get((state.params, state.opt_state))
  assert int(state.step) == 2 and all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(kept))
  assert guard_lib.diverged(state.guard, 0) == (
    "at step 1: the updated trainable parameters hold 32 non-finite values (learning rate nan)"
  )
  assert [m["skipped_steps"] for m in metrics] == [1.0, 1.0] and summary["skipped_steps"] == 2
  assert "loss" not in summary and "grad_norm" in summary  # no applied step: no loss to report


@pytest.mark.slow
def test_skipping_applies_the_finite_steps_and_stops_after_too_many_in_a_row():
  # Steps 2 and 4 to 6 get nan batches; up to 2 in a row may be skipped.
  values, state, metrics, summary = _steps(0.3, 6, skip_nonfinite=2, poisoned=(2, 4, 5, 6))
  assert not np.array_equal(values[1], values[0])  # step 1 applied
  np.testing.assert_array_equal(values[2], values[1])  # step 2 skipped
  assert not np.array_equal(values[3], values[2])  # step 3 applied
  np.testing.assert_array_equal(values[6], values[3])  # 4 to 6 skipped
  g = jax.device_get(state.guard)
  assert (int(g.skipped), int(g.consecutive), int(g.failed_step)) == (4, 3, 6)
  assert guard_lib.diverged(state.guard, 2).startswith(
    "at step 6: 3 non-finite steps in a row, more than TrainSpec.skip_nonfinite_steps=2 allows; the last: "
    "the loss is nan (learning rate 0.3)"
  )
  # The period's summary covers the two applied steps only.
  assert [m["skipped_steps"] for m in metrics] == [0, 1, 0, 1, 1, 1]
  applied = [m for m in metrics if not m["skipped_steps"]]
  assert summary["skipped_steps"] == 4 and summary["loss"] == pytest.approx(
    sum(float(m["loss_sum"]) for m in applied) / sum(float(m["num_tokens"]) for m in applied)
  )
  assert summary["grad_norm"] == pytest.approx(float(applied[-1]["grad_norm"]))


def test_guard_stops_at_the_first_failure_and_names_the_culprit():
  guard = guard_lib.Guard.create()
  nan = jnp.float32(jnp.nan)
  reason, value = guard_lib.check_step(nan, jnp.float32(1.0), {"p": jnp.ones(3)}, ())
  assert (int(reason), float(value) != float(value)) == (guard_lib.LOSS, True)
  guard = guard_lib.advance(guard, reason, value, jnp.int32(4), jnp.float32(0.3), 0)
  reason, value = guard_lib.check_step(jnp.float32(2.0), jnp.float32(jnp.inf), {"p": jnp.ones(3)}, ())
  guard = guard_lib.advance(guard, reason, value, jnp.int32(5), jnp.float32(0.3), 0)
  assert guard_lib.diverged(guard, 0) == "at step 4: the loss is nan (learning rate 0.3)"  # the first one
  reason, _ = guard_lib.check_step(jnp.float32(2.0), jnp.float32(1.0), {"p": jnp.ones(3)}, {"v": jnp.full(2, jnp.inf)})
  assert int(reason) == guard_lib.OPT_STATE
  fine = guard_lib.advance(
    guard_lib.Guard.create(), *guard_lib.check_step(jnp.float32(1), jnp.float32(1), {}, ()), 1, 0.3, 0
  )
  assert guard_lib.diverged(fine, 0) is None


def test_a_non_finite_initial_prompt_is_refused():
  prompt = np.zeros((4, 8), np.float32)
  guard_lib.check_initial({"prompt": {"prompt": prompt}})
  prompt[1, 2] = np.inf
  with pytest.raises(
    guard_lib.DivergenceError, match=r"^the initial value of prompt/prompt \[4, 8\] holds 1 non-finite"
  ):
    guard_lib.check_initial({"prompt": {"prompt": prompt}})
