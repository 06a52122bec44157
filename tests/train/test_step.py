"""The train step: only the trainable subtree moves, and optimizer state exists for it alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import param_tree, partitioning
from prompt_tuning.models.model import EncoderDecoderModel, LossConfig, cross_entropy_with_z_loss
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.param_tree import flatten
from prompt_tuning.train import optimizer
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.state import TrainState


def tree_size(tree) -> int:
  """Number of array elements in a pytree (optimizer state against prompt size)."""
  return sum(int(x.size) for x in jax.tree.leaves(tree))


CONFIG = get_config("tiny", vocab_size=64, dropout_rate=0.1)


def _batch(seed=0, batch=4):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, 64, size=(batch, 8)).astype(np.int32)
  enc[0, 5:] = 0
  targets = rng.randint(2, 64, size=(batch, 4)).astype(np.int32)
  targets[:, -1] = 1
  targets[1, 2:] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  return {
    "encoder_input_tokens": enc,
    "decoder_input_tokens": dec_in,
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


def _run(pattern: str, steps: int = 3):
  params = network.init_params(CONFIG, jax.random.PRNGKey(0))
  model = EncoderDecoderModel(network.Transformer(CONFIG))
  trainable, frozen = param_tree.split_trainable(params, pattern)
  tx, schedule = optimizer.adafactor()
  state = TrainState.create(trainable, tx)
  mesh = partitioning.make_mesh(1)
  frozen_shardings = partitioning.logical_to_sharding(
    param_tree.split_trainable(network.module_logical_axes(network.Transformer(CONFIG)), pattern)[1], mesh
  )
  train_step = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, frozen_shardings)
  for i in range(steps):
    state, metrics = train_step(state, frozen, _batch(i), jax.random.PRNGKey(1))
  # The step donates the state's buffers: compare against a fresh (deterministic) init.
  return network.init_params(CONFIG, jax.random.PRNGKey(0)), trainable, frozen, state, metrics


@pytest.mark.slow
def test_only_matching_parameters_change_and_state_is_small():
  pattern = r"decoder/decoder_norm/scale|encoder/relpos_bias/rel_embedding"
  params, trainable, frozen, state, metrics = _run(pattern)
  assert set(flatten(state.params)) == {"decoder/decoder_norm/scale", "encoder/relpos_bias/rel_embedding"}
  for name, value in flatten(state.params).items():
    assert not np.array_equal(np.asarray(value), np.asarray(flatten(params)[name])), name
  # Optimizer state is proportional to the trainable subtree (Adafactor: at most ~2x it), not the model.
  assert tree_size(state.opt_state) <= 2 * tree_size(state.params) + 16
  assert tree_size(state.opt_state) < tree_size(params) / 100
  assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_frozen_parameters_are_bit_identical_after_training():
  params, trainable, frozen, state, _ = _run(r"decoder/decoder_norm/scale")
  before = network.init_params(CONFIG, jax.random.PRNGKey(0))
  for name, value in flatten(frozen).items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flatten(before)[name]), err_msg=name)


@pytest.mark.slow
def test_everything_trainable_updates_every_weight():
  params, _, frozen, state, _ = _run(param_tree.EVERYTHING, steps=2)
  assert not frozen
  for name, value in flatten(state.params).items():
    assert not np.array_equal(np.asarray(value), np.asarray(flatten(params)[name])), name


def test_split_errors_name_the_regex():
  params = network.abstract_params(CONFIG)
  with pytest.raises(ValueError, match=r"regex 'promt/prompt' matches no parameter"):
    param_tree.split_trainable(params, "promt/prompt")
  with pytest.raises(ValueError, match=r"regex '\(' is invalid"):
    param_tree.split_trainable(params, "(")


def test_loss_matches_a_numpy_reference_with_smoothing_and_z_loss():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 7).astype(np.float32)
  targets = np.array([[1, 4, 0], [2, 2, 6]], np.int32)
  weights = (targets > 0).astype(np.float32)
  got, z = cross_entropy_with_z_loss(jnp.asarray(logits), targets, weights, z_loss=1e-2, label_smoothing=0.1)
  log_z = np.log(np.exp(logits).sum(-1))
  soft = np.full((2, 3, 7), 0.1 / 6)
  np.put_along_axis(soft, targets[..., None], 0.9, axis=-1)
  entropy = -(soft * np.log(soft)).sum(-1)
  want = (-(soft * (logits - log_z[..., None])).sum(-1) - entropy + 1e-2 * log_z**2) * weights
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(z, 1e-2 * log_z**2 * weights, rtol=1e-5)


def test_loss_normalization():
  params = network.init_params(CONFIG, jax.random.PRNGKey(0))
  batch = _batch()
  per_token, sums = EncoderDecoderModel(network.Transformer(CONFIG)).loss(params, batch)
  total, _ = EncoderDecoderModel(network.Transformer(CONFIG), LossConfig(loss_normalizing_factor=None)).loss(
    params, batch
  )
  fixed, _ = EncoderDecoderModel(network.Transformer(CONFIG), LossConfig(loss_normalizing_factor=100.0)).loss(
    params, batch
  )
  np.testing.assert_allclose(per_token * sums["num_tokens"], total, rtol=1e-5)
  np.testing.assert_allclose(fixed * 100.0, total, rtol=1e-5)
  assert float(sums["num_tokens"]) == float((batch["decoder_target_tokens"] > 0).sum())
  with pytest.raises(ValueError, match="loss_normalizing_factor='per_token'"):
    LossConfig(loss_normalizing_factor="per_token")
