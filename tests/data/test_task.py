"""TextTask: templates, file formats, label mapping, errors, registry."""

from __future__ import annotations

import json
import re

import pytest

from prompt_tuning.data import task as task_lib
from prompt_tuning.data.quickstart import vocabulary

RECORDS = [
  {"premise": "a cat sat", "hypothesis": "an animal sat", "label": 0},
  {"premise": "it rained, hard", "hypothesis": 'the "ground" is dry', "label": 1},
]
LABELS = ["entailment", "not_entailment"]
TEMPLATE = "premise: {premise} hypothesis: {hypothesis}"
EXPECTED = [
  {"inputs": "premise: a cat sat hypothesis: an animal sat", "targets": "entailment", "idx": 0},
  {"inputs": 'premise: it rained, hard hypothesis: the "ground" is dry', "targets": "not_entailment", "idx": 1},
]


def make_task(splits, labels=LABELS, template=TEMPLATE, name="toy_nli", **kw):
  return task_lib.TextTask(name, vocabulary(), splits, template, "label", labels, **kw)


def write(path, text):
  path.write_text(text)
  return str(path)


def test_callable_source_formats_template_and_maps_labels():
  task = make_task({"train": lambda: RECORDS})
  assert list(task.examples("train")) == EXPECTED
  assert task.candidates == LABELS and task.splits == ["train"] and task.metrics == ("accuracy",)
  assert isinstance(task, task_lib.Task)


@pytest.mark.parametrize("ext", ["jsonl", "tsv", "csv"])
def test_reads_files(tmp_path, ext):
  if ext == "jsonl":
    text = "\n".join(json.dumps(r) for r in RECORDS) + "\n\n"
  elif ext == "tsv":  # verbatim fields: quotes are data
    rows = [f"{r['premise']}\t{r['hypothesis']}\t{r['label']}\n" for r in RECORDS]
    text = "premise\thypothesis\tlabel\n" + "".join(rows)
  else:
    text = 'premise,hypothesis,label\na cat sat,an animal sat,0\n"it rained, hard","the ""ground"" is dry",1\n'
  task = make_task({"validation": write(tmp_path / f"d.{ext}", text)})
  assert list(task.examples("validation")) == EXPECTED


def test_missing_template_field_names_field_file_and_line(tmp_path):
  lines = [json.dumps(RECORDS[0]), json.dumps(RECORDS[1]), json.dumps({"premise": "x", "label": 0})]
  path = write(tmp_path / "train.jsonl", "\n".join(lines))
  with pytest.raises(task_lib.DataError) as e:
    list(make_task({"train": path}).examples("train"))
  msg = str(e.value)
  assert "'hypothesis'" in msg and f"{path}:3" in msg and "\n" not in msg


def test_missing_field_in_tsv_and_callable(tmp_path):
  path = write(tmp_path / "t.tsv", "premise\tlabel\np1\t0\np2\t1\n")
  with pytest.raises(task_lib.DataError, match=rf"{re.escape(path)}:2: input_template field 'hypothesis' missing"):
    list(make_task({"train": path}).examples("train"))
  with pytest.raises(task_lib.DataError, match="record 1: target_field 'label' missing"):
    list(make_task({"train": lambda: [{"premise": "p", "hypothesis": "h"}]}).examples("train"))


def test_label_mapping():
  labels = ["neg", "pos"]
  assert task_lib.label_string(1, labels) == "pos"
  assert task_lib.label_string("0", labels) == "neg"  # TSV/CSV cells are strings
  assert task_lib.label_string("pos", labels) == "pos"
  assert task_lib.label_string(True, labels) == "pos"
  assert task_lib.label_string(1.0, labels) == "pos"
  assert task_lib.label_string(3, None) == "3" and task_lib.label_string("free text", None) == "free text"
  for bad in (2, -1, "maybe", 0.5):
    with pytest.raises(ValueError):
      task_lib.label_string(bad, labels)


def test_bad_label_error_has_location(tmp_path):
  path = write(tmp_path / "d.csv", "premise,hypothesis,label\na,b,0\na,b,7\n")
  with pytest.raises(task_lib.DataError, match=rf"{re.escape(path)}:3: label index 7 out of range"):
    list(make_task({"test": path}).examples("test"))


def test_idx_from_record_or_position():
  task = make_task({"train": lambda: [dict(RECORDS[0], idx=41), RECORDS[1]]})
  assert [ex["idx"] for ex in task.examples("train")] == [41, 1]


def test_file_errors(tmp_path):
  with pytest.raises(task_lib.DataError, match="unknown file type '.txt'"):
    list(make_task({"train": write(tmp_path / "a.txt", "x")}).examples("train"))
  path = write(tmp_path / "b.jsonl", json.dumps(RECORDS[0]) + "\n{oops\n")
  with pytest.raises(task_lib.DataError, match=rf"{re.escape(path)}:2: invalid JSON"):
    list(make_task({"train": path}).examples("train"))
  path = write(tmp_path / "c.tsv", "premise\thypothesis\tlabel\na\tb\n")
  with pytest.raises(task_lib.DataError, match=rf"{re.escape(path)}:2: 2 columns, but the header has 3"):
    list(make_task({"train": path}).examples("train"))


def test_construction_errors():
  with pytest.raises(KeyError, match="no split 'test'; splits: train"):
    list(make_task({"train": lambda: RECORDS}).examples("test"))
  with pytest.raises(ValueError, match="named fields"):
    make_task({}, template="premise: {}")
  with pytest.raises(KeyError, match="unknown metric 'bleu'"):
    make_task({}, metrics=["bleu"])
  with pytest.raises(ValueError, match="duplicate labels"):
    make_task({}, labels=["a", "a"])


def test_registry():
  task = make_task({"train": lambda: RECORDS}, name="test_registry_nli")
  assert task_lib.register_task(task) is task
  assert task_lib.get_task("test_registry_nli") is task
  assert {"test_registry_nli", "quickstart_sentiment"} <= set(task_lib.registered_names())
  task_lib.register_task(task)  # same object again: fine
  other = make_task({}, name="test_registry_nli")
  with pytest.raises(ValueError, match="already registered"):
    task_lib.register_task(other)
  task_lib.register_task(other, overwrite=True)
  assert task_lib.get_task("test_registry_nli") is other
  with pytest.raises(KeyError) as e:
    task_lib.get_task("nope")
  assert str(e.value) == (
    f"unknown task 'nope'; `prompt-tuning tasks` lists the {len(task_lib.registered_names())} known tasks and mixtures"
  )


def test_leaderboard_registry():
  assert task_lib.get_leaderboard("test_leaderboard_nli") is None
  writer = lambda records, directory: f"{directory}/NLI.jsonl"  # noqa: E731
  assert task_lib.register_leaderboard("test_leaderboard_nli", writer) is writer
  assert task_lib.get_leaderboard("test_leaderboard_nli") is writer
