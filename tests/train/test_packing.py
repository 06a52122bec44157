"""Packing through the model and the compiled train step: packed rows give each example the
log-likelihood, and the batch the loss and prompt update, that the same examples give unpacked
(each with its own prompt copy, its task's for a prompt table), and a run over many packed batches
compiles one step."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.bench.ours import init_on_device
from prompt_tuning.data import features, packing, pipeline
from prompt_tuning.data import task as task_lib
from prompt_tuning.models import model as model_lib
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config, layers
from prompt_tuning.param_tree import merge_params
from prompt_tuning.train import optimizer
from prompt_tuning.train import step as step_lib
from prompt_tuning.train.state import TrainState
from support.char_vocab import CharVocab

LENGTHS = {"inputs": 24, "targets": 12}
PROMPT = 3
PACKING = packing.Packing(PROMPT)
ROWS = 3
TASK_IDS = {"a": 0, "b": 1}


def _examples():
  """Ragged tokenized examples of two tasks: inputs of 1..10 tokens and targets of 1..3, then EOS."""
  rng = np.random.default_rng(0)
  out = []
  for i in range(14):
    x, y = rng.integers(3, 60, 1 + (i * 7) % 10), rng.integers(3, 60, 1 + i % 3)
    out.append({"inputs_ids": [*x.tolist(), 1], "targets_ids": [*y.tolist(), 1], "task": "ab"[i % 2]})
  return out


def _packed_and_unpacked():
  """The first packed batch of the examples and the same examples unpacked, one per row."""
  stream = iter(_examples())
  rows, consumed = packing.pack_rows(lambda: next(stream, None), ROWS, PACKING, LENGTHS)
  packed = packing.make_packed_batch(rows, PACKING, LENGTHS, ROWS, task_ids=TASK_IDS)
  examples = [ex for row in rows for ex in row]
  assert consumed == len(examples) > ROWS and max(len(row) for row in rows) >= 3  # rows really are shared
  unpacked = features.make_batch(examples, LENGTHS)
  unpacked["task_ids"] = np.asarray([TASK_IDS[ex["task"]] for ex in examples], np.int32)
  return packed, unpacked


@pytest.fixture(scope="module")
def tiny():
  """(model, trainable, frozen, frozen_shardings, mesh): a tiny T5 with a table of 2 prompts, no dropout."""
  config = get_config("tiny", vocab_size=64, dropout_rate=0.0)
  module = PromptedTransformer(config, prompt_config=PromptConfig(PROMPT, num_tasks=2))
  mesh = partitioning.make_mesh(1)
  trainable, frozen, frozen_shardings = init_on_device(module, mesh, seed=0)
  return model_lib.EncoderDecoderModel(module), trainable, frozen, frozen_shardings, mesh


def _log_likelihoods(model, params, batch):
  """Each target token's log-probability [rows, dec_length] (0 on padding)."""
  extra = {}
  if model_lib.is_packed(batch):
    keys = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids")
    extra = {**{k: batch[k] for k in keys}, "task_ids": batch["encoder_task_ids"]}
  else:
    extra = {"task_ids": batch["task_ids"]}
  keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
  logits = model.logits(params, *(batch[k] for k in keys), **extra)
  targets = batch["decoder_target_tokens"]
  picked = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
  return picked * (targets > 0)


