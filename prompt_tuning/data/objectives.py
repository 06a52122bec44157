"""T5's self-supervised objectives over token ids, in numpy: prefix LM and span corruption.

They follow t5/data/preprocessors.py of the T5 repository, function for function:

* `prefix_lm`: `select_random_chunk` -> `split_tokens_to_inputs_length` -> `denoise` with
  `random_prefix_noise_mask` (noise density 0.5), inputs = the noise (the prefix,
  `drop_nonnoise_tokens`), targets = the rest (`drop_noise_tokens`); no sentinels. A segment of
  L = inputs_length - 1 tokens is split after k tokens, k uniform in [1, L - 1].
* `span_corruption`: `random_spans_helper` gives the raw segment length whose corrupted inputs
  (plus EOS) fill `inputs_length` exactly; `denoise` with `random_spans_noise_mask` (density 0.15,
  mean span 3): each noise span becomes one sentinel in the inputs
  (`noise_span_to_unique_sentinel`), each non-noise span one sentinel in the targets
  (`nonnoise_span_to_unique_sentinel`). Sentinels count down from the vocabulary's last id
  (`<extra_id_0>` = vocab_size - 1), as T5's `sentinel_id`.

One difference, for a resumable stream (data/corpus.py): each document gives ONE example, a
random segment-aligned chunk of the segment length (T5's `select_random_chunk` with
max_length = the segment length), where T5 splits a 65536-token chunk into every segment (and,
for span corruption, first concatenates 128 documents). Outputs carry no EOS: the feature
layer appends it (seqio's append_eos_after_trim), as T5's pipeline does after these steps.
Randomness comes from a numpy Generator, so an example is a pure function of (tokens, seed).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

OBJECTIVES = ("prefix_lm", "span_corruption")


def select_random_chunk(tokens: np.ndarray, max_length: int, rng: np.random.Generator) -> np.ndarray:
  """One of the ceil(n / max_length) aligned chunks of `tokens` [n], picked uniformly (T5's default
  `select_random_chunk`: chunks offset by max_length, so every token is equally likely)."""
  n = len(tokens)
  if n <= max_length:
    return tokens
  start = max_length * int(rng.integers(0, -(-n // max_length)))
  return tokens[start : start + max_length]


def random_prefix_noise_mask(length: int, rng: np.random.Generator) -> np.ndarray:
  """bool [length]: True on the first k positions, k uniform in [min(1, length - 1), length - 1]."""
  max_inputs = length - 1
  num_inputs = int(rng.integers(min(max_inputs, 1), max_inputs + 1)) if max_inputs >= 0 else 0
  return np.arange(length) < num_inputs


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
  """[num_segments] positive ints summing to num_items, every partition equally likely (T5's
  shuffled `range(num_items - 1) < num_segments - 1` marks, then segment lengths)."""
  first_in_segment = np.concatenate([[0], rng.permutation(np.arange(num_items - 1) < num_segments - 1).astype(int)])
  segment_id = np.cumsum(first_in_segment)
  return np.bincount(segment_id, minlength=num_segments)


def noise_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
  """(noise tokens, noise spans) of `random_spans_noise_mask` for a sequence of `length`."""
  length = max(length, 2)  # as T5: avoid degeneracy
  num_noise = min(max(int(np.round(length * noise_density)), 1), length - 1)
  num_spans = max(int(np.round(num_noise / mean_noise_span_length)), 1)
  return num_noise, num_spans


def random_spans_noise_mask(
  length: int, noise_density: float, rng: np.random.Generator, mean_noise_span_length: float = 3.0
) -> np.ndarray:
  """bool [length]: spans alternating non-noise / noise, starting with non-noise.

  round(length * noise_density) noise tokens in round(that / mean_noise_span_length) spans (at
  least one of each, and at least one non-noise token); all such masks are equally likely.
  """
  orig_length = length
  length = max(length, 2)
  num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)  # [2 * spans]
  span_starts = np.cumsum(interleaved)[:-1]
  indicator = np.zeros(length, np.int64)
  indicator[span_starts] = 1
  is_noise = np.cumsum(indicator) % 2 == 1
  return is_noise[:orig_length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, sentinel_id: int) -> np.ndarray:
  """Each run of noise tokens -> one sentinel, sentinel_id for the first run, then one lower each."""
  prev_is_noise = np.concatenate([[False], noise_mask[:-1]])
  first = noise_mask & ~prev_is_noise
  subsequent = noise_mask & prev_is_noise
  sentinels = sentinel_id + 1 - np.cumsum(first)
  out = np.where(first, sentinels, tokens)
  return out[~subsequent]


def nonnoise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, sentinel_id: int) -> np.ndarray:
  return noise_span_to_unique_sentinel(tokens, ~noise_mask, sentinel_id)


def random_spans_helper(
  inputs_length: int, noise_density: float, mean_noise_span_length: float, extra_in: int = 1, extra_out: int = 1
) -> tuple[int, int]:
  """(raw tokens per example, targets length incl. EOS) so the corrupted inputs plus EOS fill
  `inputs_length` exactly (T5's `random_spans_helper`)."""

  def lengths(tokens_length: int) -> tuple[int, int]:
    num_noise = int(np.round(tokens_length * noise_density))
    num_spans = int(np.round(num_noise / mean_noise_span_length))
    return (tokens_length - num_noise + num_spans * extra_in + 1, num_noise + num_spans * extra_out + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  targets_length = lengths(tokens_length)[1]
  if noise_density == 0.5 and targets_length > inputs_length:  # T5's "minor hack"
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


@dataclasses.dataclass(frozen=True)
class Objective:
  """A self-supervised objective: raw document tokens -> (inputs ids, targets ids), no EOS.

  name: 'prefix_lm' or 'span_corruption'.
  noise_density, mean_noise_span_length: span corruption's (T5: 0.15, 3.0).
  """

  name: str = "prefix_lm"
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0

  def __post_init__(self):
    if self.name not in OBJECTIVES:
      raise ValueError(f"unknown objective {self.name!r}; one of {', '.join(OBJECTIVES)}")
    if not 0 < self.noise_density < 1 or self.mean_noise_span_length < 1:
      raise ValueError(
        f"span corruption needs 0 < noise_density < 1 and mean_noise_span_length >= 1, "
        f"got {self.noise_density}, {self.mean_noise_span_length}"
      )

  def segment_length(self, feature_lengths: dict[str, int]) -> int:
    """Raw tokens per example for {'inputs': n, 'targets': m}; a targets length too short for
    span corruption's targets is one line (T5 raises the same)."""
    inputs = int(feature_lengths["inputs"])
    if self.name == "prefix_lm":
      return max(inputs - 1, 1)  # split_tokens_to_inputs_length: room for EOS
    tokens, targets = random_spans_helper(inputs, self.noise_density, self.mean_noise_span_length)
    if int(feature_lengths["targets"]) < targets:
      raise ValueError(
        f"span corruption with inputs length {inputs} needs a targets length of at least {targets}, "
        f"got TASK_FEATURE_LENGTHS {dict(feature_lengths)}"
      )
    return tokens

  def check_vocabulary(self, feature_lengths: dict[str, int], extra_ids: int | None) -> None:
    """Span corruption's sentinels must be extra ids: one line if a segment can have more spans."""
    if self.name != "span_corruption":
      return
    _, spans = noise_counts(self.segment_length(feature_lengths), self.noise_density, self.mean_noise_span_length)
    if extra_ids is not None and spans + 1 > extra_ids:  # targets use one sentinel more than inputs
      raise ValueError(
        f"span corruption of {self.segment_length(feature_lengths)}-token segments uses {spans + 1} sentinels, "
        f"but the vocabulary has {extra_ids} extra ids"
      )

  def __call__(
    self, tokens: Sequence[int], rng: np.random.Generator, segment_length: int, vocab_size: int
  ) -> tuple[list[int], list[int]]:
    """(inputs ids, targets ids) of one document's tokens, from one random chunk of it."""
    tokens = select_random_chunk(np.asarray(tokens, np.int64), segment_length, rng)
    if self.name == "prefix_lm":
      mask = random_prefix_noise_mask(len(tokens), rng)
      return tokens[mask].tolist(), tokens[~mask].tolist()
    mask = random_spans_noise_mask(len(tokens), self.noise_density, rng, self.mean_noise_span_length)
    sentinel = vocab_size - 1
    inputs = noise_span_to_unique_sentinel(tokens, mask, sentinel)
    targets = nonnoise_span_to_unique_sentinel(tokens, mask, sentinel)
    return inputs.tolist(), targets.tolist()
