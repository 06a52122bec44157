"""Length buckets through the model and the compiled train step: a batch padded to its bucket gives
the per-example losses and the prompt update it gives padded to the feature lengths, and a run over
many ragged batches compiles each bucket's step once, up front, never again."""

from __future__ import annotations

import contextlib
import itertools

import jax
import numpy as np
import pytest
from jax._src import dispatch, monitoring

from prompt_tuning import partitioning
from prompt_tuning.bench.ours import init_on_device
from prompt_tuning.data import buckets, features, pipeline
from prompt_tuning.data import task as task_lib
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config
from prompt_tuning.param_tree import merge_params
from prompt_tuning.train import optimizer
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.state import TrainState
from support.char_vocab import CharVocab

LENGTHS = {"inputs": 40, "targets": 6}
BUCKETS = buckets.make_buckets({"inputs": [8, 16, 24]}, LENGTHS)  # inputs 8/16/24/40, targets 6: 4 shapes
BATCH = 4


def _task():
  # One id per character: mostly short inputs (2..15 characters + EOS), a few long ones (22..37).
  sizes = [2 + (i * 5) % 14 for i in range(20)] + [22, 27, 32, 37]
  records = [{"text": "x" * size, "label": i % 3} for i, size in enumerate(sizes)]
  return task_lib.TextTask("ragged", CharVocab(), {"train": lambda: records}, "{text}", "label", ["a", "bb", "ccc"])


def _batches(length_buckets, count, seed=5):
  it = pipeline.BatchIterator(
    _task(), "train", LENGTHS, BATCH, shuffle=True, seed=seed, repeat=True, drop_remainder=True,
    length_buckets=length_buckets,
  )  # fmt: skip
  return [b.arrays for b in itertools.islice(it, count)]


@pytest.fixture(scope="module")
def tiny():
  """(model, trainable, frozen, frozen_shardings, mesh, tx, schedule): a tiny prompted T5, no dropout."""
  config = get_config("tiny", vocab_size=64, dropout_rate=0.0)
  module = PromptedTransformer(config, prompt_config=PromptConfig(3))
  mesh = partitioning.make_mesh(1)
  trainable, frozen, frozen_shardings = init_on_device(module, mesh, seed=0)
  tx, schedule = optimizer.adafactor()
  return EncoderDecoderModel(module), trainable, frozen, frozen_shardings, mesh, tx, schedule


def _place(arrays, mesh):
  return partitioning.to_global_batch({k: arrays[k] for k in features.BATCH_KEYS}, mesh)


@contextlib.contextmanager
def compiles_of(name: str):
  """Collects the XLA compilations (persistent-cache hits included) of programs whose name has `name`."""
  seen: list[str] = []

  def listener(event, duration, **kwargs):
    if event == dispatch.BACKEND_COMPILE_EVENT and name in kwargs.get("fun_name", ""):
      seen.append(kwargs["fun_name"])

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    monitoring.unregister_event_duration_listener(listener)


@pytest.mark.slow  # compiles the loss and the step for several shapes: ~20 s on 2 CPU cores
def test_a_bucketed_batch_gives_the_losses_and_update_of_the_full_length(tiny):
  model, trainable, frozen, frozen_shardings, mesh, tx, schedule = tiny
  params = merge_params(trainable, frozen)
  full, small = _batches(None, 4), _batches(BUCKETS, 4)
  widths = [b["encoder_input_tokens"].shape[1] for b in small]
  assert min(widths) < LENGTHS["inputs"] and len(set(widths)) >= 2  # the batches really are cut

  @jax.jit
  def per_example(batch):  # the log-likelihood of each example's target [batch], and the batch loss
    keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    return model.score(params, *(batch[k] for k in keys)), model.loss(params, batch)[0]

  for f, s in zip(full, small):
    (full_scores, full_loss), (small_scores, small_loss) = per_example(f), per_example(s)
    np.testing.assert_allclose(small_scores, full_scores, rtol=1e-5, atol=1e-5)
    assert float(small_loss) == pytest.approx(float(full_loss), rel=1e-5)

  # One optimizer step from the same state on each: the same prompt update and gradient norm.
  train_step = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, frozen_shardings)
  rng = jax.random.PRNGKey(0)
  results = []
  for batch in (full[0], small[0]):
    state = TrainState.create(jax.tree.map(np.asarray, trainable), tx)
    new_state, metrics = train_step(state, frozen, _place(batch, mesh), rng)
    results.append((np.asarray(new_state.params["prompt"]["prompt"]), float(metrics["grad_norm"])))
  initial = np.asarray(trainable["prompt"]["prompt"])
  assert not np.allclose(results[0][0], initial)  # the step moved the prompt
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
  assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)


@pytest.mark.slow  # compiles four train steps: ~30 s on 2 CPU cores
def test_many_ragged_batches_compile_each_bucket_once_up_front(tiny):
  model, trainable, frozen, frozen_shardings, mesh, tx, schedule = tiny
  train_step = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, frozen_shardings)
  state = jax.device_put(
    TrainState.create(jax.tree.map(np.asarray, trainable), tx), jax.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )
  rng = jax.random.PRNGKey(0)
  specs = [step_lib.batch_spec(shape, BATCH, mesh) for shape in BUCKETS.shapes()]
  with compiles_of("train_step") as ahead:
    precompiled, _ = step_lib.compile_ahead(train_step, state, frozen, rng, specs)
  assert len(ahead) == len(BUCKETS.shapes()) == 4

  batches = _batches(BUCKETS, 24, seed=9)
  shapes = {(b["encoder_input_tokens"].shape[1], b["decoder_target_tokens"].shape[1]) for b in batches}
  assert len(shapes) >= 3  # ragged: most buckets are met
  with compiles_of("train_step") as during:
    for batch in batches:
      state, metrics = precompiled(state, frozen, _place(batch, mesh), rng)
    jax.block_until_ready(state)
  assert during == []  # not one compile in 24 steps of varying shapes
  assert train_step._cache_size() == 0  # nor a trace: every step ran an executable built up front
  assert int(state.step) == 24 and np.isfinite(float(metrics["loss"]))
