"""Length buckets (data/buckets.py): the spec, the bucket a batch gets, and BatchIterator with them:
the same rows as unbucketed, each batch in its smallest bucket, alike on every process, resumable."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from prompt_tuning.data import buckets, pipeline
from prompt_tuning.data import task as task_lib
from prompt_tuning.runs import specs
from support.char_vocab import CharVocab

LENGTHS = {"inputs": 40, "targets": 6}


def make_task(n=24):
  # Inputs of 2..37 characters (+ EOS), targets of 1..3 (+ EOS): ragged across batches.
  records = [{"text": "x" * (2 + (i * 7) % 36), "label": i % 3} for i in range(n)]
  return task_lib.TextTask("ragged", CharVocab(), {"train": lambda: records}, "{text}", "label", ["a", "bb", "ccc"])


def make_iter(task, length_buckets=None, **kw):
  kw = {"shuffle": True, "seed": 5, "repeat": True, "drop_remainder": True, "batch_size": 4, **kw}
  return pipeline.BatchIterator(task, "train", LENGTHS, length_buckets=length_buckets, **kw)


def test_spec_resolves_per_feature():
  pow2 = buckets.make_buckets("pow2", {"inputs": 512, "targets": 8})
  assert pow2.lengths == {"inputs": (16, 32, 64, 128, 256, 512), "targets": (8,)}
  assert buckets.make_buckets("pow2", {"inputs": 100, "targets": 40}).lengths["inputs"] == (16, 32, 64, 100)
  mixed = buckets.make_buckets({"inputs": [24, 8], "targets": "pow2"}, {"inputs": 32, "targets": 40})
  assert mixed.lengths == {"inputs": (8, 24, 32), "targets": (16, 32, 40)}  # sorted, the feature length added
  only_inputs = buckets.make_buckets({"inputs": [8, 32]}, {"inputs": 32, "targets": 4})
  assert only_inputs.lengths["targets"] == (4,) and len(only_inputs.shapes()) == 2
  assert mixed.shapes()[0] == {"inputs": 8, "targets": 16} and len(mixed.shapes()) == 9
  assert mixed.describe() == "inputs 8/24/32, targets 16/32/40 (9 shapes)"
  assert buckets.make_buckets(None, LENGTHS) is None


def test_a_batch_gets_the_smallest_bucket_that_holds_it():
  b = buckets.make_buckets({"inputs": [8, 16], "targets": [2]}, LENGTHS)
  assert b.pad_lengths({"inputs": 8, "targets": 2}) == {"inputs": 8, "targets": 2}
  assert b.pad_lengths({"inputs": 9, "targets": 3}) == {"inputs": 16, "targets": 6}
  assert b.pad_lengths({"inputs": 40, "targets": 6}) == {"inputs": 40, "targets": 6}
  rows = [{"inputs_ids": [5] * 12, "targets_ids": [1]}, {"inputs_ids": [5] * 3, "targets_ids": [5, 1]}]
  assert buckets.batch_lengths(b, LENGTHS, rows) == {"inputs": 16, "targets": 2}
  assert buckets.batch_lengths(None, LENGTHS, rows) == LENGTHS


@pytest.mark.parametrize(
  "spec, message",
  [
    ("powers", "LENGTH_BUCKETS must be None, 'pow2' or a dict"),
    ({"input": [8]}, "LENGTH_BUCKETS must be None, 'pow2' or a dict"),
    ({"inputs": [0, 8]}, "LENGTH_BUCKETS['inputs'] must be 'pow2' or a list of positive integer lengths"),
    ({"inputs": 8}, "LENGTH_BUCKETS['inputs'] must be 'pow2' or a list"),
    ({"targets": [4, 64]}, "LENGTH_BUCKETS['targets'] has the length 64, above TASK_FEATURE_LENGTHS['targets'] = 6"),
  ],
)
def test_bad_specs_fail_in_one_line_naming_length_buckets(spec, message):
  with pytest.raises(ValueError, match=None) as error:
    specs.TaskSpec("t", LENGTHS, length_buckets=spec)  # checked when the spec is made
  assert message in str(error.value) and "\n" not in str(error.value)


def test_bucketed_batches_hold_the_same_rows_in_their_smallest_bucket():
  task = make_task()
  b = buckets.make_buckets({"inputs": [8, 16, 24], "targets": [2, 3]}, LENGTHS)
  plain, bucketed = list(itertools.islice(make_iter(task), 12)), list(itertools.islice(make_iter(task, b), 12))
  seen = set()
  for full, small in zip(plain, bucketed):
    assert full.text == small.text  # the same examples, in the same order
    for key, value in small.arrays.items():
      n = value.shape[1] if value.ndim == 2 else None
      np.testing.assert_array_equal(value, full.arrays[key][:, :n] if n else full.arrays[key], err_msg=key)
      if n and key != "decoder_input_tokens":  # only padding was cut (decoder inputs: the last EOS shifted
        assert not full.arrays[key][:, n:].any(), key  # right, which feeds only a weight-0 position)
    longest = {
      f: int((full.arrays[k] > 0).sum(axis=1).max())
      for f, k in (("inputs", "encoder_input_tokens"), ("targets", "decoder_target_tokens"))
    }
    shape = {
      "inputs": small.arrays["encoder_input_tokens"].shape[1],
      "targets": small.arrays["decoder_target_tokens"].shape[1],
    }
    assert shape == b.pad_lengths(longest)  # ... and the batch sits in the smallest bucket holding it
    seen.add(tuple(shape.values()))
  assert len(seen) >= 3  # the ragged task really spreads over buckets


def test_every_process_pads_to_the_global_batchs_bucket():
  task = make_task()
  b = buckets.make_buckets({"inputs": [8, 16, 24]}, LENGTHS)
  whole = list(itertools.islice(make_iter(task, b), 8))
  parts = [list(itertools.islice(make_iter(task, b, process_index=p, process_count=2), 8)) for p in range(2)]
  for k, batch in enumerate(whole):
    for key, value in batch.arrays.items():
      np.testing.assert_array_equal(np.concatenate([parts[0][k].arrays[key], parts[1][k].arrays[key]]), value)


def test_resuming_with_buckets_is_bit_exact():
  task = make_task()
  b = buckets.make_buckets("pow2", LENGTHS)
  it = make_iter(task, b)
  list(itertools.islice(it, 5))  # 20 examples: the next batch straddles the epoch boundary
  resumed = make_iter(task, b, start_position=it.position)
  for x, y in zip(itertools.islice(resumed, 6), itertools.islice(it, 6)):
    assert x.text == y.text and set(x.arrays) == set(y.arrays)
    for key in x.arrays:
      assert x.arrays[key].dtype == y.arrays[key].dtype
      np.testing.assert_array_equal(x.arrays[key], y.arrays[key], err_msg=key)


def test_evaluation_batches_bucket_too_and_keep_the_padding_rows():
  task = make_task(10)
  b = buckets.make_buckets({"inputs": [8, 16, 24, 32]}, LENGTHS)
  batches = list(make_iter(task, b, shuffle=False, repeat=False, drop_remainder=False))
  assert [len(x.arrays["mask"]) for x in batches] == [4, 4, 4] and batches[-1].arrays["mask"].tolist() == [1, 1, 0, 0]
  widths = [x.arrays["encoder_input_tokens"].shape[1] for x in batches]
  assert widths == [24, 40, 32]  # longest + EOS: 24 (examples 0-3), 38 (4-7), 30 (8-9)