@pytest.mark.slow  # compiles the forward pass twice and the train step twice: ~9 s on 2 CPU cores
def test_packed_rows_give_each_example_its_unpacked_loss_and_the_same_update(tiny):
  model, trainable, frozen, frozen_shardings, mesh = tiny
  params = merge_params(trainable, frozen)
  packed, unpacked = _packed_and_unpacked()

  # Per example: the sum of its target log-likelihoods, from its segment of a packed row.
  per_token = np.asarray(jax.jit(lambda b: _log_likelihoods(model, params, b))(packed))
  segments = packed["decoder_segment_ids"]
  from_packed = [per_token[r][segments[r] == s].sum() for r in range(ROWS) for s in range(1, segments[r].max() + 1)]
  from_unpacked = np.asarray(jax.jit(lambda b: _log_likelihoods(model, params, b))(unpacked)).sum(axis=1)
  np.testing.assert_allclose(from_packed, from_unpacked, rtol=1e-5, atol=1e-5)
  assert np.ptp(from_unpacked) > 0.1  # the examples differ: a mix-up of segments would show

  # The batch loss, its per-task sums, and one optimizer step from the same state: the same prompt table.
  def loss(batch):
    return model.loss(params, batch, num_tasks=2)

  (packed_loss, packed_sums), (unpacked_loss, unpacked_sums) = jax.jit(loss)(packed), jax.jit(loss)(unpacked)
  assert float(packed_loss) == pytest.approx(float(unpacked_loss), rel=1e-5)
  for key in ("task_loss_sum", "task_num_tokens", "correct_tokens"):
    np.testing.assert_allclose(packed_sums[key], unpacked_sums[key], rtol=1e-5)
  tx, schedule = optimizer.adafactor()
  train_step = step_lib.compile_train_step(
    step_lib.make_train_step(model, tx, schedule, num_tasks=2), mesh, frozen_shardings
  )
  results = []
  for batch in (unpacked, packed):
    state = TrainState.create(jax.tree.map(np.asarray, trainable), tx)
    new_state, metrics = train_step(state, frozen, partitioning.to_global_batch(batch, mesh), jax.random.PRNGKey(0))
    results.append((np.asarray(new_state.params["prompt"]["prompt"]), float(metrics["grad_norm"]), metrics))
  assert not np.allclose(results[0][0], trainable["prompt"]["prompt"])  # the step moved both prompts
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
  assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)
  assert float(results[1][2]["examples"]) == float(results[0][2]["examples"]) == len(unpacked["task_ids"])


def test_the_row_position_bias_is_the_per_segment_position_bias_on_every_unmasked_pair():
  """Why the network keeps the row's [1, heads, q, k] bias for packed rows: on every pair of one
  segment (the pairs the segment mask leaves) it buckets the same relative position."""
  packed, _ = _packed_and_unpacked()
  for side, bidirectional in (("encoder", True), ("decoder", False)):
    segments, positions = packed[f"{side}_segment_ids"], packed[f"{side}_positions"]
    length = segments.shape[1]
    by_row = layers.relative_position_bucket(
      np.arange(length)[None] - np.arange(length)[:, None], bidirectional, 32, 128
    )
    for r in range(ROWS):
      same = (segments[r][:, None] == segments[r][None]) & (segments[r][:, None] > 0)
      by_segment = layers.relative_position_bucket(positions[r][None] - positions[r][:, None], bidirectional, 32, 128)
      assert same.sum() > length and np.array_equal(by_row[same], by_segment[same])
      assert not np.array_equal(by_row, by_segment)  # elsewhere they differ: the mask is what makes it exact


