"""Length bucketing: each batch padded to the smallest bucket length that holds it.

Without buckets every batch is padded to the fixed feature lengths {'inputs': n, 'targets': m},
so a task whose inputs are mostly short spends most of the step on padding. With buckets, a
batch's encoder inputs [B, n_b] are padded to the smallest input bucket n_b >= its longest input
(EOS included), and its targets [B, m_b] likewise. The feature lengths stay the largest bucket
of each feature, so what is truncated does not change, and the step compiles once per
(n_b, m_b) pair: a bounded set of shapes, compiled before the first step (runs/train.py).

The whole global batch shares one bucket (every process computes it from all the batch's rows,
so all processes pad alike), examples are never reordered, and the bucket is a function of the
batch's contents: the data position stays the one resumable int (data/pipeline.py). The prompt
is not counted here: the model prepends it inside the encoder, so the encoder sees p + n_b
positions.

Padding does not change what a real position computes (attention masks padding, relative
positions do not depend on the row's width, the loss weights padding 0), so a batch gives the
same per-example losses in its bucket as at the full length, up to float rounding. Dropout is
the exception: its mask is drawn for the padded shape, so a bucketed run draws other (equally
distributed) masks than an unbucketed one.

The spec (TaskSpec.length_buckets; gin: LENGTH_BUCKETS):
  None                                   off: every batch padded to the feature lengths
  'pow2'                                 per feature, the powers of two from MIN_POW2 below the
                                         feature length, then the feature length itself
  {'inputs': [64, 128, 256], 'targets': 'pow2'}
                                         per feature, a list of lengths or 'pow2'; the feature
                                         length is added as the largest bucket; a feature left
                                         out keeps its one fixed length
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

from prompt_tuning.data.features import FEATURES, check_feature_lengths

POW2 = "pow2"
# The smallest power-of-two bucket: below it a compiled shape saves too little to be worth its compile.
MIN_POW2 = 16


def _pow2_lengths(max_length: int) -> tuple[int, ...]:
  """(16, 32, ..., the largest power of two below max_length, max_length); (max_length,) for <= 16."""
  out, length = [], MIN_POW2
  while length < max_length:
    out.append(length)
    length *= 2
  return (*out, max_length)


@dataclasses.dataclass(frozen=True)
class LengthBuckets:
  """The bucket lengths of each feature, ascending, each ending with the feature's length.

  lengths: {'inputs': (n_1 < ... < n), 'targets': (m_1 < ... < m)}.
  """

  lengths: Mapping[str, tuple[int, ...]]

  def pad_lengths(self, longest: Mapping[str, int]) -> dict[str, int]:
    """{'inputs': n_b, 'targets': m_b}: per feature, the smallest bucket >= longest[feature].

    longest: the batch's longest row of each feature, in tokens (EOS included); rows are already
      cut to the feature length, so the largest bucket always holds them.
    """
    out = {}
    for feature in FEATURES:
      buckets = self.lengths[feature]
      out[feature] = next((b for b in buckets if b >= longest[feature]), buckets[-1])
    return out

  def shapes(self) -> list[dict[str, int]]:
    """Every (inputs, targets) pair a batch can be padded to, smallest first: the compiled shapes."""
    return [{"inputs": n, "targets": m} for n, m in itertools.product(self.lengths["inputs"], self.lengths["targets"])]

  def describe(self) -> str:
    """'inputs 16/32/64, targets 8 (3 shapes)', for log lines."""
    parts = [f"{f} {'/'.join(map(str, self.lengths[f]))}" for f in FEATURES]
    return f"{', '.join(parts)} ({len(self.shapes())} shape{'s' if len(self.shapes()) > 1 else ''})"


def _feature_buckets(feature: str, value: Any, max_length: int) -> tuple[int, ...]:
  if value == POW2:
    return _pow2_lengths(max_length)
  ok = isinstance(value, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
  if not ok or not value or min(value) < 1:
    raise ValueError(f"LENGTH_BUCKETS[{feature!r}] must be 'pow2' or a list of positive integer lengths, got {value!r}")
  if max(value) > max_length:
    raise ValueError(
      f"LENGTH_BUCKETS[{feature!r}] has the length {max(value)}, above TASK_FEATURE_LENGTHS[{feature!r}] = "
      f"{max_length} (the feature length is the largest bucket)"
    )
  return tuple(sorted({*value, max_length}))


def make_buckets(spec: Any, feature_lengths: Mapping[str, int]) -> LengthBuckets | None:
  """The LengthBuckets of a spec (see the module docstring), None when bucketing is off.

  Raises:
    ValueError: one line naming LENGTH_BUCKETS and what is wrong with it.
  """
  if spec is None:
    return None
  lengths = check_feature_lengths(feature_lengths)
  if spec == POW2:
    spec = {feature: POW2 for feature in FEATURES}
  if not isinstance(spec, Mapping) or not spec or set(spec) - set(FEATURES):
    raise ValueError(
      f"LENGTH_BUCKETS must be None, 'pow2' or a dict of 'inputs' and/or 'targets' to a list of lengths or "
      f"'pow2', got {spec!r}"
    )
  return LengthBuckets(
    {
      feature: _feature_buckets(feature, spec[feature], lengths[feature]) if feature in spec else (lengths[feature],)
      for feature in FEATURES
    }
  )


def batch_lengths(
  buckets: LengthBuckets | None, feature_lengths: Mapping[str, int], rows: Sequence[Mapping[str, Any]]
) -> dict[str, int]:
  """What a batch of tokenized rows (`inputs_ids` / `targets_ids`, EOS included) is padded to:
  the fixed feature lengths without buckets, else each feature's smallest bucket holding its
  longest row (an empty batch: the smallest buckets)."""
  if buckets is None:
    return dict(feature_lengths)
  longest = {f: max((len(row[f"{f}_ids"]) for row in rows), default=0) for f in FEATURES}
  return buckets.pad_lengths(longest)
