"""SQuAD -> MRQA tasks: T5's SQuAD text format, all-answer EM/F1 scoring, and tfds wiring."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning.data import task as task_lib
from prompt_tuning.data import vocab
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.tasks import mrqa

SEQIO_VOCAB = os.path.join(
  importlib.util.find_spec("seqio").submodule_search_locations[0], "test_data/sentencepiece/sentencepiece.model"
)

RECORD = {
  "subset": "SQuAD",
  "qid": "56be4db0acb8001400a502ec",
  "question": "Which NFL team represented the AFC at Super Bowl 50?",
  "context": "Super Bowl 50 was an American football game.\nThe  Denver Broncos (AFC) won 24\u201310.",
  "answers": ["Denver Broncos", "the Denver Broncos.", "U.S."],
  "detected_answers": {"text": ["Denver Broncos"], "char_spans": {"start": [[50]], "end": [[63]]}},
}


@pytest.fixture(scope="module", autouse=True)
def small_vocabulary():
  vocab.set_default_vocabulary(SEQIO_VOCAB)
  yield
  vocab.set_default_vocabulary(vocab.T5_VOCABULARY_PATH)


def test_registered_tasks_and_splits():
  assert sorted(mrqa.TASKS) == sorted(
    f"mrqa_{s}_v100" for s in ("squad", "bio_asq", "drop", "duo_rc", "race", "relation_extraction", "textbook_qa")
  )
  squad = task_lib.get_task("mrqa_squad_v100")
  assert (squad.tfds_name, squad.splits, squad.candidates) == ("mrqa/squad:1.0.0", ["train", "validation"], None)
  for subset in mrqa.OUT_OF_DOMAIN_SUBSETS:
    task = task_lib.get_task(f"mrqa_{subset}_v100")
    assert task.tfds_name == f"mrqa/{subset}:1.0.0"
    assert task.splits == ["validation"] and task._splits == {"validation": "test"}  # the MRQA dev sets
    assert task.metrics == ("em", "f1")


def test_pad_punctuation_matches_t5():
  # T5's RE2 patterns: ASCII [[:punct:]] padded, ASCII \s runs squeezed (a no-break space stays).
  assert mrqa.pad_punctuation('U.S. (1990) said: "hi"!') == 'U . S . ( 1990 ) said : " hi " ! '
  assert mrqa.pad_punctuation("a\u00a0b\t\n c\u2014d [PAR] e_f") == "a\u00a0b c\u2014d [ PAR ] e _ f"


def test_t5_squad_format():
  example = mrqa.format_qa(RECORD)
  assert example == {
    "inputs": "question: Which NFL team represented the AFC at Super Bowl 50 ? context: Super Bowl 50 was "
    "an American football game . The Denver Broncos ( AFC ) won 24\u201310 . ",
    "targets": "Denver Broncos",
    "answers": ["Denver Broncos", "the Denver Broncos . ", "U . S . "],
    "idx": "56be4db0acb8001400a502ec",
    "subset": "SQuAD",
  }
  for task in mrqa.TASKS.values():  # the same format everywhere
    assert task.format_fn(RECORD) == example


def test_missing_answers():
  detected = mrqa.format_qa({**RECORD, "answers": []})
  assert (detected["targets"], detected["answers"]) == ("Denver Broncos", ["Denver Broncos"])
  as_list = mrqa.format_qa({**RECORD, "answers": [], "detected_answers": [{"text": "Broncos"}]})
  assert as_list["answers"] == ["Broncos"]
  assert mrqa.format_qa({**RECORD, "answers": [], "detected_answers": {"text": []}}) is None


def test_scores_em_and_f1_over_all_answers():
  examples = [
    {"targets": "x", "answers": ["Denver Broncos", "the Denver Broncos . "]},
    {"targets": "x", "answers": ["24 \u2013 10"]},
    {"targets": "x", "answers": ["Carolina Panthers", "Panthers"]},
  ]
  predictions = ["denver broncos!", "24", "the Carolina team"]
  scores = mrqa.TASKS["mrqa_drop_v100"].score([{"example": e, "prediction": p} for e, p in zip(examples, predictions)])
  # EM: only the first. F1: 1; "24" vs "24 \u2013 10" -> P=1, R=1/3 -> 0.5; "carolina team" vs
  # "carolina panthers" -> 0.5 (better than vs "panthers": 0).
  assert scores == pytest.approx({"em": 100 / 3, "f1": 100 * (1 + 0.5 + 0.5) / 3})


def test_every_task_and_split_batches_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4):
    for name, task in sorted(mrqa.TASKS.items()):
      for split in task.splits:
        batches = list(
          BatchIterator(
            task, split, {"inputs": 64, "targets": 16}, 4, shuffle=False, seed=0, repeat=False, drop_remainder=False
          )
        )
        assert len(batches) == 1 and int(batches[0].arrays["mask"].sum()) == 4, (name, split)
        for ex in batches[0].text["examples"]:
          assert ex["inputs"].startswith("question: ") and " context: " in ex["inputs"]
          assert ex["answers"] and ex["targets"] == ex["answers"][0]


def test_import_needs_no_tensorflow():
  script = textwrap.dedent("""
      import sys
      for name in ("tensorflow", "tensorflow_datasets", "seqio"):
        sys.modules[name] = None  # any import of these now raises ImportError
      from prompt_tuning.data import task as task_lib
      from prompt_tuning.tasks import mrqa
      task = task_lib.get_task("mrqa_race_v100")
      ex = task.format_fn({"question": "Who?", "context": "Ann.", "answers": ["Ann"], "qid": "q"})
      print(repr(ex["inputs"]), task.score([{"example": ex, "prediction": "ann"}]))
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "'question: Who ? context: Ann . ' {'em': 100.0, 'f1': 100.0}"