def test_a_packed_prompt_slot_holds_its_own_tasks_prompt_row(tiny):
  """The prompt layer alone: every example's slots hold its task's whole prompt, the rest the tokens."""
  model, trainable, frozen, _, _ = tiny
  params = merge_params(trainable, frozen)
  packed, _ = _packed_and_unpacked()
  module = model.module
  embedded = module.apply({"params": params}, jnp.asarray(packed["encoder_input_tokens"]), method="embed")
  combined, mask = module.apply(
    {"params": params},
    embedded,
    jnp.asarray(packed["encoder_segment_ids"] > 0, jnp.int32),
    jnp.asarray(packed["encoder_task_ids"]),
    segment_ids=jnp.asarray(packed["encoder_segment_ids"]),
    positions=jnp.asarray(packed["encoder_positions"]),
    method=lambda m, *a, **k: m.prompt(*a, **k),
  )
  table = np.asarray(params["prompt"]["prompt"])
  seg, pos, task = packed["encoder_segment_ids"], packed["encoder_positions"], packed["encoder_task_ids"]
  slots = (seg > 0) & (pos < PROMPT)
  assert slots.sum() == PROMPT * len(set(zip(*np.nonzero(seg)[:1], seg[seg > 0])))  # p slots per example
  np.testing.assert_allclose(np.asarray(combined)[slots], table[task[slots], pos[slots]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(combined)[~slots], np.asarray(embedded)[~slots])
  np.testing.assert_array_equal(mask, seg > 0)


def _task():
  sizes = [2 + (i * 5) % 14 for i in range(20)] + [22, 27, 32, 37]
  records = [{"text": "x" * size, "label": i % 3} for i, size in enumerate(sizes)]
  return task_lib.TextTask("ragged", CharVocab(), {"train": lambda: records}, "{text}", "label", ["a", "bb", "ccc"])


def test_many_packed_batches_run_one_compiled_step():
  config = get_config("tiny", vocab_size=64, dropout_rate=0.0)
  module = PromptedTransformer(config, prompt_config=PromptConfig(PROMPT))
  mesh = partitioning.make_mesh(1)
  trainable, frozen, frozen_shardings = init_on_device(module, mesh, seed=0)
  tx, schedule = optimizer.adafactor()
  model = model_lib.EncoderDecoderModel(module)
  train_step = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, frozen_shardings)
  lengths = {"inputs": 40, "targets": 6}
  it = pipeline.BatchIterator(
    _task(), "train", lengths, 4, shuffle=True, seed=9, repeat=True, drop_remainder=True, packing=PACKING
  )
  state = jax.device_put(
    TrainState.create(jax.tree.map(np.asarray, trainable), tx), jax.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )
  keys = (*features.BATCH_KEYS, *packing.PACKED_KEYS)
  examples = []
  for batch in itertools.islice(it, 12):
    placed = partitioning.to_global_batch({k: batch.arrays[k] for k in keys}, mesh)
    state, metrics = train_step(state, frozen, placed, jax.random.PRNGKey(0))
    examples.append(int(metrics["examples"]))
    assert batch.arrays["encoder_input_tokens"].shape == (4, PROMPT + 40)
  assert train_step._cache_size() == 1  # one shape: one trace and one compile for all 12 steps
  assert len(set(examples)) > 1 and min(examples) >= 4 and sum(examples) == it.position  # varying examples per batch
  assert int(state.step) == 12 and np.isfinite(float(metrics["loss"]))


def test_each_packed_segment_reads_what_its_example_reads_unpacked_single_prompt():
  """One prompt (no table): every segment of a packed row is, position for position, the [P; x]
  the prompt layer makes of its example unpacked."""
  from prompt_tuning.models.prompt import Prompt

  packed, unpacked = _packed_and_unpacked()
  layer = Prompt(PromptConfig(PROMPT), embed_dim=4)
  table = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)  # a stand-in token embedding
  variables = layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 4)), jnp.ones((1, 2), jnp.int32))
  seg = packed["encoder_segment_ids"]
  rows, _ = layer.apply(
    variables,
    jnp.asarray(table[packed["encoder_input_tokens"]]),
    jnp.asarray(seg > 0, jnp.int32),
    segment_ids=jnp.asarray(seg),
    positions=jnp.asarray(packed["encoder_positions"]),
  )
  tokens = unpacked["encoder_input_tokens"]
  alone, alone_mask = layer.apply(variables, jnp.asarray(table[tokens]), jnp.asarray(tokens > 0, jnp.int32))
  segments = [(r, s) for r in range(ROWS) for s in range(1, seg[r].max() + 1)]
  assert len(segments) == len(tokens)
  for i, (r, s) in enumerate(segments):
    width = int(alone_mask[i].sum())
    np.testing.assert_array_equal(np.asarray(rows)[r][seg[r] == s], np.asarray(alone)[i][:width])
