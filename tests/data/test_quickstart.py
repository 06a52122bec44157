"""The built-in quickstart_sentiment task: installed package data, balance, learnability, no TensorFlow."""

from __future__ import annotations

import collections
import importlib.resources
import subprocess
import sys
import textwrap

from prompt_tuning.data.quickstart import make_data
from prompt_tuning.task_registry import list_tasks, resolve_task

FILES = ("train.jsonl", "validation.jsonl", "sentencepiece.model")


def test_files_are_installed_package_data():
  root = importlib.resources.files("prompt_tuning.data.quickstart")
  for name in FILES:
    assert root.joinpath(name).is_file(), name


def test_task_loads_and_is_balanced():
  assert "quickstart_sentiment" in list_tasks()
  task = resolve_task("quickstart_sentiment")
  assert task.candidates == ["negative", "positive"] and list(task.metrics) == ["accuracy"]
  train, validation = list(task.examples("train")), list(task.examples("validation"))
  assert collections.Counter(ex["targets"] for ex in train) == {"negative": 300, "positive": 300}
  assert collections.Counter(ex["targets"] for ex in validation) == {"negative": 50, "positive": 50}
  assert all(ex["inputs"].startswith("sentence: ") for ex in train + validation)
  assert not {ex["inputs"] for ex in train} & {ex["inputs"] for ex in validation}


def test_label_follows_the_keywords():
  task = resolve_task("quickstart_sentiment")
  polarity = {adj: label for label, adjs in make_data.ADJECTIVES.items() for adj in adjs}
  for ex in task.examples("train"):
    found = {polarity[w] for w in ex["inputs"].replace(",", " ").split() if w in polarity}
    assert found == {ex["targets"]}, ex


def test_vocabulary():
  vocab = resolve_task("quickstart_sentiment").vocabulary
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.vocab_size) == (0, 1, 2, 256)
  for label in ("negative", "positive"):
    assert 1 <= len(vocab.encode(label)) <= 3 and vocab.decode(vocab.encode(label) + [1]) == label
  assert vocab.unk_id not in vocab.encode("The Film Was GREAT, 10/10!")


def test_make_data_reproduces_the_shipped_files(tmp_path):
  make_data.main(str(tmp_path))
  root = importlib.resources.files("prompt_tuning.data.quickstart")
  for name in FILES:
    assert (tmp_path / name).read_bytes() == root.joinpath(name).read_bytes(), name


def test_batches_without_tensorflow():
  script = textwrap.dedent("""
      import sys
      for name in ("tensorflow", "seqio", "tensorflow_datasets"):
        sys.modules[name] = None  # any import of these now raises ImportError
      from prompt_tuning import data
      from prompt_tuning.data import quickstart
      it = data.BatchIterator(quickstart.TASK, "train", {"inputs": 32, "targets": 4}, 8,
                              shuffle=True, seed=0, repeat=True, drop_remainder=True)
      batch = next(it)
      print(batch.arrays["encoder_input_tokens"].shape, it.position)
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "(8, 32) 8"
