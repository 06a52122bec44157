"""SentencePieceVocabulary: T5 ids, sentinels, and id-for-id parity with seqio's."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.data.quickstart import data_path

TEXTS = [
  "hello world",
  "This is a test <extra_id_0> and <extra_id_5>x",
  "<extra_id_9> q",
  "Ünïcödé 北京 !!",
  "",
  "  spaces   inside  ",
]


def _seqio_model():
  seqio = pytest.importorskip("seqio")
  return seqio, os.path.join(os.path.dirname(seqio.__file__), "test_data/sentencepiece/sentencepiece.model")


@pytest.mark.parametrize("extra_ids", [0, 10, 100])
def test_matches_seqio(extra_ids):
  seqio, path = _seqio_model()
  ref = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  ours = vocab_lib.SentencePieceVocabulary(path, extra_ids=extra_ids)
  assert (ours.vocab_size, ours.eos_id, ours.unk_id, ours.pad_id) == (ref.vocab_size, ref.eos_id, ref.unk_id, 0)
  for text in TEXTS:
    assert ours.encode(text) == list(ref.encode(text)), text
  size = ref.vocab_size
  for ids in (
    [3, 4, 5, 1, 6, 7],
    [0, 0, 3, 4, 0],
    [size - 1, 5, size - 3],
    [size + 5, 4],
    [],
    [1],
    list(range(0, size, 7)),
    list(range(size - 1, 2, -3)),
  ):
    assert ours.decode(ids) == ref.decode(ids), ids


def test_special_ids_and_sentinels():
  v = vocab_lib.SentencePieceVocabulary(data_path("sentencepiece.model"), extra_ids=5)
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  assert v.vocab_size == v.piece_size + 5
  assert v.sentinel_id(0) == v.vocab_size - 1 and v.sentinel_id(4) == v.piece_size
  assert v.encode("<extra_id_0>") == [v.vocab_size - 1]
  assert v.decode([v.piece_size + 4]) == "<extra_id_0>"
  assert v.decode([v.piece_size]) == "<extra_id_4>"
  with pytest.raises(ValueError):
    v.sentinel_id(5)


def test_decode_stops_at_eos_and_drops_pad():
  v = vocab_lib.SentencePieceVocabulary(data_path("sentencepiece.model"), extra_ids=0)
  ids = v.encode("the film was wonderful")
  assert 1 not in ids and v.decode(ids) == "the film was wonderful"
  assert v.decode([0] + ids + [1] + v.encode("boring") + [0, 0]) == "the film was wonderful"
  assert v.decode(np.array(ids + [1, 0], np.int32)) == "the film was wonderful"
  assert v.decode_batch(np.array([ids + [1], ids[:1] + [1] + ids[1:]])) == ["the film was wonderful", "the"]


def test_pickles():
  v = vocab_lib.SentencePieceVocabulary(data_path("sentencepiece.model"), extra_ids=3)
  w = pickle.loads(pickle.dumps(v))
  assert w.vocab_size == v.vocab_size and w.encode("a clever plot") == v.encode("a clever plot")
