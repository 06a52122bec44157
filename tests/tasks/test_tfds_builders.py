"""The real tfds builders, not `tfds.testing.mock_data`: their imports, features, and example generation.

mock_data replaces the builders' data preparation, so it hid a missing dependency
(`importlib_resources`, needed by `download_and_prepare`) and would hide a change of
the source format. Here the real builder reads hand-made source files in the
published format (only the download itself is replaced, by a local directory), writes
a tfds data dir, and the registered task formats what `tfds.load` reads back.
"""

from __future__ import annotations

import json
from unittest import mock

import pytest
import tensorflow_datasets as tfds  # not importorskip: the `data` extra must bring all it needs

from prompt_tuning.task_registry import resolve_task

# tfds name -> the features of the published dataset (what the task formatters read).
BUILDERS = {
  "super_glue/boolq:1.0.2": {"idx", "label", "passage", "question"},
  "glue/cola:2.0.0": {"idx", "label", "sentence"},
  "mrqa/squad:1.0.0": {
    "answers",
    "context",
    "context_tokens",
    "detected_answers",
    "qid",
    "question",
    "question_tokens",
    "subset",
  },
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_constructs_and_finds_its_code(name, tmp_path):
  builder = tfds.builder(name, data_dir=str(tmp_path))
  assert set(builder.info.features) == BUILDERS[name]
  # code_path locates the checksums beside the builder's code when preparing: the
  # import that failed (importlib_resources) while only mock data was ever used.
  assert builder.code_path.exists(), builder.code_path


def _prepare(name: str, data_dir, download_and_extract) -> None:
  """The real `download_and_prepare` of `name`; `download_and_extract(urls)` serves local files instead."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", side_effect=download_and_extract):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    )


def _examples(task_name: str, split: str, data_dir, monkeypatch) -> list[dict]:
  task = resolve_task(task_name)
  monkeypatch.setattr(task, "data_dir", str(data_dir))
  return list(task.examples(split))


def test_boolq_from_jsonl_source_to_t5_format(tmp_path, monkeypatch):
  # BoolQ.zip unpacks to BoolQ/{train,val,test}.jsonl; test rows carry no label.
  rows = {
    "train": [{"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": True}],
    "val": [
      {"question": "is grass red", "passage": "Grass is green.", "idx": 0, "label": False},
      {"question": "do cats purr", "passage": "Cats purr when content.", "idx": 1, "label": True},
    ],
    "test": [{"question": "is ice cold", "passage": "Ice is frozen water.", "idx": 0}],
  }
  (tmp_path / "src" / "BoolQ").mkdir(parents=True)
  for split, split_rows in rows.items():
    (tmp_path / "src" / "BoolQ" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))
  _prepare("super_glue/boolq:1.0.2", tmp_path / "tfds", lambda url: str(tmp_path / "src"))

  validation = sorted(
    _examples("super_glue_boolq_v102", "validation", tmp_path / "tfds", monkeypatch), key=lambda ex: ex["idx"]
  )
  assert [(ex["inputs"], ex["targets"], ex["idx"]) for ex in validation] == [
    ("boolq passage: Grass is green. question: is grass red", "False", 0),
    ("boolq passage: Cats purr when content. question: do cats purr", "True", 1),
  ]
  (test,) = _examples("super_glue_boolq_v102", "test", tmp_path / "tfds", monkeypatch)
  assert (test["inputs"], test["targets"]) == ("boolq passage: Ice is frozen water. question: is ice cold", "<unk>")


def test_cola_from_tsv_source_to_t5_format(tmp_path, monkeypatch):
  # CoLA.zip unpacks to CoLA/{train,dev}.tsv without a header (source, label, original mark,
  # sentence) and CoLA/test.tsv with one (index, sentence).
  (tmp_path / "src" / "CoLA").mkdir(parents=True)
  (tmp_path / "src" / "CoLA" / "train.tsv").write_text("gj04\t1\t\tOur friends won't buy this analysis.\n")
  (tmp_path / "src" / "CoLA" / "dev.tsv").write_text(
    "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
    "gj04\t0\t*\tThe more we study verbs, the crazier they get crazier.\n"
  )
  (tmp_path / "src" / "CoLA" / "test.tsv").write_text("index\tsentence\n0\tBill whistled past the house.\n")
  _prepare("glue/cola:2.0.0", tmp_path / "tfds", lambda url: str(tmp_path / "src"))

  validation = sorted(
    _examples("glue_cola_v002", "validation", tmp_path / "tfds", monkeypatch), key=lambda ex: ex["idx"]
  )
  assert validation == [
    {"inputs": "cola sentence: The sailors rode the breeze clear of the rocks.", "targets": "acceptable", "idx": 0},
    {
      "inputs": "cola sentence: The more we study verbs, the crazier they get crazier.",
      "targets": "unacceptable",
      "idx": 1,
    },
  ]
  (test,) = _examples("glue_cola_v002", "test", tmp_path / "tfds", monkeypatch)
  assert test == {"inputs": "cola sentence: Bill whistled past the house.", "targets": "<unk>", "idx": 0}


def test_mrqa_from_jsonl_source_to_t5_format(tmp_path, monkeypatch):
  # An MRQA 2019 file (gunzipped): a header line, then one line per context with its questions.
  def mrqa_file(split: str, qid: str, answers: list) -> str:
    context, question = "Paris is France's capital.", "What is France's capital?"
    row = {
      "context": context,
      "context_tokens": [["Paris", 0], ["is", 6], ["France", 9], ["'s", 15], ["capital", 18], [".", 25]],
      "qas": [
        {
          "qid": qid,
          "question": question,
          "question_tokens": [["What", 0], ["is", 5], ["France", 8], ["'s", 14], ["capital", 17], ["?", 24]],
          "detected_answers": [{"text": "Paris", "char_spans": [[0, 4]], "token_spans": [[0, 0]]}],
          "answers": answers,
        }
      ],
    }
    path = tmp_path / "src" / f"{split}.jsonl"
    path.write_text(json.dumps({"header": {"dataset": "SQuAD", "split": split}}) + "\n" + json.dumps(row) + "\n")
    return str(path)

  (tmp_path / "src").mkdir()
  files = {
    "train": mrqa_file("train", "q0", ["Paris"]),
    "validation": mrqa_file("validation", "q1", ["Paris", "paris"]),
  }
  _prepare("mrqa/squad:1.0.0", tmp_path / "tfds", lambda urls: {split: files[split] for split in urls})

  (example,) = _examples("mrqa_squad_v100", "validation", tmp_path / "tfds", monkeypatch)
  # T5 pads punctuation and keeps the space after the final one.
  assert example == {
    "inputs": "question: What is France ' s capital ? context: Paris is France ' s capital . ",
    "targets": "Paris",
    "idx": "q1",
    "answers": ["Paris", "paris"],
    "subset": "SQuAD",
  }
