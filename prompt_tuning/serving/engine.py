"""The device side of the server: one frozen model, the prompt table, and a few compiled shapes.

A device batch is [bucket, inputs_length] tokens, with each row's prompt slot and prompt length
(task_ids, prompt_lengths [bucket]); the batch is padded with empty rows up to the smallest bucket
(powers of two up to max_batch_size by default) that holds it. Decoding compiles once per
(method, decode length, bucket), the decode length being the task's targets feature length as
infer decodes it; scoring once per bucket, with candidates padded to [max_candidates,
targets_length]. Every program is compiled at start (`warm_up`), and again only when a prompt
with a new targets length arrives. Trailing padding (of inputs, prompts and candidates) changes
nothing for the real positions, so each row computes what its task alone computes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Hashable, Mapping, Sequence

import jax
import numpy as np

from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.serving.registry import PromptError, PromptRegistry, ServedPrompt

METHODS = ("greedy", "beam")
SCORE = ("score",)


@dataclasses.dataclass(frozen=True)
class PredictRow:
  """One input to decode: tokens int32 [<= inputs_length], EOS-terminated."""

  prompt: ServedPrompt
  tokens: np.ndarray


@dataclasses.dataclass(frozen=True)
class ScoreRow:
  """One input and up to max_candidates candidate targets: candidates int32 [c, <= targets_length]."""

  prompt: ServedPrompt
  tokens: np.ndarray
  candidates: np.ndarray


def predict_key(method: str, decode_length: int) -> tuple[str, str, int]:
  return ("predict", method, int(decode_length))


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
  """1, 2, 4, ... up to max_batch_size (included even when it is not a power of two)."""
  sizes, size = [], 1
  while size < max_batch_size:
    sizes.append(size)
    size *= 2
  return tuple(sizes + [max_batch_size])


class Engine:
  """Runs batches of rows on the frozen model with the registry's prompt table.

  Args:
    config, params: the frozen T5 (params: its weights, without a prompt; placed on the device here).
    registry: the prompt table and its fixed shapes.
    buckets: the batch sizes compiled, ascending; the largest is the batch size limit.
    methods: {'greedy': {}, 'beam': {'beam_size': 4, 'alpha': 0.6}}: the decoding methods served.
    max_candidates: candidates per scored row (a request with more takes several rows).
  """

  def __init__(
    self,
    config: T5Config,
    params: Mapping[str, Any],
    registry: PromptRegistry,
    *,
    buckets: Sequence[int],
    methods: Mapping[str, Mapping[str, Any]],
    max_candidates: int,
  ):
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
      raise ValueError(f"decoding methods must be some of {', '.join(METHODS)}, got {', '.join(methods) or 'none'}")
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
      raise ValueError(f"batch buckets must be ascending positive sizes, got {list(buckets)}")
    self.registry, self.buckets, self.max_candidates = registry, tuple(buckets), int(max_candidates)
    self.methods = {name: dict(options) for name, options in methods.items()}
    limits = registry.limits
    # num_tasks = capacity and no task_lengths: each row's length comes as data (prompt_lengths).
    prompt = PromptConfig(limits.prompt_length, limits.placement, num_tasks=limits.capacity)
    self.model = EncoderDecoderModel(PromptedTransformer(config, prompt_config=prompt))
    self.params = jax.device_put({k: v for k, v in params.items() if k != "prompt"})
    self._rank = jax.jit(self._rank_fn)
    self._decoders = {name: jax.jit(functools.partial(self._decode_fn, name), static_argnums=0) for name in methods}
    self.compiled: set[tuple[Hashable, int]] = set()
    self.mixed_batches = 0  # batches holding rows of more than one task (statistics, for /health)

  @property
  def max_batch_size(self) -> int:
    return self.buckets[-1]

  # ---------------------------------------------------------------- jitted

  def _full(self, params: Any, table: jax.Array) -> dict:
    return {**params, "prompt": {"prompt": table}}

  def _decode_fn(self, method: str, decode_length: int, params, table, tokens, task_ids, lengths):
    return self.model.predict_batch(
      self._full(params, table),
      tokens,
      max_decode_length=decode_length,
      method=method,
      rng=jax.random.PRNGKey(0),
      task_ids=task_ids,
      prompt_lengths=lengths,
      **self.methods[method],
    )

  def _rank_fn(self, params, table, tokens, candidates, task_ids, lengths):
    return self.model.rank_classify(self._full(params, table), tokens, candidates, task_ids, lengths)

  # ---------------------------------------------------------------- batches

  def bucket(self, rows: int) -> int:
    for size in self.buckets:
      if size >= rows:
        return size
    raise ValueError(f"{rows} rows exceed the largest batch bucket {self.buckets[-1]}")

  def _inputs(self, rows: Sequence[Any], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens [size, inputs_length], task_ids and prompt lengths [size]; padding rows are empty."""
    tokens = np.zeros((size, self.registry.limits.inputs_length), np.int32)
    task_ids = np.zeros((size,), np.int32)
    lengths = np.ones((size,), np.int32)
    for i, row in enumerate(rows):
      tokens[i, : len(row.tokens)] = row.tokens
      task_ids[i], lengths[i] = row.prompt.slot, row.prompt.length
    return tokens, task_ids, lengths

  def run(self, key: Hashable, rows: Sequence[Any]) -> list[Any]:
    """One batch of rows of `key` (from the Batcher's worker thread). Returns per row: for
    predict, (token ids up to and with EOS, score); for score, float32 [c] log-likelihoods; a
    PromptError (410) for a row whose prompt was removed while it waited."""
    gone = [not self.registry.current(row.prompt) for row in rows]
    live = [row for row, g in zip(rows, gone) if not g]
    results = iter(self._run_live(key, live) if live else [])
    return [
      PromptError(f"task {row.prompt.name} was removed while this request waited", 410) if g else next(results)
      for row, g in zip(rows, gone)
    ]

  def _run_live(self, key: Hashable, rows: Sequence[Any]) -> list[Any]:
    size = self.bucket(len(rows))
    self.compiled.add((key, size))
    self.mixed_batches += len({row.prompt.slot for row in rows}) > 1
    tokens, task_ids, lengths = self._inputs(rows, size)
    table = self.registry.table
    if key == SCORE:
      limits = self.registry.limits
      candidates = np.zeros((size, self.max_candidates, limits.targets_length), np.int32)
      for i, row in enumerate(rows):
        candidates[i, : row.candidates.shape[0], : row.candidates.shape[1]] = row.candidates
      scores = np.asarray(self._rank(self.params, table, tokens, candidates, task_ids, lengths))
      return [scores[i, : row.candidates.shape[0]] for i, row in enumerate(rows)]
    _, method, decode_length = key
    out = self._decoders[method](decode_length, self.params, table, tokens, task_ids, lengths)
    out_tokens, out_scores = np.asarray(out.tokens)[:, 0], np.asarray(out.scores)[:, 0]
    return [(_through_eos(out_tokens[i]), float(out_scores[i])) for i in range(len(rows))]

  def keys(self, decode_lengths: Sequence[int]) -> list[Hashable]:
    """The batch keys of every served method at `decode_lengths`, and scoring."""
    return [predict_key(m, n) for n in sorted(set(decode_lengths)) for m in self.methods] + [SCORE]

  def warm_up(self, keys: Sequence[Hashable]) -> int:
    """Compiles (by running an empty batch) every bucket of `keys` not compiled yet; returns how many."""
    done = 0
    for key in keys:
      if key != SCORE and key[1] not in self.methods:
        continue
      for size in self.buckets:
        if (key, size) in self.compiled:
          continue
        tokens, task_ids, lengths = self._inputs([], size)
        if key == SCORE:
          limits = self.registry.limits
          candidates = np.zeros((size, self.max_candidates, limits.targets_length), np.int32)
          jax.block_until_ready(self._rank(self.params, self.registry.table, tokens, candidates, task_ids, lengths))
        else:
          _, method, decode_length = key
          jax.block_until_ready(
            self._decoders[method](decode_length, self.params, self.registry.table, tokens, task_ids, lengths)
          )
        self.compiled.add((key, size))
        done += 1
    return done


def _through_eos(ids: np.ndarray, eos_id: int = 1) -> list[int]:
  ids = [int(i) for i in ids]
  return ids[: ids.index(eos_id) + 1] if eos_id in ids else [i for i in ids if i]
