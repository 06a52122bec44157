"""Prompt initializers: vocabulary-based ones, files, a checkpoint variable."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from prompt_tuning import prompt_init
from prompt_tuning.checkpoints import native
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.models.prompt import Prompt, PromptConfig
from prompt_tuning.models.t5 import get_config, network

VOCAB, DIM = 64, 8
EMBEDDING = np.random.RandomState(0).randn(VOCAB, DIM).astype(np.float32)
PIECES = {"positive": [3], "negative": [4, 5], "so so": [6, 7, 8], "empty": [], "the": [10], "cat": [11], "sat": [12]}


def tokenize(text: str) -> list[int]:
  """A dict-based stand-in: whole labels first, else one id per word."""
  if text in PIECES:
    return PIECES[text]
  return [i for word in text.split() for i in PIECES[word]]


CONTEXT = dict(embedding=EMBEDDING, tokenize=tokenize)
RNG = jax.random.PRNGKey(0)


def _row_ids(rows: np.ndarray, table: np.ndarray) -> list[int]:
  """The index in `table` of each row (each must be an exact row of it)."""
  ids = []
  for row in np.asarray(rows):
    match = np.flatnonzero((table == row).all(axis=1))
    assert match.size, "row is not an embedding"
    ids.append(int(match[0]))
  return ids


def test_registry_names_every_factory():
  assert set(prompt_init.PROMPT_INITIALIZERS) == {
    "random_uniform",
    "sampled_vocab",
    "class_labels",
    "from_string",
    "from_npy",
    "from_checkpoint",
  }


def test_random_uniform_range_shape_and_determinism():
  init = prompt_init.random_uniform(scale=0.1, **CONTEXT)
  value = np.asarray(init(RNG, (5, DIM)))
  assert value.shape == (5, DIM) and np.abs(value).max() <= 0.1 and np.abs(value).max() > 0.05
  np.testing.assert_array_equal(init(RNG, (5, DIM)), value)
  assert not np.allclose(init(jax.random.PRNGKey(1), (5, DIM)), value)
  with pytest.raises(ValueError, match=r"'random_uniform'.*\(5, 9\).*\(5, 8\)"):
    init(RNG, (5, 9))  # the embedding table is 8 wide
  assert prompt_init.random_uniform()(RNG, (2, 3)).shape == (2, 3)  # no context: any [p, d]


def test_sampled_vocab_without_and_with_replacement():
  init = prompt_init.sampled_vocab(num_ids=20, **CONTEXT)
  value = init(RNG, (6, DIM))
  ids = _row_ids(value, EMBEDDING)
  assert max(ids) < 20 and len(set(ids)) == 6  # first N rows, no repeats when p <= N
  np.testing.assert_array_equal(init(RNG, (6, DIM)), value)
  ids = _row_ids(prompt_init.sampled_vocab(num_ids=4, **CONTEXT)(RNG, (10, DIM)), EMBEDDING)
  assert max(ids) < 4 and len(ids) == 10  # p > N: with replacement
  ids = _row_ids(prompt_init.sampled_vocab(num_ids=10_000, **CONTEXT)(RNG, (VOCAB, DIM)), EMBEDDING)
  assert sorted(ids) == list(range(VOCAB))  # N clipped to the vocabulary: a permutation of it
  with pytest.raises(ValueError, match=r"'sampled_vocab'.*\(6, 4\).*\(6, 8\)"):
    init(RNG, (6, 4))
  with pytest.raises(ValueError, match="needs embedding="):
    prompt_init.sampled_vocab()


def test_sampled_vocab_under_jit_in_the_prompt_module():
  """init_fn runs with a traced rng inside a jitted Flax init."""
  init = prompt_init.sampled_vocab(num_ids=16, **CONTEXT)
  module = Prompt(PromptConfig(4), DIM, init)
  x, mask = jnp.zeros((1, 3, DIM)), jnp.ones((1, 3), jnp.int32)
  params = jax.jit(module.init)(RNG, x, mask)["params"]
  value = nn.meta.unbox(params)["prompt"]
  assert max(_row_ids(value, EMBEDDING)) < 16
  np.testing.assert_array_equal(value, nn.meta.unbox(module.init(RNG, x, mask)["params"])["prompt"])


def test_class_labels_average_pieces_and_fall_back():
  labels = ["positive", "negative", "so so"]
  init = prompt_init.class_labels(labels, num_ids=12, **CONTEXT)  # num_ids reaches the sampled_vocab fallback
  value = np.asarray(init(RNG, (5, DIM)))
  np.testing.assert_allclose(value[0], EMBEDDING[3], rtol=1e-6)
  np.testing.assert_allclose(value[1], (EMBEDDING[4] + EMBEDDING[5]) / 2, rtol=1e-6)
  np.testing.assert_allclose(value[2], (EMBEDDING[6] + EMBEDDING[7] + EMBEDDING[8]) / 3, rtol=1e-6)
  assert max(_row_ids(value[3:], EMBEDDING)) < 12  # fallback rows: sampled from the first 12 ids
  np.testing.assert_array_equal(init(RNG, (5, DIM)), value)
  np.testing.assert_allclose(init(RNG, (3, DIM)), value[:3], rtol=1e-6)  # exactly as many rows as labels

  def ones(**context):
    assert context["embedding"] is EMBEDDING and context["tokenize"] is tokenize  # the same context
    return lambda rng, shape: np.ones(shape, np.float32)

  value = np.asarray(prompt_init.class_labels(["negative"], fallback=ones, **CONTEXT)(RNG, (3, DIM)))
  np.testing.assert_array_equal(value[1:], 1.0)
  value = prompt_init.class_labels(["negative"], fallback="random_uniform", **CONTEXT)(RNG, (3, DIM))
  assert np.abs(np.asarray(value)[1:]).max() <= 0.5


def test_a_prompt_shorter_than_the_labels_starts_from_the_first_labels():
  three = prompt_init.class_labels(["positive", "negative", "so so"], **CONTEXT)
  first_two = prompt_init.class_labels(["positive", "negative"], **CONTEXT)
  np.testing.assert_array_equal(np.asarray(three(RNG, (2, DIM))), np.asarray(first_two(RNG, (2, DIM))))
  np.testing.assert_array_equal(np.asarray(three(RNG, (1, DIM))), np.asarray(first_two(RNG, (2, DIM)))[:1])


def test_class_labels_errors():
  with pytest.raises(ValueError, match="label 'empty' tokenizes to no ids"):
    prompt_init.class_labels(["positive", "empty"], **CONTEXT)
  with pytest.raises(ValueError, match="needs tokenize="):
    prompt_init.class_labels(["positive"], embedding=EMBEDDING)
  with pytest.raises(ValueError, match=r"'class_labels'.*\(4, 3\).*\(4, 8\)"):
    prompt_init.class_labels(["positive"], **CONTEXT)(RNG, (4, 3))


def test_from_string_tiles_short_text_and_truncates_long_text(monkeypatch):
  init = prompt_init.from_string("the cat sat", **CONTEXT)
  np.testing.assert_array_equal(init(RNG, (7, DIM)), EMBEDDING[[10, 11, 12, 10, 11, 12, 10]])
  warnings = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *args: warnings.append(msg % args))
  np.testing.assert_array_equal(init(RNG, (2, DIM)), EMBEDDING[[10, 11]])
  assert len(warnings) == 1 and "truncated" in warnings[0]
  with pytest.raises(ValueError, match="tokenizes to no ids"):
    prompt_init.from_string("empty", **CONTEXT)


def test_from_npy_loads_and_checks_the_shape(tmp_path):
  value = np.arange(12, dtype=np.float32).reshape(3, 4)
  np.save(tmp_path / "prompt.npy", value)
  init = prompt_init.from_npy(str(tmp_path / "prompt.npy"), **CONTEXT)
  np.testing.assert_array_equal(init(RNG, (3, 4)), value)
  with pytest.raises(ValueError, match=r"'from_npy': expected shape \(5, 4\).*produces \(3, 4\)"):
    init(RNG, (5, 4))
  with pytest.raises(ValueError, match="does not exist"):
    prompt_init.from_npy(str(tmp_path / "missing.npy"))


# ----------------------------------------------------------------------------- checkpoints
# The layouts themselves: tests/checkpoints/test_variables.py.

PROMPT = np.random.RandomState(1).randn(3, 32).astype(np.float32)


def test_from_checkpoint_reads_the_variable_and_checks_its_shape(tmp_path):
  config = get_config("tiny", vocab_size=VOCAB)
  path = str(tmp_path / "native")
  native.save_native(path, config, dict(network.init_params(config, RNG), prompt={"prompt": PROMPT}))
  np.testing.assert_array_equal(prompt_init.from_checkpoint(path)(RNG, (3, 32)), PROMPT)
  with pytest.raises(ValueError, match=rf"'from_checkpoint'.*\(4, 32\).*\(3, 32\); read from {path}:prompt/prompt$"):
    prompt_init.from_checkpoint(path)(RNG, (4, 32))
  with pytest.raises(CheckpointError, match="does not exist"):
    prompt_init.from_checkpoint(str(tmp_path / "nowhere"))
