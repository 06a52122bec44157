"""Text corpora as tasks (data/corpus.py, tasks/lm.py): the streamed, resumable train order, the
held-out examples, the gin factory's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prompt_tuning.data import features
from prompt_tuning.data import task as task_lib
from prompt_tuning.data.corpus import CorpusTask, FileSource
from prompt_tuning.data.objectives import Objective
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.data.quickstart import data_path, vocabulary
from prompt_tuning.data.task import DataError
from prompt_tuning.tasks import lm

LENGTHS = {"inputs": 16, "targets": 16}
CORPUS = data_path("corpus_train.txt")


@pytest.fixture(scope="module")
def task():
  return CorpusTask(
    "corpus_test",
    vocabulary(),
    {"train": FileSource(CORPUS), "validation": FileSource(data_path("corpus_validation.txt"))},
    shuffle_window=7,  # windows of 7 documents: the stream crosses many of them
    eval_examples=12,
    feature_lengths=LENGTHS,
  )


def _batches(task, n, **kwargs):
  it = task.batch_iterator("train", LENGTHS, 6, shuffle=True, seed=3, repeat=True, drop_remainder=True, **kwargs)
  return it, [next(it).arrays for _ in range(n)]


def test_resuming_at_a_position_continues_bit_exactly(task):
  it, batches = _batches(task, 5)
  assert it.position == 30
  resumed, rest = _batches(task, 3, start_position=12)
  for a, b in zip(batches[2:], rest):
    for key in features.BATCH_KEYS:
      np.testing.assert_array_equal(a[key], b[key])
  assert resumed.position == 30


def test_processes_share_the_global_batch(task):
  _, whole = _batches(task, 2)
  _, first = _batches(task, 2, process_index=0, process_count=2)
  _, second = _batches(task, 2, process_index=1, process_count=2)
  for w, a, b in zip(whole, first, second):
    np.testing.assert_array_equal(
      w["encoder_input_tokens"], np.concatenate([a["encoder_input_tokens"], b["encoder_input_tokens"]])
    )


def test_an_epoch_is_every_document_once_and_epochs_differ(task):
  it = task.batch_iterator("train", LENGTHS, 4, shuffle=True, seed=3)
  n = it.num_examples
  docs = open(CORPUS).read().splitlines()
  first = [it.document(i) for i in range(n)]
  assert n == 400 and sorted(first) == sorted(docs) and first != docs  # shuffled within windows
  assert [it.document(i) for i in range(n, 2 * n)] != first
  # Within a window of 7 documents the order is permuted, across windows kept.
  assert sorted(first[7:14]) == sorted(docs[7:14])


def test_train_examples_follow_the_objective(task):
  _, (batch,) = _batches(task, 1)
  vocab = vocabulary()
  for inputs, targets in zip(batch["encoder_input_tokens"], batch["decoder_target_tokens"]):
    inputs, targets = inputs[inputs > 0].tolist(), targets[targets > 0].tolist()
    assert inputs[-1] == targets[-1] == vocab.eos_id
    text = vocab.decode(inputs[:-1] + targets[:-1])
    assert text.replace(" ", "") in open(CORPUS).read().replace(" ", "")  # prefix + continuation = a piece of a line


def test_held_out_examples_carry_their_ids_and_are_fixed(task):
  examples = list(task.examples("validation"))
  assert len(examples) == 12 and examples == list(task.examples("validation"))
  encoded = features.tokenize(examples, task.vocabulary, LENGTHS)
  assert encoded[0]["inputs_ids"] == examples[0]["inputs_ids"] + [1]  # kept, not re-encoded; EOS added
  it = BatchIterator(task, "validation", LENGTHS, 5, shuffle=False, seed=0, repeat=False, drop_remainder=False)
  assert it.num_examples == 12 and it.num_batches == 3


def test_jsonl_field_and_bad_files(tmp_path):
  good = tmp_path / "docs.jsonl"
  good.write_text(json.dumps({"body": "the film was fine"}) + "\n\n" + json.dumps({"body": "the cast was weak"}) + "\n")
  assert list(FileSource(str(good), field="body").read(1)) == ["the cast was weak"]
  with pytest.raises(DataError, match=r"docs.jsonl:1: no field 'text' \(record fields: body\)"):
    list(FileSource(str(good)).read(0))
  name = lm.text_corpus_task("corpus_gin_test", str(good), str(good), field="body", feature_lengths=LENGTHS)
  assert lm.text_corpus_task("corpus_gin_test", str(good), str(good), field="body", feature_lengths=LENGTHS) == name
  with pytest.raises(ValueError, match="already registered with other arguments: objective="):
    lm.text_corpus_task("corpus_gin_test", str(good), str(good), field="body", objective="span_corruption")
  with pytest.raises(DataError, match="train_path file not found: .*missing.txt"):
    lm.text_corpus_task("corpus_gin_test2", str(tmp_path / "missing.txt"), str(good))
  with pytest.raises(DataError, match="reads .txt .* or .jsonl files"):
    lm.text_corpus_task("corpus_gin_test2", str(tmp_path / "data.csv"), str(good))
  with pytest.raises(ValueError, match="lm.text_corpus_task: unknown objective 'lm'"):
    lm.text_corpus_task("corpus_gin_test3", str(good), str(good), objective="lm")


def test_span_corruption_needs_sentinels_in_the_vocabulary():
  task = CorpusTask("sc", vocabulary(), {"train": FileSource(CORPUS)}, Objective("span_corruption"))
  with pytest.raises(ValueError, match="sentinels, but the vocabulary has 0 extra ids"):
    task.batch_iterator("train", {"inputs": 32, "targets": 8}, 4, shuffle=True, seed=0)


@pytest.mark.slow
def test_a_tfds_corpus_streams_and_resumes_through_tfds(tmp_path):
  """tasks/c4.gin's path (lm.tfds_corpus_task -> tfds.load of split[start:]) on a small text dataset
  that tfds itself writes and reads back (C4 is the same code with another name)."""
  import tensorflow_datasets as tfds

  docs = open(CORPUS).read().splitlines()
  tfds.dataset_builders.store_as_tfds_dataset(
    name="lm_corpus_test",
    version="1.0.0",
    features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
    split_datasets={  # (key, example) pairs, as a builder's _generate_examples yields them
      "train": [(str(i), {"text": d}) for i, d in enumerate(docs[:30])],
      "validation": [(str(i), {"text": d}) for i, d in enumerate(docs[30:40])],
    },
    data_dir=str(tmp_path),
    disable_shuffling=True,
  )
  name = lm.tfds_corpus_task(
    "lm_corpus_tfds_test",
    "lm_corpus_test:1.0.0",
    data_dir=str(tmp_path),
    feature_lengths=LENGTHS,
    vocabulary_path=data_path("sentencepiece.model"),
    extra_ids=0,
    eval_examples=4,
    shuffle_window=8,
  )
  task = task_lib.get_task(name)
  it = task.batch_iterator("train", LENGTHS, 4, shuffle=True, seed=1)
  assert it.num_examples == 30 and sorted(it.document(i) for i in range(30)) == sorted(docs[:30])
  batches = [next(it).arrays["encoder_input_tokens"] for _ in range(10)]  # 40 examples: into the second epoch
  resumed = task.batch_iterator("train", LENGTHS, 4, shuffle=True, seed=1, start_position=12)  # reads train[8:]
  for expected in batches[3:6]:
    np.testing.assert_array_equal(next(resumed).arrays["encoder_input_tokens"], expected)
  held_out = list(task.examples("validation"))
  assert [e["idx"] for e in held_out] == [0, 1, 2, 3] and held_out[0]["inputs"] in docs[30]
