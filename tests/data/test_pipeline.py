"""BatchIterator: determinism, bit-exact resumption, multi-host slicing, eval padding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from prompt_tuning.data import pipeline
from prompt_tuning.data import task as task_lib
from support.char_vocab import CharVocab

LENGTHS = {"inputs": 8, "targets": 4}


def make_task(n=10):
  records = [{"text": f"ex{i}" + "z" * (i % 7), "label": i % 3} for i in range(n)]
  return task_lib.TextTask(f"toy{n}", CharVocab(), {"train": lambda: records}, "{text}", "label", ["a", "b", "c"])


def make_iter(task, batch_size=4, **kw):
  kw = {"shuffle": True, "seed": 3, "repeat": True, "drop_remainder": False, **kw}
  return pipeline.BatchIterator(task, "train", LENGTHS, batch_size, **kw)


def take(it, k):
  return list(itertools.islice(it, k))


def assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert set(x.arrays) == set(y.arrays)
    for key in x.arrays:
      assert x.arrays[key].dtype == y.arrays[key].dtype
      np.testing.assert_array_equal(x.arrays[key], y.arrays[key], err_msg=key)
    assert x.text == y.text


def idxs(batches):
  return [i for b in batches for i, m in zip(b.text["idx"], b.arrays["mask"]) if m]


def test_epochs_are_seeded_permutations():
  task = make_task(10)
  batches = take(make_iter(task), 5)  # 20 examples = 2 epochs; batches straddle the boundary
  order = idxs(batches)
  assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
  assert order[:10] != order[10:] and order[:10] != list(range(10))
  assert_batches_equal(batches, take(make_iter(task), 5))
  assert idxs(take(make_iter(task, seed=4), 5)) != order
  assert idxs(take(make_iter(task, shuffle=False), 5)) == list(range(10)) * 2
  assert all(
    set(b.arrays)
    == {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "mask"}
    for b in batches
  )
  assert all(v.dtype == np.int32 for v in batches[0].arrays.values())


@pytest.mark.parametrize("k", [0, 1, 2, 3, 7])
def test_resume_from_position_is_bit_exact(k):
  task = make_task(10)
  it = make_iter(task)
  take(it, k)
  assert it.position == 4 * k
  resumed = make_iter(task, start_position=it.position)
  assert_batches_equal(take(resumed, 6), take(it, 6))


def test_resume_eval_iterator():
  task = make_task(10)
  it = make_iter(task, repeat=False, shuffle=False)
  take(it, 1)
  assert_batches_equal(list(make_iter(task, repeat=False, shuffle=False, start_position=it.position)), list(it))


@pytest.mark.parametrize("repeat", [True, False])
def test_two_processes_together_equal_the_global_batch(repeat):
  task = make_task(10)
  kw = {"batch_size": 6, "repeat": repeat}
  whole = take(make_iter(task, **kw), 4)
  parts = [take(make_iter(task, process_index=p, process_count=2, **kw), 4) for p in range(2)]
  assert len(whole) == len(parts[0]) == len(parts[1]) == (4 if repeat else 2)
  for w, p0, p1 in zip(whole, *parts):
    for key in w.arrays:
      assert p0.arrays[key].shape[0] == 3
      np.testing.assert_array_equal(np.concatenate([p0.arrays[key], p1.arrays[key]]), w.arrays[key])
    for key in w.text:
      assert p0.text[key] + p1.text[key] == w.text[key]


def test_eval_pads_last_batch_with_mask():
  task = make_task(10)
  it = make_iter(task, repeat=False, shuffle=False)
  assert it.num_batches == 3
  batches = list(it)
  assert len(batches) == 3 and it.position == 10 and it.num_batches == 0
  last = batches[-1]
  np.testing.assert_array_equal(last.arrays["mask"], [1, 1, 0, 0])
  for key, value in last.arrays.items():
    if key != "mask":
      assert not value[2:].any() and value[:2].any(), key
  assert last.text["idx"] == [8, 9, None, None] and last.text["inputs"][2:] == ["", ""]
  assert last.text["targets"][:2] == ["c", "a"]
  assert idxs(batches) == list(range(10))
  dropped = make_iter(task, repeat=False, shuffle=False, drop_remainder=True)
  assert dropped.num_batches == 2 and len(list(dropped)) == 2
  # Second process of two holds only padding in the last batch, yet yields it.
  p1 = list(make_iter(task, repeat=False, shuffle=False, process_index=1, process_count=2))
  assert len(p1) == 3 and not p1[-1].arrays["mask"].any()


def test_truncation_counted_once_and_errors():
  task = make_task(10)
  it = make_iter(task)
  take(it, 10)
  assert it.truncation.counts("train", "inputs") == (2, 10)  # ex5, ex6: 3 + 5/6 z + EOS > 8
  with pytest.raises(ValueError, match="divisible by process_count"):
    make_iter(task, batch_size=5, process_count=2)
  with pytest.raises(ValueError, match="empty"):
    make_iter(make_task(0))
  assert list(make_iter(make_task(0), repeat=False)) == []
