"""Our tasks through seqio: same token ids as our own pipeline, batches from seqio's converter."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from prompt_tuning.data import features, quickstart, seqio_bridge  # noqa: E402
from prompt_tuning.data.task import TextTask, get_task  # noqa: E402

LENGTHS = {"inputs": 32, "targets": 4}
NAME = quickstart.NAME


@pytest.fixture(scope="module")
def seqio_task():
  return seqio_bridge.as_seqio_task(get_task(NAME))


def _dataset(name, lengths=LENGTHS, split="validation"):
  return seqio.get_mixture_or_task(name).get_dataset(
    lengths, split=split, shuffle=False, use_cached=False, try_in_mem_cache=False
  )


def test_registered_under_the_same_name_with_our_vocabulary(seqio_task):
  assert seqio.get_mixture_or_task(NAME) is seqio_task
  ours = get_task(NAME).vocabulary
  vocabulary = seqio_task.output_features["targets"].vocabulary
  assert vocabulary.vocab_size == ours.vocab_size and vocabulary.extra_ids == ours.extra_ids == 0
  assert list(seqio_task.splits) == ["train", "validation"]


def test_token_ids_equal_our_pipeline(seqio_task):
  task = get_task(NAME)
  expected = features.tokenize(itertools.islice(task.examples("validation"), 8), task.vocabulary, LENGTHS)
  got = list(itertools.islice(_dataset(NAME).as_numpy_iterator(), 8))
  assert len(got) == 8
  for ours, theirs in zip(expected, got):
    assert theirs["inputs_pretokenized"].decode() == ours["inputs"]
    assert theirs["targets_pretokenized"].decode() == ours["targets"]
    assert theirs["inputs"].tolist() == ours["inputs_ids"]
    assert theirs["targets"].tolist() == ours["targets_ids"]


def test_truncation_keeps_eos_like_ours(seqio_task):
  task = get_task(NAME)
  short = {"inputs": 5, "targets": 4}
  expected = features.tokenize(itertools.islice(task.examples("validation"), 4), task.vocabulary, short)
  got = list(itertools.islice(_dataset(NAME, short).as_numpy_iterator(), 4))
  assert [g["inputs"].tolist() for g in got] == [e["inputs_ids"] for e in expected]
  assert all(g["inputs"][-1] == 1 and len(g["inputs"]) == 5 for g in got)


def test_enc_dec_feature_converter_batches_match_make_batch(seqio_task):
  task = get_task(NAME)
  converter = seqio.EncDecFeatureConverter(pack=False)
  batch = next(converter(_dataset(NAME), LENGTHS).batch(4).as_numpy_iterator())
  expected = features.make_batch(
    features.tokenize(itertools.islice(task.examples("validation"), 4), task.vocabulary, LENGTHS), LENGTHS
  )
  for key in features.BATCH_KEYS:
    np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)


def test_metric_fn_wraps_task_score(seqio_task):
  (metric_fn,) = seqio_task.predict_metric_fns
  assert metric_fn(["positive", "negative", b"positive"], ["positive", "positive", b"positive"]) == pytest.approx(
    {"accuracy": 200 / 3}
  )


def test_register_all_and_mixtures(tmp_path):
  path = tmp_path / "tiny.jsonl"
  path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
  task = TextTask(
    "seqio_bridge_test_tiny",
    quickstart.vocabulary(),
    {"train": str(path), "validation": str(path)},
    "text: {text}",
    "label",
  )

  class Mixture:  # a mixture-like object: members as (task or name, rate)
    name = "seqio_bridge_test_mixture"
    tasks = [(task, 2.0), (NAME, 1.0)]

  mixture = seqio_bridge.register(Mixture())
  assert seqio.get_mixture_or_task("seqio_bridge_test_mixture") is mixture
  assert sorted(t.name for t in mixture.tasks) == sorted([NAME, "seqio_bridge_test_tiny"])
  assert mixture.get_rate(seqio.get_mixture_or_task("seqio_bridge_test_tiny")) == 2.0
  rows = list(_dataset("seqio_bridge_test_tiny", split="train").as_numpy_iterator())
  assert [r["targets_pretokenized"] for r in rows] == [b"x", b"y"]
  assert NAME in seqio_bridge.register_all_with_seqio([NAME])
  assert seqio.get_mixture_or_task(NAME).name == NAME  # re-registering replaces, no duplicate error


def test_our_mixture_gets_capped_examples_proportional_rates(tmp_path):
  from prompt_tuning.data.mixture import Mixture

  path = tmp_path / "three.jsonl"
  path.write_text("".join(f'{{"text": "t{i}", "label": "l{i}"}}\n' for i in range(3)))
  small = TextTask("seqio_bridge_test_three", quickstart.vocabulary(), {"train": str(path)}, "text: {text}", "label")
  mixture = seqio_bridge.register(Mixture("seqio_bridge_test_capped", [small, get_task(NAME)], cap=100))
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == {"seqio_bridge_test_three": 3.0, NAME: 100.0}  # quickstart has 600 train examples
