"""T5's prefix-LM and span-corruption objectives (data/objectives.py) against T5's semantics."""

from __future__ import annotations

import numpy as np
import pytest

from prompt_tuning.data import objectives as obj

VOCAB = 300  # <extra_id_0> = 299


def _rng(seed: int) -> np.random.Generator:
  return np.random.default_rng(seed)


def _spans(mask: np.ndarray) -> list[tuple[bool, int]]:
  """Runs of a boolean mask as (value, length)."""
  out = []
  for value in mask:
    if out and out[-1][0] == value:
      out[-1] = (out[-1][0], out[-1][1] + 1)
    else:
      out.append((bool(value), 1))
  return out


def reconstruct(inputs: list[int], targets: list[int], vocab_size: int) -> list[int]:
  """The original tokens from span corruption's inputs and targets: each sentinel of the inputs is
  replaced by what follows the same sentinel in the targets, up to the next sentinel."""
  first_sentinel = vocab_size - 100
  fill, current = {}, None
  for t in targets:
    if t >= first_sentinel:
      current = t
      fill[current] = []
    else:
      fill[current].append(t)
  out = []
  for t in inputs:
    out += fill[t] if t >= first_sentinel else [t]
  return out


def test_random_spans_helper_gives_t5s_lengths():
  # T5 1.1 pre-training: 512 input tokens come from 568 raw tokens, targets 114 (t5x span_corruption tasks).
  assert obj.random_spans_helper(512, 0.15, 3.0) == (568, 114)
  assert obj.random_spans_helper(32, 0.15, 3.0) == (34, 8)
  assert obj.Objective("span_corruption").segment_length({"inputs": 512, "targets": 114}) == 568
  assert obj.Objective("prefix_lm").segment_length({"inputs": 32, "targets": 32}) == 31


@pytest.mark.parametrize("length", [2, 10, 35, 100, 568])
def test_random_spans_noise_mask_counts_and_shape(length):
  for seed in range(5):
    mask = obj.random_spans_noise_mask(length, 0.15, _rng(seed), 3.0)
    assert mask.shape == (length,) and mask.dtype == bool
    num_noise, num_spans = obj.noise_counts(length, 0.15, 3.0)
    assert mask.sum() == num_noise
    spans = _spans(mask)
    assert spans[0][0] is False and spans[-1][0] is True  # non-noise first, noise last (alternating)
    assert sum(1 for value, _ in spans if value) == num_spans
  a, b = (obj.random_spans_noise_mask(100, 0.15, _rng(s)) for s in (1, 2))
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, obj.random_spans_noise_mask(100, 0.15, _rng(1)))


def test_noise_span_to_unique_sentinel_by_hand():
  tokens = np.arange(10, 20)
  mask = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], bool)
  # "We hold X to be Y that": each noise run -> one sentinel, counting down from the last id.
  np.testing.assert_array_equal(
    obj.noise_span_to_unique_sentinel(tokens, mask, 299), [10, 11, 299, 14, 15, 16, 298, 18, 19]
  )
  # Targets: each non-noise run -> one sentinel; the noise tokens stay.
  np.testing.assert_array_equal(obj.nonnoise_span_to_unique_sentinel(tokens, mask, 299), [299, 12, 13, 298, 17, 297])


def test_span_corruption_reconstructs_the_original():
  objective = obj.Objective("span_corruption")
  segment = objective.segment_length({"inputs": 32, "targets": 8})
  for seed in range(20):
    rng = _rng(seed)
    tokens = rng.integers(3, 200, size=int(rng.integers(1, 120))).tolist()
    inputs, targets = objective(tokens, _rng(seed + 100), segment, VOCAB)
    chunk = reconstruct(inputs, targets, VOCAB)
    assert chunk in [tokens[s : s + segment] for s in range(0, len(tokens), segment)]  # one aligned chunk, whole
    sentinels_in = [t for t in inputs if t >= VOCAB - 100]
    sentinels_out = [t for t in targets if t >= VOCAB - 100]
    assert sentinels_in == list(range(VOCAB - 1, VOCAB - 1 - len(sentinels_in), -1))  # extra_id_0, 1, ...
    assert sentinels_out == sentinels_in[: len(sentinels_out)] and targets[0] == VOCAB - 1
    if len(tokens) >= segment:  # a full segment: inputs + EOS fill the inputs length, targets fit
      assert len(inputs) + 1 <= 32 and len(targets) + 1 <= 8


def test_prefix_lm_splits_a_chunk_into_prefix_and_continuation():
  objective = obj.Objective("prefix_lm")
  segment = objective.segment_length({"inputs": 8, "targets": 8})  # 7
  document = list(range(100, 120))  # 20 tokens: chunks [0:7], [7:14], [14:20]
  chunks = [document[s : s + segment] for s in range(0, 20, segment)]
  split_points, picked = set(), set()
  for seed in range(200):
    inputs, targets = objective(document, _rng(seed), segment, VOCAB)
    assert inputs + targets in chunks and inputs and targets  # no sentinels, nothing lost
    split_points.add(len(inputs))
    picked.add(chunks.index(inputs + targets))
  assert picked == {0, 1, 2}  # every aligned chunk can be picked (T5's select_random_chunk)
  assert split_points == set(range(1, 7))  # the prefix takes 1..L-1 tokens (random_prefix_noise_mask)
  assert objective([5], _rng(0), segment, VOCAB) == ([], [5])  # one token: all target, as T5


def test_deterministic_under_a_seed():
  objective = obj.Objective("span_corruption")
  tokens = list(range(10, 45))  # one 35-token segment: the mask alone varies
  assert objective(tokens, _rng(7), 35, VOCAB) == objective(tokens, _rng(7), 35, VOCAB)
  assert objective(tokens, _rng(7), 35, VOCAB) != objective(tokens, _rng(8), 35, VOCAB)


def test_bad_settings_are_one_line():
  with pytest.raises(ValueError, match="unknown objective 'mlm'"):
    obj.Objective("mlm")
  with pytest.raises(ValueError, match="needs a targets length of at least 114"):
    obj.Objective("span_corruption").segment_length({"inputs": 512, "targets": 64})
  with pytest.raises(ValueError, match="uses 3 sentinels, but the vocabulary has 0 extra ids"):
    obj.Objective("span_corruption").check_vocabulary({"inputs": 32, "targets": 8}, 0)
  obj.Objective("prefix_lm").check_vocabulary({"inputs": 32, "targets": 8}, 0)  # no sentinels needed
