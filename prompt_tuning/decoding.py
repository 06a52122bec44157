"""Autoregressive decoding: greedy search, temperature sampling and beam search.

Model-agnostic: a model is seen only through `tokens_to_logits`, which maps the
current decoder token of every flat-batch row [flat_batch, 1] and a cache pytree
to next-token logits [flat_batch, vocab] and the updated cache. Conventions
follow seqio/t5x:

* the first decoder input is token 0 (BOS shares the pad id);
* returned tokens exclude that 0, include `eos_id` when it is produced, and are
  0 after it; with `eos_id=None` there is no end token and every row runs to
  `max_decode_length` (fixed-length generation, and benchmarks that must not
  stop early);
* flat batches are example-major: row `b * n + j` holds decode j (a sample or a
  beam) of example b, as built by `flat_batch_beam_expand`.

Cache leaves whose leading dim equals the flat batch are per-row and are
gathered when beams are re-selected; other leaves (e.g. a scalar step index, or
per-example leaves [batch, ...] that an example's rows share, such as a T5's
encoder-decoder keys and values) pass through untouched. Everything is jit-compatible: options are static Python
values, loops are `jax.lax.while_loop`s that stop once every row has finished.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Cache = Any  # a pytree
TokensToLogits = Callable[[Array, Cache], tuple[Array, Cache]]

NEG_INF = float("-inf")  # log-probability of an empty beam slot / a filtered-out token


class DecodeResult(NamedTuple):
  """Decoded sequences, best first along `num_decodes`.

  Attributes:
    tokens: int32 [batch, num_decodes, max_decode_length]: no initial 0, EOS
      included when produced, 0 after it.
    scores: float32 [batch, num_decodes]: summed log-probabilities (greedy,
      sampling) or length-penalised ones (beam search).
  """

  tokens: Array
  scores: Array


def flat_batch_beam_expand(x: Array, beam_size: int) -> Array:
  """Repeats every example `beam_size` times: [batch, ...] -> [batch * beam_size, ...], example-major."""
  return jnp.repeat(x, beam_size, axis=0)


def _require(condition: bool, message: str):
  if not condition:
    raise ValueError(message)


def _token_or_none(eos_id: int | None) -> int:
  """The id to compare tokens with: eos_id, or -1 (no token has it) when there is no end token."""
  return -1 if eos_id is None else eos_id


def _check_common(batch_size: int, max_decode_length: int):
  _require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
  _require(max_decode_length >= 1, f"max_decode_length must be >= 1, got {max_decode_length}")


def _gather_cache(cache: Cache, rows: Array, flat_batch: int) -> Cache:
  """Reorders the per-row leaves of `cache` (leading dim == flat_batch) by `rows` int32 [flat_batch]."""

  def gather(leaf):
    if getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == flat_batch:
      return jnp.take(leaf, rows, axis=0)
    return leaf

  return jax.tree_util.tree_map(gather, cache)


def _call_model(
  tokens_to_logits: TokensToLogits, tokens: Array, cache: Cache, flat_batch: int, eos_id: int | None
) -> tuple[Array, Cache]:
  """Feeds tokens int32 [flat_batch]; returns float32 logits [flat_batch, vocab] and the new cache."""
  logits, cache = tokens_to_logits(tokens[:, None], cache)
  _require(
    logits.ndim == 2 and logits.shape[0] == flat_batch,
    f"tokens_to_logits must return logits [{flat_batch}, vocab], got {tuple(logits.shape)}",
  )
  _require(
    eos_id is None or 0 <= eos_id < logits.shape[1],
    f"eos_id {eos_id} is outside the vocabulary of size {logits.shape[1]}",
  )
  return logits.astype(jnp.float32), cache


def _mask_outside(logits: Array, keep_indices: Array) -> Array:
  """Sets every logit [rows, vocab] not listed in keep_indices [rows, k] to -inf."""
  keep = jax.vmap(lambda idx: jnp.zeros(logits.shape[-1], bool).at[idx].set(True))(keep_indices)
  return jnp.where(keep, logits, NEG_INF)


def _top_k_filter(logits: Array, top_k: int) -> Array:
  """Keeps the `top_k` largest logits [rows, vocab] of every row (0 = off)."""
  if top_k == 0 or top_k >= logits.shape[-1]:
    return logits
  return _mask_outside(logits, jax.lax.top_k(logits, top_k)[1])


def _top_p_filter(logits: Array, top_p: float) -> Array:
  """Nucleus filter: keeps the smallest set of most likely tokens whose probability mass is >= top_p."""
  if top_p >= 1.0:
    return logits
  order = jnp.argsort(-logits, axis=-1)  # most likely first
  probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # A token is in the nucleus while the mass ahead of it is short of top_p; the top token always is.
  keep_sorted = (mass_before < top_p).at[:, 0].set(True)
  keep = jax.vmap(lambda idx, k: jnp.zeros(logits.shape[-1], bool).at[idx].set(k))(order, keep_sorted)
  return jnp.where(keep, logits, NEG_INF)


def _decode_rows(
  tokens_to_logits: TokensToLogits,
  cache: Cache,
  choose: Callable[[Array, Array], Array],
  *,
  flat_batch: int,
  max_decode_length: int,
  eos_id: int | None,
  temperature: float,
) -> tuple[Array, Array]:
  """Extends every row by one chosen token per step until all rows emitted EOS or max length.

  Args:
    choose: (float32 logits [flat_batch, vocab], step) -> int32 tokens [flat_batch].

  Returns:
    tokens int32 [flat_batch, max_decode_length] and scores float32 [flat_batch],
    the summed log_softmax(logits / temperature) (plain logits when temperature == 0)
    of the tokens up to and including EOS.
  """

  def cond(state):
    step, _, _, done, _, _ = state
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, tokens, last, done, scores, cache = state
    logits, cache = _call_model(tokens_to_logits, last, cache, flat_batch, eos_id)
    token = choose(logits, step).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits / temperature if temperature > 0 else logits, axis=-1)
    log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    # Finished rows are padded with 0 and score nothing more.
    token = jnp.where(done, 0, token)
    scores = scores + jnp.where(done, 0.0, log_prob)
    tokens = tokens.at[:, step].set(token)
    return step + 1, tokens, token, done | (token == _token_or_none(eos_id)), scores, cache

  init = (
    jnp.int32(0),
    jnp.zeros((flat_batch, max_decode_length), jnp.int32),
    jnp.zeros((flat_batch,), jnp.int32),
    jnp.zeros((flat_batch,), bool),
    jnp.zeros((flat_batch,), jnp.float32),
    cache,
  )
  _, tokens, _, _, scores, _ = jax.lax.while_loop(cond, body, init)
  return tokens, scores


def _sort_decodes(tokens: Array, scores: Array) -> DecodeResult:
  """Sorts tokens [batch, n, length] and scores [batch, n] by score, best first."""
  order = jnp.argsort(-scores, axis=-1, stable=True)
  return DecodeResult(
    tokens=jnp.take_along_axis(tokens, order[:, :, None], axis=1), scores=jnp.take_along_axis(scores, order, axis=1)
  )


def greedy_search(
  tokens_to_logits: TokensToLogits, cache: Cache, *, batch_size: int, max_decode_length: int, eos_id: int | None = 1
) -> DecodeResult:
  """Picks the most likely token at every step.

  Args:
    tokens_to_logits: see `TokensToLogits`; called with [batch_size, 1] tokens.
    cache: the model cache at flat batch size batch_size.
    batch_size: number of examples.
    max_decode_length: number of tokens produced at most.
    eos_id: end-of-sequence token; None: none, every row runs max_decode_length steps.

  Returns:
    DecodeResult with tokens [batch, 1, max_decode_length] and scores [batch, 1],
    the summed log_softmax(logits) of the produced tokens.
  """
  return temperature_sample(
    tokens_to_logits,
    cache,
    None,
    batch_size=batch_size,
    max_decode_length=max_decode_length,
    eos_id=eos_id,
    temperature=0.0,
  )


def temperature_sample(
  tokens_to_logits: TokensToLogits,
  cache: Cache,
  rng: Array | None,
  *,
  batch_size: int,
  max_decode_length: int,
  eos_id: int | None = 1,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  num_decodes: int = 1,
) -> DecodeResult:
  """Samples from softmax(logits / temperature), optionally restricted to the top-k and/or nucleus tokens.

  Filters apply in the order temperature, top_k, top_p. temperature == 0 is
  greedy search (then rng may be None).

  Args:
    tokens_to_logits: see `TokensToLogits`; called with [batch_size * num_decodes, 1] tokens.
    cache: the model cache at flat batch size batch_size * num_decodes (example-major).
    rng: a PRNG key; the same key gives the same samples.
    batch_size: number of examples.
    max_decode_length: number of tokens produced at most.
    eos_id: end-of-sequence token; None: none, every row runs max_decode_length steps.
    temperature: >= 0; logits are divided by it.
    top_k: keep only the k most likely tokens (0 = off).
    top_p: keep only the nucleus of mass top_p, in (0, 1] (1 = off).
    num_decodes: samples per example.

  Returns:
    DecodeResult with tokens [batch, num_decodes, max_decode_length] and scores
    [batch, num_decodes], the summed unfiltered log_softmax(logits / temperature)
    of the sampled tokens; samples sorted by score, best first.
  """
  _check_common(batch_size, max_decode_length)
  _require(temperature >= 0, f"temperature must be >= 0, got {temperature}")
  _require(top_k >= 0, f"top_k must be >= 0 (0 = off), got {top_k}")
  _require(0 < top_p <= 1, f"top_p must be in (0, 1] (1 = off), got {top_p}")
  _require(num_decodes >= 1, f"num_decodes must be >= 1, got {num_decodes}")
  _require(temperature == 0 or rng is not None, "temperature sampling needs an rng key (or temperature=0)")

  if temperature == 0:
    choose = lambda logits, step: jnp.argmax(logits, axis=-1)
  else:

    def choose(logits, step):
      filtered = _top_p_filter(_top_k_filter(logits / temperature, top_k), top_p)
      return jax.random.categorical(jax.random.fold_in(rng, step), filtered, axis=-1)

  flat_batch = batch_size * num_decodes
  tokens, scores = _decode_rows(
    tokens_to_logits,
    cache,
    choose,
    flat_batch=flat_batch,
    max_decode_length=max_decode_length,
    eos_id=eos_id,
    temperature=temperature,
  )
  return _sort_decodes(
    tokens.reshape(batch_size, num_decodes, max_decode_length), scores.reshape(batch_size, num_decodes)
  )


def length_penalty(length: Array | int, alpha: float) -> Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha; scores are log-prob sums divided by it."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _top_beams(seqs: Array, scores: Array, beam_size: int) -> tuple[Array, Array]:
  """Keeps the beam_size best of seqs [batch, n, length] by scores [batch, n], best first (ties: lower index)."""
  scores, idx = jax.lax.top_k(scores, beam_size)
  return jnp.take_along_axis(seqs, idx[:, :, None], axis=1), scores


def _extend(seqs: Array, parents: Array, tokens: Array, step: Array) -> Array:
  """Copies parent beams of seqs [batch, beams, length] (parents [batch, k]) and writes tokens [batch, k] at step."""
  return jnp.take_along_axis(seqs, parents[:, :, None], axis=1).at[:, :, step].set(tokens)


def beam_search(
  tokens_to_logits: TokensToLogits,
  cache: Cache,
  *,
  batch_size: int,
  beam_size: int,
  max_decode_length: int,
  eos_id: int | None = 1,
  alpha: float = 0.6,
) -> DecodeResult:
  """Beam search with a separate set of finished hypotheses and a GNMT length penalty.

  Every step expands the live beams by every token and keeps the beam_size best
  expansions by log-probability (all have the same length, so the penalty does
  not change this ranking). Those ending in EOS move to the finished set, scored
  log_prob / length_penalty(length incl. EOS, alpha); the live beams are then
  refilled with the best expansions that do not end in EOS, so finished beams
  are never extended. With beam_size 1 and alpha 0 this is greedy search.

  An example is done once its finished set is full (so it may run to max length
  when EOS rarely ranks in the top beam_size) and no live beam can beat the
  worst finished one: log-probs only fall as a beam grows, so a live beam's best
  reachable score uses the most favourable penalty among the lengths still ahead.
  At the end, live beams count as finished at their current length (the maximum
  length unless the example was already done, when they cannot win anyway).

  Args:
    tokens_to_logits: see `TokensToLogits`; called with [batch_size * beam_size, 1] tokens.
    cache: the model cache at flat batch size batch_size * beam_size (example-major);
      per-row leaves are gathered as beams are re-selected.
    batch_size: number of examples.
    beam_size: beams per example.
    max_decode_length: number of tokens produced at most.
    eos_id: end-of-sequence token; None: none, so no beam finishes before max_decode_length and
      the search runs every step (the same work per step as with an EOS that is never chosen).
    alpha: length penalty exponent (0 = none).

  Returns:
    DecodeResult with tokens [batch, beam_size, max_decode_length] and
    length-penalised scores [batch, beam_size], best first. Slots that no
    sequence could fill (beam_size larger than the number of sequences) score -inf.
  """
  _check_common(batch_size, max_decode_length)
  _require(beam_size >= 1, f"beam_size must be >= 1, got {beam_size}")
  num_beams, flat_batch = beam_size, batch_size * beam_size
  eos = _token_or_none(eos_id)
  row_offsets = jnp.arange(batch_size, dtype=jnp.int32)[:, None] * num_beams

  def best_reachable(live_logp, step):
    # Live beams have `step` tokens; they can still finish at any length in [step + 1, max_decode_length].
    return jnp.maximum(
      live_logp / length_penalty(step + 1, alpha), live_logp / length_penalty(max_decode_length, alpha)
    )

  def cond(state):
    step, _, live_logp, _, _, _, fin_scores = state
    done = jnp.max(best_reachable(live_logp, step), axis=1) < jnp.min(fin_scores, axis=1)
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, live_seqs, live_logp, last, cache, fin_seqs, fin_scores = state
    logits, cache = _call_model(tokens_to_logits, last.reshape(flat_batch), cache, flat_batch, eos_id)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch_size, num_beams, vocab)
    cand_logp = (live_logp[:, :, None] + log_probs).reshape(batch_size, num_beams * vocab)
    cand_is_eos = jnp.arange(num_beams * vocab) % vocab == eos

    # The best expansions that end in EOS join the finished set.
    top_logp, top_idx = jax.lax.top_k(cand_logp, num_beams)
    top_seqs = _extend(live_seqs, top_idx // vocab, top_idx % vocab, step)
    new_scores = jnp.where(top_idx % vocab == eos, top_logp / length_penalty(step + 1, alpha), NEG_INF)
    fin_seqs, fin_scores = _top_beams(
      jnp.concatenate([fin_seqs, top_seqs], axis=1), jnp.concatenate([fin_scores, new_scores], axis=1), num_beams
    )

    # The live beams continue with the best expansions that do not.
    live_logp, live_idx = jax.lax.top_k(jnp.where(cand_is_eos, NEG_INF, cand_logp), num_beams)
    parents, tokens = live_idx // vocab, (live_idx % vocab).astype(jnp.int32)
    live_seqs = _extend(live_seqs, parents, tokens, step)
    cache = _gather_cache(cache, (row_offsets + parents).reshape(flat_batch), flat_batch)
    return step + 1, live_seqs, live_logp, tokens, cache, fin_seqs, fin_scores

  empty_seqs = jnp.zeros((batch_size, num_beams, max_decode_length), jnp.int32)
  # Only the first beam is live at first: the others would duplicate it.
  live_logp = jnp.full((batch_size, num_beams), NEG_INF, jnp.float32).at[:, 0].set(0.0)
  init = (
    jnp.int32(0),
    empty_seqs,
    live_logp,
    jnp.zeros((batch_size, num_beams), jnp.int32),
    cache,
    empty_seqs,
    jnp.full((batch_size, num_beams), NEG_INF, jnp.float32),
  )
  step, live_seqs, live_logp, _, _, fin_seqs, fin_scores = jax.lax.while_loop(cond, body, init)

  live_scores = live_logp / length_penalty(step, alpha)
  tokens, scores = _top_beams(
    jnp.concatenate([fin_seqs, live_seqs], axis=1), jnp.concatenate([fin_scores, live_scores], axis=1), num_beams
  )
  return DecodeResult(tokens=tokens, scores=scores)


_METHODS = {"greedy": greedy_search, "beam": beam_search, "sample": temperature_sample}


def decode(
  method: str, tokens_to_logits: TokensToLogits, cache: Cache, *, rng: Array | None = None, **options
) -> DecodeResult:
  """Dispatches to greedy_search ('greedy'), beam_search ('beam') or temperature_sample ('sample').

  `options` are the keyword arguments of the chosen function (batch_size,
  max_decode_length, ...); rng is used by 'sample' only.
  """
  _require(method in _METHODS, f"unknown decoding method {method!r}; expected one of {sorted(_METHODS)}")
  decoder = _METHODS[method]
  params = [p for p in inspect.signature(decoder).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
  allowed = {p.name for p in params}
  unknown = sorted(set(options) - allowed)
  _require(not unknown, f"unknown option(s) {', '.join(unknown)} for {method!r} decoding; allowed: {sorted(allowed)}")
  missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in options]
  _require(not missing, f"{method!r} decoding needs option(s) {', '.join(missing)}")
  if method == "sample":
    return decoder(tokens_to_logits, cache, rng, **options)
  return decoder(tokens_to_logits, cache, **options)
