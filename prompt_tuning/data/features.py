"""seqio-style encoder-decoder features in numpy (no TensorFlow).

Matches seqio's `append_eos_after_trim` preprocessor followed by
`EncDecFeatureConverter(pack=False)`:

* tokens = encode(text) + [EOS], trimmed to the feature length with EOS kept as
  the last token: ids[:length - 1] + [EOS] when too long;
* encoder_input_tokens [B, n]   = input tokens, 0-padded at the end;
* decoder_target_tokens [B, m]  = target tokens, 0-padded at the end;
* decoder_input_tokens [B, m]   = targets shifted right by one, starting with 0;
* decoder_loss_weights [B, m]   = 1 where decoder_target_tokens != 0 (EOS included).

All arrays are int32. Truncations are counted per split and feature by a
`TruncationCounter`, for the training loop to report once per split.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

import numpy as np

from prompt_tuning.data.task import Example, Vocabulary

FEATURES = ("inputs", "targets")
BATCH_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


def check_feature_lengths(feature_lengths: Mapping[str, int]) -> dict[str, int]:
  lengths = {k: int(feature_lengths[k]) for k in FEATURES if k in feature_lengths}
  if set(lengths) != set(FEATURES) or set(feature_lengths) != set(FEATURES) or min(lengths.values()) < 1:
    raise ValueError(
      f"feature_lengths must be {{'inputs': n, 'targets': m}} with n, m >= 1, got {dict(feature_lengths)}"
    )
  return lengths


class TruncationCounter:
  """How many examples of each (split, feature) were cut to fit their feature length."""

  def __init__(self):
    self._stats: dict[tuple[str, str], dict[str, int]] = {}
    self._reported: set[str] = set()

  def add(self, split: str, feature: str, lengths: Sequence[int], max_length: int):
    """Records examples whose untrimmed lengths (EOS included) are `lengths`."""
    s = self._stats.setdefault((split, feature), {"truncated": 0, "total": 0, "longest": 0, "max_length": max_length})
    s["truncated"] += sum(int(n > max_length) for n in lengths)
    s["total"] += len(lengths)
    s["longest"] = max([s["longest"], *lengths])
    s["max_length"] = max_length

  def counts(self, split: str, feature: str) -> tuple[int, int]:
    """(truncated, total) for `split`'s `feature`; (0, 0) if never seen."""
    s = self._stats.get((split, feature))
    return (s["truncated"], s["total"]) if s else (0, 0)

  @property
  def splits(self) -> list[str]:
    return list(dict.fromkeys(split for split, _ in self._stats))

  def messages(self, split: str) -> list[str]:
    """E.g. ["train: truncated 3 of 120 inputs to 64 tokens (longest 80)", ...]."""
    out = []
    for feature in FEATURES:
      s = self._stats.get((split, feature))
      if s:
        out.append(
          f"{split}: truncated {s['truncated']} of {s['total']} {feature} to {s['max_length']} tokens "
          f"(longest {s['longest']})"
        )
    return out

  def report(self, log=None) -> list[str]:
    """Logs the messages of every split not reported yet (as warnings when something was cut,
    unless `log` is given); returns them."""
    out = []
    for split in self.splits:
      if split not in self._reported:
        self._reported.add(split)
        out += self.messages(split)
    for line in out:
      (log or (logging.info if " truncated 0 of " in line else logging.warning))(line)
    return out


def trim_with_eos(ids: Sequence[int], max_length: int, eos_id: int = 1) -> list[int]:
  """ids + [EOS], cut to `max_length` keeping EOS last (seqio's append_eos_after_trim)."""
  return list(ids[: max_length - 1]) + [eos_id]


def tokenize(
  examples: Iterable[Example],
  vocabulary: Vocabulary,
  feature_lengths: Mapping[str, int],
  *,
  split: str = "",
  counter: TruncationCounter | None = None,
  target_prefix: Sequence[int] = (),
) -> list[Example]:
  """Adds `inputs_ids` / `targets_ids` (lists of int): tokens + EOS, trimmed to length.

  target_prefix: ids put before every target's tokens, before trimming (the reference's token
    preprocessors run before append_eos_after_trim): the sentinel of data/sentinel.py.
  An example that already has `inputs_ids` / `targets_ids` (tokens without EOS) keeps them
  (EOS still appended and trimmed); its text is not encoded.

  Returns new dicts (text fields kept); truncations go to `counter` under `split`.
  """
  lengths = check_feature_lengths(feature_lengths)
  examples = list(examples)
  eos = vocabulary.eos_id
  out = [dict(ex) for ex in examples]
  for feature in FEATURES:
    # An example may bring its ids (data/corpus.py: objectives work on tokens); the rest are encoded.
    todo = [i for i, ex in enumerate(examples) if f"{feature}_ids" not in ex]
    texts = [examples[i][feature] for i in todo]
    encode_batch = getattr(vocabulary, "encode_batch", None)
    encoded = iter(encode_batch(texts) if encode_batch else [vocabulary.encode(t) for t in texts])
    ids = [list(ex[f"{feature}_ids"]) if f"{feature}_ids" in ex else next(encoded) for ex in examples]
    if feature == "targets" and target_prefix:
      ids = [[*target_prefix, *x] for x in ids]
    if counter is not None:
      counter.add(split, feature, [len(x) + 1 for x in ids], lengths[feature])
    for ex, x in zip(out, ids):
      ex[f"{feature}_ids"] = trim_with_eos(x, lengths[feature], eos)
  return out


def shift_right(targets: np.ndarray) -> np.ndarray:
  """[B, m] -> [B, m]: a 0 column, then targets[:, :-1] (seqio's autoregressive inputs, unpacked)."""
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def _pad_rows(rows: Sequence[Sequence[int]], length: int, num_rows: int) -> np.ndarray:
  out = np.zeros((num_rows, length), np.int32)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"row {i} has {len(row)} tokens, more than the feature length {length}")
    out[i, : len(row)] = row
  return out


def make_batch(
  encoded: Sequence[Example], feature_lengths: Mapping[str, int], batch_size: int | None = None
) -> dict[str, np.ndarray]:
  """Tokenized examples -> the four int32 model features.

  Args:
    encoded: examples with `inputs_ids` / `targets_ids` from `tokenize`.
    feature_lengths: {"inputs": n, "targets": m}.
    batch_size: B >= len(encoded); rows past the examples are all 0 (default:
      len(encoded)).

  Returns:
    encoder_input_tokens [B, n], decoder_input_tokens, decoder_target_tokens,
    decoder_loss_weights [B, m].
  """
  lengths = check_feature_lengths(feature_lengths)
  num_rows = len(encoded) if batch_size is None else batch_size
  if num_rows < len(encoded):
    raise ValueError(f"batch_size {num_rows} < {len(encoded)} examples")
  targets = _pad_rows([ex["targets_ids"] for ex in encoded], lengths["targets"], num_rows)
  return {
    "encoder_input_tokens": _pad_rows([ex["inputs_ids"] for ex in encoded], lengths["inputs"], num_rows),
    "decoder_input_tokens": shift_right(targets),
    "decoder_target_tokens": targets,
    "decoder_loss_weights": (targets != 0).astype(np.int32),
  }
