"""Mixture: capped examples-proportional train split, tagged examples, per-task scoring."""

from __future__ import annotations

import importlib.util
import os

import pytest

from prompt_tuning.data.mixture import Mixture
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.data.task import Task, TextTask

SMALL_MODEL = os.path.join(
  importlib.util.find_spec("seqio").submodule_search_locations[0], "test_data/sentencepiece/sentencepiece.model"
)
OTHER_MODEL = os.path.join(
  os.path.dirname(importlib.util.find_spec("prompt_tuning.data").origin), "quickstart", "sentencepiece.model"
)


def sentiment(n_train: int = 10, vocabulary=SMALL_MODEL, name: str = "sent") -> TextTask:
  """Classification: 'review: <i>' -> neg/pos (i odd)."""

  def rows(n, offset):
    return lambda: [{"text": f"r{offset + i}", "label": i % 2, "idx": offset + i} for i in range(n)]

  return TextTask(
    name,
    vocabulary,
    {"train": rows(n_train, 0), "validation": rows(4, 100)},
    "review: {text}",
    "label",
    labels=["neg", "pos"],
    metrics=("accuracy", "macro_f1"),
  )


def echo(n_train: int = 3) -> TextTask:
  """Generation: 'copy: <w>' -> <w>, with a test split the other task lacks."""

  def rows(n, word):
    return lambda: [{"w": f"{word}{i}", "idx": i} for i in range(n)]

  return TextTask(
    "echo",
    SMALL_MODEL,
    {"train": rows(n_train, "t"), "validation": rows(2, "v"), "test": rows(2, "x")},
    "copy: {w}",
    "w",
    metrics=("exact_match",),
  )


def test_train_split_is_capped_and_proportional():
  mixture = Mixture("mix", [sentiment(10), echo(3)], cap=4, seed=0)
  train = list(mixture.examples("train"))
  assert [ex["task"] for ex in train] == ["sent"] * 4 + ["echo"] * 3  # min(10, 4) and min(3, 4)
  chosen = [ex["idx"] for ex in train[:4]]
  assert chosen == sorted(chosen) and set(chosen) <= set(range(10))
  assert [ex["idx"] for ex in train[4:]] == [0, 1, 2]  # under the cap: all, in order
  again = [ex["idx"] for ex in Mixture("mix", [sentiment(10), echo(3)], cap=4, seed=0).examples("train")][:4]
  assert again == chosen  # deterministic
  subsets = {
    tuple(ex["idx"] for ex in list(Mixture("m", [sentiment(10)], cap=4, seed=s).examples("train"))) for s in range(6)
  }
  assert len(subsets) > 1  # the seed picks the subset
  assert len(list(Mixture("mix", [sentiment(10), echo(3)]).examples("train"))) == 13  # no cap


def test_examples_are_tagged_with_task_and_candidates():
  mixture = Mixture("mix", [sentiment(), echo()])
  validation = list(mixture.examples("validation"))
  assert [ex["task"] for ex in validation] == ["sent"] * 4 + ["echo"] * 2  # all of every task, concatenated
  assert validation[0] == {
    "inputs": "review: r100",
    "targets": "neg",
    "idx": 100,
    "task": "sent",
    "candidates": ["neg", "pos"],
  }
  assert "candidates" not in validation[-1]  # generation task: none
  assert mixture.candidates is None and isinstance(mixture, Task)

  class OwnCandidates(TextTask):
    def examples(self, split):
      for ex in super().examples(split):
        yield dict(ex, candidates=["a", "b", "c"])

  own = OwnCandidates("own", SMALL_MODEL, {"validation": lambda: [{"x": "1", "y": "a"}]}, "{x}", "y", labels=["a"])
  (ex,) = Mixture("m", [own]).examples("validation")
  assert ex["candidates"] == ["a", "b", "c"]  # an example's own candidates win


def test_splits_are_the_union():
  mixture = Mixture("mix", [sentiment(), echo()])
  assert mixture.splits == ["train", "validation", "test"]
  assert [ex["task"] for ex in mixture.examples("test")] == ["echo", "echo"]
  with pytest.raises(KeyError, match="no split 'dev'"):
    list(mixture.examples("dev"))
  assert mixture.metrics == ("sent/accuracy", "sent/macro_f1", "echo/exact_match", "average")


def test_score_per_task_and_average():
  mixture = Mixture("mix", [sentiment(), echo()])
  validation = list(mixture.examples("validation"))
  # sent: 3 of 4 right (targets neg pos neg pos); echo: 1 of 2.
  predictions = ["neg", "pos", "neg", "neg", "v0", "nope"]
  out = mixture.score([{"example": ex, "prediction": p} for ex, p in zip(validation, predictions)])
  # macro F1: neg tp2 fp1 fn0 -> 0.8; pos tp1 fp0 fn1 -> 2/3.
  assert out == {
    "sent/accuracy": 75.0,
    "sent/macro_f1": pytest.approx(100 * (0.8 + 2 / 3) / 2),
    "echo/exact_match": 50.0,
    "average": pytest.approx((75.0 + 50.0) / 2),
  }
  only_echo = mixture.score([{"example": validation[-1], "prediction": "v1"}])
  assert only_echo == {"echo/exact_match": 100.0, "average": 100.0}
  with pytest.raises(ValueError, match="task 'other'"):
    mixture.score([{"example": dict(validation[0], task="other"), "prediction": "neg"}])


def test_vocabulary_must_be_shared():
  shared = Mixture("mix", [sentiment(), echo()])
  assert shared.vocabulary.path == SMALL_MODEL  # separate objects, same file: fine
  mixed = Mixture("mix", [sentiment(vocabulary=OTHER_MODEL), echo()])
  with pytest.raises(ValueError, match="task echo uses vocabulary .* a mixture needs one vocabulary"):
    _ = mixed.vocabulary


def test_invalid_mixtures():
  with pytest.raises(ValueError, match="duplicate"):
    Mixture("m", [sentiment(), sentiment()])
  with pytest.raises(TypeError, match="is a mixture"):
    Mixture("m", [Mixture("inner", [echo()])])
  with pytest.raises(ValueError, match="no tasks"):
    Mixture("m", [])
  with pytest.raises(ValueError, match="cap"):
    Mixture("m", [echo()], cap=0)


def test_batches_over_a_mixture():
  mixture = Mixture("mix", [sentiment(10), echo(3)], cap=4)
  batches = list(
    BatchIterator(
      mixture, "train", {"inputs": 16, "targets": 4}, 4, shuffle=True, seed=3, repeat=False, drop_remainder=False
    )
  )
  assert len(batches) == 2 and sum(int(b.arrays["mask"].sum()) for b in batches) == 7
  tasks = [ex["task"] for b in batches for ex in b.text["examples"] if ex]
  assert sorted(tasks) == ["echo"] * 3 + ["sent"] * 4


def test_registered_super_glue_mixtures():
  from prompt_tuning.data.task import get_task
  from prompt_tuning.tasks import mixtures

  for suffix in ("", "_taskless"):
    mixture = get_task(f"super_glue_v102_proportional{suffix}")
    assert [t.name for t in mixture.tasks] == [n + suffix for n in mixtures.SUPER_GLUE_TRAINING_TASKS]
    assert mixture.cap is None
