"""Packing (data/packing.py) through BatchIterator: every example exactly once and in stream order,
rows never overflow, segment ids and positions right, the same on every process, resumable from
the position alone; and the bad combinations in one line."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from prompt_tuning.data import buckets, packing, pipeline
from prompt_tuning.data import task as task_lib
from prompt_tuning.runs import specs
from support.char_vocab import CharVocab

LENGTHS = {"inputs": 40, "targets": 6}
P = 3


def make_task(n=24):
  # Inputs of 2..37 characters (+ EOS), targets of 1..3 (+ EOS): ragged rows.
  records = [{"text": "x" * (2 + (i * 7) % 36), "label": i % 3} for i in range(n)]
  return task_lib.TextTask("ragged", CharVocab(), {"train": lambda: records}, "{text}", "label", ["a", "bb", "ccc"])


def make_iter(task, **kw):
  kw = {"shuffle": True, "seed": 5, "repeat": True, "drop_remainder": True, "batch_size": 4, **kw}
  return pipeline.BatchIterator(task, "train", LENGTHS, packing=packing.Packing(P), **kw)


def _segments(arrays):
  """The examples of each row, as (input ids, target ids) read back from the packed arrays."""
  out = []
  for r in range(arrays["mask"].shape[0]):
    enc, dec = arrays["encoder_segment_ids"][r], arrays["decoder_segment_ids"][r]
    for s in range(1, enc.max() + 1):
      x = arrays["encoder_input_tokens"][r][enc == s]
      y = arrays["decoder_target_tokens"][r][dec == s]
      out.append((tuple(x[P:]), tuple(y)))
  return out


def test_rows_hold_whole_examples_in_stream_order_each_exactly_once():
  task = make_task()
  plain = pipeline.BatchIterator(task, "train", LENGTHS, 4, shuffle=True, seed=5, repeat=True, drop_remainder=True)
  stream = [(tuple(ex["inputs_ids"]), tuple(ex["targets_ids"])) for ex in plain._examples]
  order = [stream[i] for i in plain._stream(0, 3 * len(stream))]  # three epochs of the shuffled order
  it = make_iter(task)
  read, counts = 0, []
  for batch in itertools.islice(it, 12):
    a = batch.arrays
    assert a["encoder_input_tokens"].shape == (4, P + 40) and a["decoder_target_tokens"].shape == (4, 6)
    assert a["mask"].tolist() == [1, 1, 1, 1]
    rows = _segments(a)
    # A batch holds the next slice of the stream, spread over its rows (first fit), each row in order.
    expected = order[read : read + len(rows)]
    assert sorted(rows) == sorted(expected)
    for r in range(4):
      mine = _segments({k: v[r : r + 1] for k, v in a.items()})
      assert [expected.index(ex) for ex in mine] == sorted(expected.index(ex) for ex in mine)
    read += len(rows)
    counts.append(len(rows))
    assert len(batch.text["inputs"]) == len(rows)
    for r in range(4):  # positions restart at 0 per segment; prompt slots hold token 0
      for side in ("encoder", "decoder"):
        seg, pos = a[f"{side}_segment_ids"][r], a[f"{side}_positions"][r]
        ids = seg[seg > 0]
        assert np.all(np.diff(ids) >= 0) and ids[0] == 1 and set(ids) == set(range(1, ids.max() + 1))
        assert np.all(seg[len(ids) :] == 0)  # padding only at the end
        for s in range(1, ids.max() + 1):
          assert pos[seg == s].tolist() == list(range((seg == s).sum()))
      slots = (a["encoder_segment_ids"][r] > 0) & (a["encoder_positions"][r] < P)
      assert np.all(a["encoder_input_tokens"][r][slots] == 0)
      dec = a["decoder_segment_ids"][r]
      shifted = a["decoder_input_tokens"][r]
      for s in range(1, dec.max() + 1):  # decoder inputs shifted right within the segment
        y = a["decoder_target_tokens"][r][dec == s]
        assert shifted[dec == s].tolist() == [0, *y[:-1].tolist()]
      np.testing.assert_array_equal(a["decoder_loss_weights"][r], dec > 0)
  assert it.position == read and min(counts) >= 4 and len(set(counts)) > 1  # every example once; varying


def test_rows_never_overflow_and_a_batch_closes_only_when_the_next_example_fits_no_row():
  task = make_task()
  it = make_iter(task, shuffle=False)
  plain = pipeline.BatchIterator(task, "train", LENGTHS, 4, shuffle=False, seed=5, repeat=True, drop_remainder=True)
  stream = [(tuple(ex["inputs_ids"]), tuple(ex["targets_ids"])) for ex in plain._examples]
  read, rows_with_room = 0, 0
  for batch in itertools.islice(it, 8):
    a = batch.arrays
    read += len(_segments(a))
    x, y = stream[plain._stream(read, read + 1)[0]]  # the next batch's first example
    for r in range(4):
      enc_used, dec_used = (int((a[f"{side}_segment_ids"][r] > 0).sum()) for side in ("encoder", "decoder"))
      assert enc_used <= P + 40 and dec_used <= 6
      assert enc_used + P + len(x) > P + 40 or dec_used + len(y) > 6  # it fit none of this batch's rows
      rows_with_room += enc_used + P + 2 <= P + 40 and dec_used + 2 <= 6
  assert rows_with_room > 0  # rows left open for a shorter example, not closed at their first misfit


def test_first_fit_packs_denser_than_closing_each_row_at_its_first_misfit():
  # Lengths (with the prompt) 30, 20, 30, 20 in rows of 50: one row at a time closes row 1 at the second 30
  # (30 + 20 | 30 + 20: 2 rows); first fit also gives 2 rows here; but 30, 30, 20, 20 gives 3 rows one row
  # at a time (30 | 30 + 20 | 20) and 2 with first fit (30 + 20 | 30 + 20).
  examples = [{"inputs_ids": [5] * (n - 3), "targets_ids": [1]} for n in (30, 30, 20, 20)]
  stream = iter(examples)
  rows, consumed = packing.pack_rows(lambda: next(stream, None), 3, packing.Packing(3), {"inputs": 47, "targets": 6})
  assert consumed == 4 and [[len(ex["inputs_ids"]) + 3 for ex in row] for row in rows] == [[30, 20], [30, 20]]


def test_resuming_from_a_saved_position_continues_bit_identically():
  task = make_task()
  whole = [b.arrays for b in itertools.islice(make_iter(task), 9)]
  first = make_iter(task)
  list(itertools.islice(first, 4))
  resumed = [b.arrays for b in itertools.islice(make_iter(task, start_position=first.position), 5)]
  for a, b in zip(whole[4:], resumed):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_every_process_packs_alike_and_takes_its_own_rows():
  task = make_task()
  whole = next(make_iter(task))
  shares = [next(make_iter(task, process_index=p, process_count=2)).arrays for p in range(2)]
  for key, value in whole.arrays.items():
    np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), value)


def test_one_pass_ends_with_a_padded_batch_or_drops_it():
  task = make_task(9)  # in rows of 2: the last batch holds one row
  kept = list(make_iter(task, shuffle=False, repeat=False, drop_remainder=False, batch_size=2))
  assert sum(int(b.arrays["decoder_segment_ids"].max(axis=1).sum()) for b in kept) == 9
  assert kept[-1].arrays["mask"].tolist() == [1, 0] and not kept[-1].arrays["encoder_segment_ids"][1].any()
  dropped = list(make_iter(task, shuffle=False, repeat=False, drop_remainder=True, batch_size=2))
  assert len(dropped) == len(kept) - 1 and all(b.arrays["mask"].all() for b in dropped)


def test_a_prompt_table_gets_each_positions_task():
  rows = [
    [
      {"inputs_ids": [5, 1], "targets_ids": [7, 1], "task": "b"},
      {"inputs_ids": [6, 1], "targets_ids": [1], "task": "a"},
    ]
  ]
  a = packing.make_packed_batch(rows, packing.Packing(2), {"inputs": 6, "targets": 4}, 2, task_ids={"a": 0, "b": 1})
  assert a["encoder_task_ids"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [0] * 8]
  assert a["encoder_input_tokens"][0].tolist() == [0, 0, 5, 1, 0, 0, 6, 1]
  assert a["decoder_task_ids"].tolist() == [[1, 1, 0, 0], [0] * 4]
  assert a["decoder_input_tokens"][0].tolist() == [0, 7, 0, 0]


def test_packing_and_length_buckets_fail_in_one_line():
  message = "PACKING and LENGTH_BUCKETS cannot both be on"
  with pytest.raises(ValueError, match=message):
    make_iter(make_task(), length_buckets=buckets.make_buckets("pow2", LENGTHS))
  with pytest.raises(ValueError, match=message):
    specs.TaskSpec("t", LENGTHS, length_buckets="pow2", packing=True)  # checked when the spec is made
  with pytest.raises(ValueError, match="PACKING must be True or False"):
    specs.TaskSpec("t", LENGTHS, packing="yes")
  with pytest.raises(ValueError, match="does not fit a packed row of 43 - 3 and 6"):
    packing.pack_rows(iter([{"inputs_ids": [5] * 41, "targets_ids": [1]}]).__next__, 1, packing.Packing(P), LENGTHS)
