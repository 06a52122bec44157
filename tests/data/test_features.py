"""Feature conversion: EOS after trim, truncation counts, shifted decoder inputs, seqio parity."""

from __future__ import annotations

import numpy as np
import pytest

from prompt_tuning.data import features
from support.char_vocab import CharVocab


def test_trim_with_eos_keeps_eos_last():
  assert features.trim_with_eos([5, 6], 4) == [5, 6, 1]
  assert features.trim_with_eos([5, 6, 7], 4) == [5, 6, 7, 1]
  assert features.trim_with_eos([5, 6, 7, 8, 9], 4) == [5, 6, 7, 1]
  assert features.trim_with_eos([5, 6], 1) == [1]
  assert features.trim_with_eos([], 3) == [1]


def test_tokenize_counts_truncations():
  examples = [
    {"inputs": "abc", "targets": "x"},
    {"inputs": "abcdefgh", "targets": "xyz"},
    {"inputs": "abcd", "targets": "xy"},
  ]
  counter = features.TruncationCounter()
  out = features.tokenize(examples, CharVocab(), {"inputs": 5, "targets": 3}, split="train", counter=counter)
  assert [len(ex["inputs_ids"]) for ex in out] == [4, 5, 5]
  assert [ex["inputs_ids"][-1] for ex in out] == [1, 1, 1]
  assert out[1]["targets_ids"] == CharVocab().encode("xy") + [1]
  assert out[0]["inputs"] == "abc" and "inputs_ids" not in examples[0]  # inputs untouched
  assert counter.counts("train", "inputs") == (1, 3)  # "abcd" + EOS fits exactly
  assert counter.counts("train", "targets") == (1, 3)
  assert counter.messages("train") == [
    "train: truncated 1 of 3 inputs to 5 tokens (longest 9)",
    "train: truncated 1 of 3 targets to 3 tokens (longest 4)",
  ]
  logged = []
  assert counter.report(logged.append) == logged and len(logged) == 2
  assert counter.report(logged.append) == []  # once per split


def test_make_batch_shapes_shift_and_weights():
  encoded = [{"inputs_ids": [7, 8, 1], "targets_ids": [4, 5, 6, 1]}, {"inputs_ids": [9, 1], "targets_ids": [3, 1]}]
  batch = features.make_batch(encoded, {"inputs": 4, "targets": 5}, batch_size=3)
  assert set(batch) == set(features.BATCH_KEYS)
  assert all(v.dtype == np.int32 for v in batch.values())
  np.testing.assert_array_equal(batch["encoder_input_tokens"], [[7, 8, 1, 0], [9, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["decoder_target_tokens"], [[4, 5, 6, 1, 0], [3, 1, 0, 0, 0], [0] * 5])
  np.testing.assert_array_equal(batch["decoder_input_tokens"], [[0, 4, 5, 6, 1], [0, 3, 1, 0, 0], [0] * 5])
  np.testing.assert_array_equal(batch["decoder_loss_weights"], [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0] * 5])
  with pytest.raises(ValueError, match="more than the feature length"):
    features.make_batch(encoded, {"inputs": 2, "targets": 5})
  with pytest.raises(ValueError, match="feature_lengths"):
    features.make_batch(encoded, {"inputs": 2})


def test_matches_seqio_append_eos_after_trim_and_enc_dec_converter():
  seqio = pytest.importorskip("seqio")
  tf = pytest.importorskip("tensorflow")
  lengths = {"inputs": 6, "targets": 4}
  raw = [([5, 6, 7], [8]), ([5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16]), ([], [9, 9, 9])]
  vocab = seqio.PassThroughVocabulary(size=100, eos_id=1)
  output_features = {k: seqio.Feature(vocab, add_eos=True) for k in lengths}
  ds = tf.data.Dataset.from_generator(
    lambda: ({"inputs": i, "targets": t} for i, t in raw),
    output_signature={k: tf.TensorSpec([None], tf.int32) for k in lengths},
  )
  ds = seqio.preprocessors.append_eos_after_trim(ds, output_features, lengths)
  ds = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
  ref = {k: np.stack([ex[k] for ex in ds.as_numpy_iterator()]) for k in features.BATCH_KEYS}
  encoded = [{"inputs_ids": features.trim_with_eos(i, 6), "targets_ids": features.trim_with_eos(t, 4)} for i, t in raw]
  ours = features.make_batch(encoded, lengths)
  for k in features.BATCH_KEYS:
    np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
