"""Soft prompts: per-example placement with padding, prompt tables, and the prompted T5."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import Prompt, PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.param_tree import flatten

CONFIG = get_config("tiny", vocab_size=64)
P = 2  # prompt length in the hand-checked cases


def _fixed_init(values: np.ndarray):
  """An init_fn returning `values` ([p, d]), whatever the rng."""

  def init(rng, shape):
    del rng
    assert tuple(shape) == values.shape
    return jnp.asarray(values)

  return init


def _marked_inputs():
  """Embeddings [4, 6, 1] whose value names the token: 10*b + j + 1 for real tokens, 0 for padding.

  Lengths 4, 2, 0 (all padding) and 1.
  """
  lengths = np.array([4, 2, 0, 1])
  mask = (np.arange(6)[None] < lengths[:, None]).astype(np.int32)
  values = (10 * np.arange(4)[:, None] + np.arange(6)[None] + 1) * mask
  return values[..., None].astype(np.float32), mask


# Prompt vectors are -1, -2. Hand-written expectations: (combined values, combined mask).
EXPECTED = {
  "prefix": (
    [[-1, -2, 1, 2, 3, 4, 0, 0], [-1, -2, 11, 12, 0, 0, 0, 0], [-1, -2, 0, 0, 0, 0, 0, 0], [-1, -2, 31, 0, 0, 0, 0, 0]],
    [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
  ),
  "after_first": (
    [[1, -1, -2, 2, 3, 4, 0, 0], [11, -1, -2, 12, 0, 0, 0, 0], [-1, -2, 0, 0, 0, 0, 0, 0], [31, -1, -2, 0, 0, 0, 0, 0]],
    [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
  ),
  "suffix": (
    [[1, 2, 3, -1, -2, 4, 0, 0], [11, -1, -2, 12, 0, 0, 0, 0], [-1, -2, 0, 0, 0, 0, 0, 0], [-1, -2, 31, 0, 0, 0, 0, 0]],
    [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
  ),
}


def _apply_prompt(config: PromptConfig, embedded, mask, init, task_ids=None, dtype=jnp.float32):
  module = Prompt(config, embedded.shape[-1], init, dtype=dtype)
  variables = module.init(jax.random.PRNGKey(0), embedded, mask, task_ids)
  return module.apply(variables, embedded, mask, task_ids), variables


def _reference_combine(embedded: np.ndarray, mask: np.ndarray, prompts: np.ndarray, placement: str):
  """An independent per-example construction: prompts [batch, p, d]."""
  batch, n, d = embedded.shape
  p = prompts.shape[1]
  out = np.zeros((batch, p + n, d), embedded.dtype)
  out_mask = np.zeros((batch, p + n), mask.dtype)
  for b in range(batch):
    m = int(mask[b].sum())
    real = list(embedded[b, :m])
    at = {"prefix": 0, "after_first": min(m, 1), "suffix": max(m - 1, 0)}[placement]
    rows = real[:at] + list(prompts[b]) + real[at:]
    out[b, : len(rows)] = rows
    out[b, len(rows) :] = embedded[b, m:]  # padding embeddings keep their order, at the end
    out_mask[b, : len(rows)] = 1
  return out, out_mask


@pytest.mark.parametrize("placement", ["prefix", "after_first", "suffix"])
def test_placement_by_hand_with_padding_and_an_empty_row(placement):
  embedded, mask = _marked_inputs()
  init = _fixed_init(np.array([[-1.0], [-2.0]], np.float32))
  (combined, combined_mask), _ = _apply_prompt(PromptConfig(P, placement), embedded, mask, init)
  want_values, want_mask = EXPECTED[placement]
  np.testing.assert_array_equal(np.asarray(combined)[..., 0], want_values)
  np.testing.assert_array_equal(combined_mask, want_mask)


@pytest.mark.parametrize("placement", ["prefix", "after_first", "suffix"])
def test_matches_per_example_reference_and_ignores_extra_right_padding(placement):
  rng = np.random.RandomState(0)
  batch, n, d, p = 5, 7, 4, 3
  lengths = np.array([7, 3, 0, 1, 5])
  mask = (np.arange(n)[None] < lengths[:, None]).astype(np.int32)
  embedded = rng.randn(batch, n, d).astype(np.float32)
  prompt = rng.randn(p, d).astype(np.float32)
  config = PromptConfig(p, placement)
  (combined, combined_mask), _ = _apply_prompt(config, embedded, mask, _fixed_init(prompt))
  want, want_mask = _reference_combine(embedded, mask, np.broadcast_to(prompt, (batch, p, d)), placement)
  np.testing.assert_array_equal(combined, want)
  np.testing.assert_array_equal(combined_mask, want_mask)

  # Three more padding columns: the same non-padding content, at the same positions.
  pad = rng.randn(batch, 3, d).astype(np.float32)
  wider, wider_mask = np.concatenate([embedded, pad], 1), np.pad(mask, ((0, 0), (0, 3)))
  (combined2, mask2), _ = _apply_prompt(config, wider, wider_mask, _fixed_init(prompt))
  np.testing.assert_array_equal(mask2[:, : p + n], combined_mask)
  assert not np.asarray(mask2[:, p + n :]).any()
  keep = np.asarray(combined_mask, bool)
  np.testing.assert_array_equal(np.asarray(combined2)[:, : p + n][keep], np.asarray(combined)[keep])


def test_prompt_table_gives_each_example_its_task_prompt():
  rng = np.random.RandomState(1)
  batch, n, d, p, k = 4, 5, 3, 2, 3
  embedded = rng.randn(batch, n, d).astype(np.float32)
  mask = (np.arange(n)[None] < np.array([5, 2, 0, 3])[:, None]).astype(np.int32)
  task_ids = np.array([2, 0, 1, 2], np.int32)
  config = PromptConfig(p, "suffix", num_tasks=k)
  (combined, combined_mask), variables = _apply_prompt(config, embedded, mask, jax.random.normal, task_ids)
  table = np.asarray(variables["params"]["prompt"].value)
  assert table.shape == (k, p, d)
  assert variables["params"]["prompt"].names == ("tasks", "prompt", "embed")
  assert not np.allclose(table[0], table[1])  # each task row is initialized with its own rng
  want, want_mask = _reference_combine(embedded, mask, table[task_ids], "suffix")
  np.testing.assert_allclose(combined, want, rtol=1e-6)
  np.testing.assert_array_equal(combined_mask, want_mask)
  # Traced task ids under jit take the same path.
  module = Prompt(config, d, jax.random.normal)
  jitted = jax.jit(lambda ids: module.apply(variables, embedded, mask, ids)[0])
  np.testing.assert_allclose(jitted(task_ids), want, rtol=1e-6)


def test_task_id_errors():
  embedded, mask = np.zeros((2, 3, 4), np.float32), np.ones((2, 3), np.int32)
  with pytest.raises(ValueError, match="pass task_ids"):
    _apply_prompt(PromptConfig(2, num_tasks=3), embedded, mask, jax.random.normal)
  with pytest.raises(ValueError, match="out of range"):
    _apply_prompt(PromptConfig(2, num_tasks=3), embedded, mask, jax.random.normal, np.array([0, 3]))
  with pytest.raises(ValueError, match="nonzero task_ids"):
    _apply_prompt(PromptConfig(2), embedded, mask, jax.random.normal, np.array([0, 1]))
  (combined, _), _ = _apply_prompt(PromptConfig(2), embedded, mask, jax.random.normal, np.array([0, 0]))
  assert combined.shape == (2, 5, 4)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(length=0), "length"),
    (dict(length=2, placement="middle"), "placement"),
    (dict(length=2, num_tasks=0), "num_tasks"),
  ],
)
def test_prompt_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    PromptConfig(**kwargs)


def _batch():
  rng = np.random.RandomState(2)
  enc = rng.randint(2, 64, size=(3, 6)).astype(np.int32)
  enc[0, 4], enc[0, 5:] = 1, 0
  enc[1, 1], enc[1, 2:] = 1, 0
  enc[2, 5] = 1
  dec_in = rng.randint(2, 64, size=(3, 4)).astype(np.int32)
  dec_in[:, 0] = 0
  return enc, dec_in


@pytest.fixture(scope="module")
def prompted():
  """(module, params) of a prompted tiny T5 with a suffix prompt of length 3."""
  module = PromptedTransformer(CONFIG, PromptConfig(3, "suffix"))
  enc, dec_in = _batch()
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), enc, dec_in)["params"])
  return module, params


def test_parameter_tree_is_t5_plus_prompt_with_known_axes(prompted):
  module, params = prompted
  t5 = flatten(network.init_params(CONFIG, jax.random.PRNGKey(0)))
  got = flatten(params)
  assert set(got) == set(t5) | {"prompt/prompt"}
  for name, value in t5.items():
    assert got[name].shape == value.shape, name
  assert got["prompt/prompt"].shape == (3, CONFIG.emb_dim)
  enc, dec_in = _batch()
  boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), enc, dec_in))["params"]
  axes = flatten(
    jax.tree.map(lambda box: tuple(box.names), boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  )
  assert axes["prompt/prompt"] == ("prompt", "embed")
  for name, names in axes.items():
    assert set(names) <= partitioning.AXIS_NAMES, (name, names)


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_seam_is_exact_against_explicit_encode(placement):
  """Prompted logits == plain T5 logits when `encode` gets the spliced embeddings directly."""
  module = PromptedTransformer(CONFIG, PromptConfig(3, placement))
  enc, dec_in = _batch()
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(3), enc, dec_in)["params"])
  logits = module.apply({"params": params}, enc, dec_in)

  plain = network.Transformer(CONFIG)
  t5_params = {k: v for k, v in params.items() if k != "prompt"}
  embedded = np.asarray(plain.apply({"params": t5_params}, enc, method="embed"))
  prompts = np.broadcast_to(np.asarray(params["prompt"]["prompt"]), (enc.shape[0], 3, CONFIG.emb_dim))
  spliced, mask = _reference_combine(embedded, (enc > 0).astype(np.int32), prompts, placement)
  encoded = plain.apply({"params": t5_params}, spliced, mask, method="encode")
  want = plain.apply({"params": t5_params}, encoded, mask, dec_in, method="decode")
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)

  # A different prompt changes the logits.
  changed = dict(params, prompt={"prompt": params["prompt"]["prompt"] + 1.0})
  assert not np.allclose(module.apply({"params": changed}, enc, dec_in), logits, atol=1e-3)


def test_encoder_decoder_model_predicts_with_a_prompt(prompted):
  module, params = prompted
  enc, _ = _batch()
  model = EncoderDecoderModel(module)
  encoded, mask = module.apply({"params": params}, enc, method="encode_tokens")
  assert encoded.shape == (3, 9, CONFIG.emb_dim) and mask.shape == (3, 9)
  result = model.predict_batch(params, enc, max_decode_length=4)
  assert result.tokens.shape == (3, 1, 4)


def test_task_ids_reach_the_prompt_table_through_the_model():
  module = PromptedTransformer(CONFIG, PromptConfig(2, num_tasks=2))
  enc, dec_in = _batch()
  ids = np.array([0, 1, 1], np.int32)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), enc, dec_in, task_ids=ids)["params"])
  assert params["prompt"]["prompt"].shape == (2, 2, CONFIG.emb_dim)
  by_ids = module.apply({"params": params}, enc, dec_in, task_ids=ids)
  all_zero = module.apply({"params": params}, enc, dec_in, task_ids=np.zeros(3, np.int32))
  np.testing.assert_allclose(by_ids[0], all_zero[0], rtol=1e-6)
  assert not np.allclose(by_ids[1:], all_zero[1:], atol=1e-3)


def test_bfloat16_activations_with_a_float32_prompt():
  config = CONFIG.replace(dtype="bfloat16", param_dtype="bfloat16")
  module = PromptedTransformer(config, PromptConfig(3, "after_first"))
  enc, dec_in = _batch()
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), enc, dec_in)["params"])
  assert params["prompt"]["prompt"].dtype == jnp.float32
  assert params["token_embedder"]["embedding"].dtype == jnp.bfloat16
  encoded, _ = module.apply({"params": params}, enc, method="encode_tokens")
  assert encoded.dtype == jnp.bfloat16
  assert module.apply({"params": params}, enc, dec_in).dtype == jnp.float32  # logits stay float32
  embedded, mask = _marked_inputs()
  (combined, _), variables = _apply_prompt(
    PromptConfig(P), embedded, mask, _fixed_init(np.array([[-1.0], [-2.0]])), dtype=jnp.bfloat16
  )
  assert combined.dtype == jnp.bfloat16 and variables["params"]["prompt"].value.dtype == jnp.float32


def test_prompts_of_different_lengths_splice_like_each_alone():
  """A table with task lengths (2, 1): each example gets its task's first p_t rows, placed as a
  p_t-long prompt would be, then the unused width as padding at the end (mask 0)."""
  embedded, mask = _marked_inputs()
  table = np.array([[[-1.0], [-2.0]], [[-5.0], [-6.0]]], np.float32)  # task 1 uses only its first row
  ids = np.array([1, 0, 1, 1], np.int32)
  for placement in ("prefix", "after_first", "suffix"):
    module = Prompt(PromptConfig(2, placement, num_tasks=2, task_lengths=(2, 1)), 1)
    combined, combined_mask = module.apply({"params": {"prompt": table}}, embedded, mask, ids)
    for b, task in enumerate(ids):
      p_t = (2, 1)[task]
      want, want_mask = _reference_combine(embedded[b : b + 1], mask[b : b + 1], table[task][None, :p_t], placement)
      width = want.shape[1]
      np.testing.assert_array_equal(np.asarray(combined_mask[b, :width]), want_mask[0], err_msg=placement)
      assert not np.asarray(combined_mask[b, width:]).any(), placement
      real = want_mask[0] > 0
      np.testing.assert_array_equal(np.asarray(combined[b, :width, 0])[real], want[0, :, 0][real], err_msg=placement)


def _apply_with_lengths(module, table, embedded, mask, ids, lengths):
  return module.apply({"params": {"prompt": table}}, embedded, mask, ids, lengths)


def test_prompt_lengths_given_as_data_splice_as_task_lengths_do():
  """Per-example prompt_lengths (a server's table changing at run time) give what task_lengths give,
  and under jit they are data: other lengths, same program."""
  embedded, mask = _marked_inputs()
  table = np.array([[[-1.0], [-2.0]], [[-5.0], [-6.0]]], np.float32)
  ids = np.array([1, 0, 1, 1], np.int32)
  for placement in ("prefix", "after_first", "suffix"):
    static = Prompt(PromptConfig(2, placement, num_tasks=2, task_lengths=(2, 1)), 1)
    want = static.apply({"params": {"prompt": table}}, embedded, mask, ids)
    dynamic = Prompt(PromptConfig(2, placement, num_tasks=2), 1)
    apply = jax.jit(functools.partial(_apply_with_lengths, dynamic, table, embedded, mask, ids))
    got = apply(np.array([1, 2, 1, 1], np.int32))
    for w, g in zip(want, got):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=placement)
    everything = apply(np.array([2, 2, 2, 2], np.int32))  # every row: the whole slot, as without lengths
    full = dynamic.apply({"params": {"prompt": table}}, embedded, mask, ids)
    np.testing.assert_array_equal(np.asarray(everything[1]), np.asarray(full[1]), err_msg=placement)
    assert apply._cache_size() == 1


@pytest.mark.parametrize("placement", ["prefix", "suffix"])  # after_first: spliced as suffix is, above
def test_a_mixed_batch_of_prompt_lengths_computes_what_each_task_computes_alone(placement):
  """Three tasks with prompts of 5, 2 and 3 vectors in one [3, 5, d] table: every example's logits
  equal those of a model holding only its task's prompt, in any order of the batch."""
  lengths = (5, 2, 3)
  rng = np.random.RandomState(0)
  prompts = [rng.randn(p, CONFIG.emb_dim).astype(np.float32) for p in lengths]
  table = np.zeros((3, 5, CONFIG.emb_dim), np.float32)
  for t, prompt in enumerate(prompts):
    table[t, : len(prompt)] = prompt
  enc = rng.randint(2, 64, size=(6, 7)).astype(np.int32)
  enc[[1, 4], 3:] = 0  # right padding, as seqio gives it
  dec_in = rng.randint(2, 64, size=(6, 4)).astype(np.int32)
  dec_in[:, 0] = 0
  ids = np.array([2, 0, 1, 1, 0, 2], np.int32)
  mixed = PromptedTransformer(CONFIG, PromptConfig(5, placement, num_tasks=3, task_lengths=lengths))
  params = nn.meta.unbox(mixed.init(jax.random.PRNGKey(0), enc, dec_in, task_ids=ids)["params"])
  params = {**params, "prompt": {"prompt": table}}
  logits = np.asarray(mixed.apply({"params": params}, enc, dec_in, task_ids=ids))
  for t, prompt in enumerate(prompts):
    alone = PromptedTransformer(CONFIG, PromptConfig(len(prompt), placement))
    rows = ids == t
    want = alone.apply({"params": {**params, "prompt": {"prompt": prompt}}}, enc[rows], dec_in[rows])
    np.testing.assert_allclose(logits[rows], np.asarray(want), atol=2e-5, rtol=1e-5)
  order = rng.permutation(6)
  shuffled = mixed.apply({"params": params}, enc[order], dec_in[order], task_ids=ids[order])
  np.testing.assert_allclose(np.asarray(shuffled), logits[order], atol=2e-5, rtol=1e-5)


def test_task_lengths_validation():
  with pytest.raises(ValueError, match="needs num_tasks=2"):
    PromptConfig(3, task_lengths=(3, 2))
  with pytest.raises(ValueError, match=r"must each be in \[1, length=3\]"):
    PromptConfig(3, num_tasks=2, task_lengths=(4, 2))
