"""Tests for prompt_tuning.decoding against fake models and independent NumPy references."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import decoding

VOCAB = 5
EOS = 1
MODULUS = 3  # the cached running total enters the logits modulo this
MAX_STEPS = 8

_tables = np.random.RandomState(1)
LAST_TOKEN_LOGITS = (2.0 * _tables.normal(size=(VOCAB, VOCAB))).astype(np.float32)
TOTAL_LOGITS = (2.0 * _tables.normal(size=(MODULUS, VOCAB))).astype(np.float32)
STEP_LOGITS = _tables.normal(size=(MAX_STEPS, VOCAB)).astype(np.float32)


def reference_logits(offset: int, prefix: list[int]) -> np.ndarray:
  """Logits after decoder inputs `prefix` (starting with 0) for an example with encoder `offset`, from the history."""
  total = offset + sum(prefix)
  return LAST_TOKEN_LOGITS[prefix[-1]] + TOTAL_LOGITS[total % MODULUS] + STEP_LOGITS[len(prefix) - 1]


def log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x - x.max() - np.log(np.exp(x - x.max()).sum())


def reference_log_prob(offset: int, tokens: list[int]) -> float:
  """Summed log-probability of tokens (without the initial 0) up to and including EOS."""
  prefix, total = [0], 0.0
  for token in tokens:
    total += log_softmax(reference_logits(offset, prefix))[token]
    if token == EOS:
      break
    prefix.append(token)
  return total


def strip(tokens) -> list[int]:
  """Tokens up to and including EOS; checks that everything after EOS is padding."""
  tokens = [int(t) for t in tokens]
  if EOS in tokens:
    end = tokens.index(EOS) + 1
    assert all(t == 0 for t in tokens[end:]), tokens
    return tokens[:end]
  return tokens


def penalised(log_prob: float, length: int, alpha: float) -> float:
  return log_prob / ((5.0 + length) / 6.0) ** alpha


def make_model(offsets, expand: int = 1, calls: list | None = None):
  """The JAX twin of `reference_logits`: the running total is per-row cache state, the step a scalar."""
  offsets = jnp.asarray(offsets, jnp.int32)
  flat_batch = offsets.shape[0] * expand
  cache = {"total": decoding.flat_batch_beam_expand(offsets, expand), "index": jnp.int32(0)}

  def tokens_to_logits(tokens, cache):
    assert tokens.shape == (flat_batch, 1) and tokens.dtype == jnp.int32
    if calls is not None:
      jax.debug.callback(lambda index: calls.append(int(index)), cache["index"])
    last = tokens[:, 0]
    total = cache["total"] + last
    logits = (
      jnp.asarray(LAST_TOKEN_LOGITS)[last]
      + jnp.asarray(TOTAL_LOGITS)[total % MODULUS]
      + jnp.asarray(STEP_LOGITS)[cache["index"]]
    )
    return logits, {"total": total, "index": cache["index"] + 1}

  return tokens_to_logits, cache


def constant_model(probs):
  """Logits log(probs) at every step, whatever the history."""
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  cache = {"index": jnp.int32(0)}
  return (lambda tokens, cache: (jnp.tile(logits, (tokens.shape[0], 1)), {"index": cache["index"] + 1})), cache


def forced_eos_model(eos_step: int, calls: list):
  """Prefers tokens 2, 3 and 4 (tied) before step eos_step and EOS at it, whatever the history."""
  cache = {"index": jnp.int32(0)}

  def tokens_to_logits(tokens, cache):
    jax.debug.callback(lambda index: calls.append(int(index)), cache["index"])
    eos_logit = jnp.where(cache["index"] == eos_step, 10.0, -10.0)
    logits = jnp.where(jnp.arange(VOCAB) == EOS, eos_logit, jnp.where(jnp.arange(VOCAB) == 0, 0.0, 3.0))
    return jnp.tile(logits, (tokens.shape[0], 1)), {"index": cache["index"] + 1}

  return tokens_to_logits, cache


OFFSETS = [0, 1, 2, 4, 8]


def greedy_reference(offset: int, length: int) -> tuple[list[int], float]:
  prefix, tokens = [0], []
  while len(tokens) < length:
    token = int(np.argmax(reference_logits(offset, prefix)))
    tokens.append(token)
    if token == EOS:
      break
    prefix.append(token)
  return tokens, reference_log_prob(offset, tokens)


def test_flat_batch_beam_expand():
  x = jnp.arange(6).reshape(2, 3)
  np.testing.assert_array_equal(decoding.flat_batch_beam_expand(x, 2), [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])


def test_greedy_matches_python_rollout():
  length = 6
  fn, cache = make_model(OFFSETS)
  result = decoding.greedy_search(fn, cache, batch_size=len(OFFSETS), max_decode_length=length)
  assert result.tokens.shape == (len(OFFSETS), 1, length) and result.tokens.dtype == jnp.int32
  assert result.scores.shape == (len(OFFSETS), 1) and result.scores.dtype == jnp.float32
  lengths = []
  for row, offset in enumerate(OFFSETS):
    expected_tokens, expected_score = greedy_reference(offset, length)
    assert strip(result.tokens[row, 0]) == expected_tokens
    np.testing.assert_allclose(result.scores[row, 0], expected_score, rtol=1e-5, atol=1e-4)
    lengths.append(len(expected_tokens))
  # The tables must give both early EOS (padding checked in `strip`) and rows running to max length.
  assert min(lengths) < length and max(lengths) == length and EOS not in strip(result.tokens[lengths.index(length), 0])


def test_greedy_stops_early():
  calls = []
  fn, cache = forced_eos_model(eos_step=2, calls=calls)
  result = decoding.greedy_search(fn, cache, batch_size=3, max_decode_length=7)
  jax.effects_barrier()
  np.testing.assert_array_equal(result.tokens[:, 0], [[2, 2, EOS, 0, 0, 0, 0]] * 3)
  assert calls == [0, 1, 2]


def test_beam_size_one_equals_greedy():
  fn, cache = make_model(OFFSETS)
  greedy = decoding.greedy_search(fn, cache, batch_size=len(OFFSETS), max_decode_length=6)
  beam = decoding.beam_search(fn, cache, batch_size=len(OFFSETS), beam_size=1, max_decode_length=6, alpha=0.0)
  np.testing.assert_array_equal(beam.tokens, greedy.tokens)
  np.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-6)


def all_sequences(length: int):
  """Every output: non-EOS tokens then EOS (up to `length` tokens), or `length` non-EOS tokens."""
  others = [t for t in range(VOCAB) if t != EOS]
  for n in range(length):
    for body in itertools.product(others, repeat=n):
      yield list(body) + [EOS]
  yield from (list(body) for body in itertools.product(others, repeat=length))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_matches_brute_force(alpha):
  length = 3
  offsets = [0, 2]
  # (VOCAB - 1) ** (length - 1) live prefixes times VOCAB expansions: the beam never has to prune.
  beam_size = (VOCAB - 1) ** (length - 1) * VOCAB
  fn, cache = make_model(offsets, expand=beam_size)
  result = decoding.beam_search(
    fn, cache, batch_size=len(offsets), beam_size=beam_size, max_decode_length=length, alpha=alpha
  )
  assert result.tokens.shape == (len(offsets), beam_size, length)
  for row, offset in enumerate(offsets):
    ranked = sorted(
      ((penalised(reference_log_prob(offset, seq), len(seq), alpha), seq) for seq in all_sequences(length)),
      reverse=True,
    )
    np.testing.assert_allclose(result.scores[row], [score for score, _ in ranked[:beam_size]], rtol=1e-5, atol=1e-4)
    for k in range(5):
      assert strip(result.tokens[row, k]) == ranked[k][1]


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_scores_sorted_and_consistent_with_cache_history(alpha):
  # A beam narrower than the search space re-selects beams every step; its scores are only right if
  # the per-row cache (the running total the logits depend on) follows the beams.
  beam_size, length = 3, 6
  fn, cache = make_model(OFFSETS, expand=beam_size)
  result = decoding.beam_search(
    fn, cache, batch_size=len(OFFSETS), beam_size=beam_size, max_decode_length=length, alpha=alpha
  )
  assert result.tokens.shape == (len(OFFSETS), beam_size, length)
  assert result.scores.shape == (len(OFFSETS), beam_size)
  scores = np.asarray(result.scores)
  assert np.all(np.isfinite(scores)) and np.all(np.diff(scores, axis=1) <= 0)
  for row, offset in enumerate(OFFSETS):
    seqs = [strip(result.tokens[row, k]) for k in range(beam_size)]
    assert len({tuple(s) for s in seqs}) == beam_size
    for k, seq in enumerate(seqs):
      np.testing.assert_allclose(
        scores[row, k], penalised(reference_log_prob(offset, seq), len(seq), alpha), rtol=1e-5, atol=1e-4
      )
    # Never worse than the greedy sequence.
    greedy_tokens, greedy_log_prob = greedy_reference(offset, length)
    assert scores[row, 0] >= penalised(greedy_log_prob, len(greedy_tokens), alpha) - 1e-4


def test_beam_stops_early():
  calls = []
  fn, cache = forced_eos_model(eos_step=1, calls=calls)
  result = decoding.beam_search(fn, cache, batch_size=2, beam_size=2, max_decode_length=8, alpha=0.6)
  jax.effects_barrier()
  np.testing.assert_array_equal(result.tokens, [[[2, EOS] + [0] * 6, [3, EOS] + [0] * 6]] * 2)
  # Both beams finish at step 1 and no live beam can catch up: no third call.
  assert calls == [0, 1]


@pytest.mark.parametrize("method, options", [("greedy", {}), ("beam", dict(beam_size=2, alpha=0.6))])
def test_without_an_end_token_every_row_runs_to_max_length(method, options):
  """eos_id=None: the token the model prefers at step 1 (id 1) is an ordinary token; no early stop."""
  calls = []
  fn, cache = forced_eos_model(eos_step=1, calls=calls)
  result = decoding.decode(method, fn, cache, batch_size=2, max_decode_length=5, eos_id=None, **options)
  jax.effects_barrier()
  assert calls == [0, 1, 2, 3, 4]
  best = np.asarray(result.tokens)[:, 0]
  assert best[:, 1].tolist() == [EOS, EOS] and np.all(best[:, 2:] != 0)  # decoding went on after the "EOS"
  assert np.all(np.isfinite(np.asarray(result.scores)))


def test_sample_top_k_one_and_zero_temperature_equal_greedy():
  fn, cache = make_model(OFFSETS)
  kwargs = dict(batch_size=len(OFFSETS), max_decode_length=6)
  greedy = decoding.greedy_search(fn, cache, **kwargs)
  top_one = decoding.temperature_sample(fn, cache, jax.random.PRNGKey(0), top_k=1, **kwargs)
  cold = decoding.temperature_sample(fn, cache, jax.random.PRNGKey(1), temperature=0.0, **kwargs)
  hot_top_one = decoding.temperature_sample(fn, cache, jax.random.PRNGKey(2), temperature=3.0, top_k=1, **kwargs)
  for result in (top_one, cold, hot_top_one):
    np.testing.assert_array_equal(result.tokens, greedy.tokens)
  np.testing.assert_allclose(top_one.scores, greedy.scores, rtol=1e-6)
  np.testing.assert_allclose(cold.scores, greedy.scores, rtol=1e-6)


def test_sample_determinism_variation_and_scores():
  batch, num_decodes, length, temperature = 2, 4, 6, 1.5
  fn, cache = make_model(OFFSETS[:batch], expand=num_decodes)
  sample = functools.partial(
    decoding.temperature_sample,
    fn,
    cache,
    batch_size=batch,
    max_decode_length=length,
    temperature=temperature,
    num_decodes=num_decodes,
  )
  first, again, other = sample(jax.random.PRNGKey(0)), sample(jax.random.PRNGKey(0)), sample(jax.random.PRNGKey(1))
  assert first.tokens.shape == (batch, num_decodes, length) and first.scores.shape == (batch, num_decodes)
  np.testing.assert_array_equal(first.tokens, again.tokens)
  assert not np.array_equal(first.tokens, other.tokens)
  assert np.all(np.diff(np.asarray(first.scores), axis=1) <= 0)
  for row, offset in enumerate(OFFSETS[:batch]):
    for k in range(num_decodes):
      seq = strip(first.tokens[row, k])
      prefix, expected = [0], 0.0
      for token in seq:  # log-probs under logits / temperature, following this sample's own history
        expected += log_softmax(reference_logits(offset, prefix) / temperature)[token]
        prefix.append(token)
      np.testing.assert_allclose(first.scores[row, k], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  "options, allowed",
  [
    (dict(top_p=0.7), {2, 3}),  # 0.45 + 0.3 reach 0.7; 0.45 alone does not
    (dict(top_p=0.4), {2}),  # the top token alone exceeds 0.4
    (dict(top_k=2), {2, 3}),
    (dict(top_k=3, top_p=0.8), {2, 3}),  # renormalised over the top 3: (0.45 + 0.3) / 0.88 reaches 0.8
    (dict(top_k=3, top_p=0.9), {2, 3, 4}),  # ... but not 0.9
  ],
)
def test_sample_filters_never_leave_the_kept_set(options, allowed):
  probs = [0.04, 0.08, 0.45, 0.3, 0.13]  # EOS (1) is never kept, so every position holds a sample
  batch, num_decodes, length = 2, 128, 4
  fn, cache = constant_model(probs)
  result = decoding.temperature_sample(
    fn, cache, jax.random.PRNGKey(7), batch_size=batch, max_decode_length=length, num_decodes=num_decodes, **options
  )
  assert result.tokens.shape == (batch, num_decodes, length)
  assert set(np.unique(np.asarray(result.tokens)).tolist()) == allowed


def test_sample_without_filters_reaches_every_token():
  probs = [0.2, 0.05, 0.25, 0.3, 0.2]
  fn, cache = constant_model(probs)
  result = decoding.temperature_sample(
    fn, cache, jax.random.PRNGKey(0), batch_size=1, max_decode_length=3, num_decodes=256
  )
  assert set(np.unique(np.asarray(result.tokens)).tolist()) == set(range(VOCAB))


def test_decode_dispatches():
  fn, cache = make_model(OFFSETS)
  kwargs = dict(batch_size=len(OFFSETS), max_decode_length=5)
  np.testing.assert_array_equal(
    decoding.decode("greedy", fn, cache, **kwargs).tokens, decoding.greedy_search(fn, cache, **kwargs).tokens
  )
  rng = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(
    decoding.decode("sample", fn, cache, rng=rng, top_k=3, **kwargs).tokens,
    decoding.temperature_sample(fn, cache, rng, top_k=3, **kwargs).tokens,
  )
  beam_fn, beam_cache = make_model(OFFSETS, expand=2)
  np.testing.assert_array_equal(
    decoding.decode("beam", beam_fn, beam_cache, beam_size=2, **kwargs).tokens,
    decoding.beam_search(beam_fn, beam_cache, beam_size=2, **kwargs).tokens,
  )


@pytest.mark.parametrize(
  "method, options, message",
  [
    ("nucleus", {}, "unknown decoding method 'nucleus'"),
    ("greedy", dict(top_k=2), "unknown option.*top_k"),
    ("beam", dict(temperature=0.5), "unknown option.*temperature"),
    ("beam", {}, "needs option.*beam_size"),
    ("sample", dict(top_k=-1), "top_k must be >= 0"),
    ("sample", dict(top_p=0.0), "top_p must be in"),
    ("sample", dict(top_p=1.5), "top_p must be in"),
    ("sample", dict(temperature=-1.0), "temperature must be >= 0"),
    ("sample", dict(num_decodes=0), "num_decodes must be >= 1"),
    ("beam", dict(beam_size=0), "beam_size must be >= 1"),
    ("greedy", dict(max_decode_length=0), "max_decode_length must be >= 1"),
  ],
)
def test_decode_rejects_bad_options(method, options, message):
  fn, cache = make_model([0])
  options = dict(dict(batch_size=1, max_decode_length=3), **options)
  with pytest.raises(ValueError, match=message):
    decoding.decode(method, fn, cache, rng=jax.random.PRNGKey(0), **options)


def test_sampling_needs_rng_and_eos_must_be_in_vocab():
  fn, cache = make_model([0])
  with pytest.raises(ValueError, match="rng"):
    decoding.decode("sample", fn, cache, batch_size=1, max_decode_length=3)
  with pytest.raises(ValueError, match="eos_id 9"):
    decoding.decode("greedy", fn, cache, batch_size=1, max_decode_length=3, eos_id=9)


@pytest.mark.parametrize(
  "method, options",
  [
    ("greedy", {}),
    ("sample", dict(temperature=0.8, top_k=3, top_p=0.9, num_decodes=2)),
    ("beam", dict(beam_size=3, alpha=0.6)),
  ],
)
def test_decode_under_jit(method, options):
  expand = options.get("num_decodes", options.get("beam_size", 1))
  fn, cache = make_model(OFFSETS, expand=expand)
  kwargs = dict(batch_size=len(OFFSETS), max_decode_length=5, **options)

  @jax.jit
  def run(cache, rng):
    return decoding.decode(method, fn, cache, rng=rng, **kwargs)

  rng = jax.random.PRNGKey(5)
  jitted, eager = run(cache, rng), decoding.decode(method, fn, cache, rng=rng, **kwargs)
  assert isinstance(jitted, decoding.DecodeResult)
  np.testing.assert_array_equal(jitted.tokens, eager.tokens)
  np.testing.assert_allclose(jitted.scores, eager.scores, rtol=1e-5)
