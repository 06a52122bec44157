"""GLUE tasks: T5's exact text format, the QQP<->MRPC transfer mapping, scoring, and tfds wiring."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats

from prompt_tuning.data import task as task_lib
from prompt_tuning.data import vocab
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.tasks import glue

SEQIO_VOCAB = os.path.join(
  importlib.util.find_spec("seqio").submodule_search_locations[0], "test_data/sentencepiece/sentencepiece.model"
)

# config: (raw tfds record, T5 inputs, T5 targets)
FORMAT_CASES = {
  "cola": (
    {"sentence": "The book was read by me.", "label": 1, "idx": 3},
    "cola sentence: The book was read by me.",
    "acceptable",
  ),
  "sst2": (
    {"sentence": "a gripping , funny film ", "label": 0, "idx": 7},
    "sst2 sentence: a gripping , funny film ",
    "negative",
  ),
  "mrpc": (
    {"sentence1": "He said hi.", "sentence2": "He greeted us.", "label": 1, "idx": 0},
    "mrpc sentence1: He said hi. sentence2: He greeted us.",
    "equivalent",
  ),
  "qqp": (
    {"question1": "How do I cook rice?", "question2": "What is rice?", "label": 0, "idx": 5},
    "qqp question1: How do I cook rice? question2: What is rice?",
    "not_duplicate",
  ),
  "stsb": (
    {
      "sentence1": "Three more US soldiers killed in Afghanistan",
      "sentence2": "NATO Soldier Killed in Afghanistan",
      "label": 1.8,
      "idx": 2,
    },
    "stsb sentence1: Three more US soldiers killed in Afghanistan sentence2: NATO Soldier Killed in Afghanistan",
    "1.8",
  ),
  "mnli": (
    {"premise": "A man eats.", "hypothesis": "Nobody eats.", "label": 2, "idx": 9},
    "mnli hypothesis: Nobody eats. premise: A man eats.",
    "contradiction",
  ),
  "mnli_matched": (
    {"premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0},
    "mnli hypothesis: H. premise: P.",
    "neutral",
  ),
  "mnli_mismatched": (
    {"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 0},
    "mnli hypothesis: H. premise: P.",
    "entailment",
  ),
  "qnli": (
    {"question": "Who wrote it?", "sentence": "Tolstoy wrote it.", "label": 1, "idx": 4},
    "qnli question: Who wrote it? sentence: Tolstoy wrote it.",
    "not_entailment",
  ),
  "rte": (
    {"sentence1": "Cats purr.", "sentence2": "Cats make sounds.", "label": 0, "idx": 1},
    "rte sentence1: Cats purr. sentence2: Cats make sounds.",
    "entailment",
  ),
  "wnli": (
    {"sentence1": "S1.", "sentence2": "S2.", "label": 1, "idx": 6},
    "wnli sentence1: S1. sentence2: S2.",
    "entailment",
  ),
  "ax": ({"premise": "P.", "hypothesis": "H.", "label": -1, "idx": 0}, "mnli hypothesis: H. premise: P.", "<unk>"),
}


@pytest.fixture(scope="module", autouse=True)
def small_vocabulary():
  vocab.set_default_vocabulary(SEQIO_VOCAB)
  yield
  vocab.set_default_vocabulary(vocab.T5_VOCABULARY_PATH)


def records(examples, predictions):
  return [{"example": ex, "prediction": p} for ex, p in zip(examples, predictions)]


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize("config", sorted(FORMAT_CASES))
def test_t5_format(config):
  record, inputs, targets = FORMAT_CASES[config]
  assert set(FORMAT_CASES) == set(glue.GLUE_CONFIGS)
  task = task_lib.get_task(f"glue_{config}_v002")
  assert task.format_fn(dict(record)) == {"inputs": inputs, "targets": targets, "idx": record["idx"]}
  taskless = task_lib.get_task(f"glue_{config}_v002_taskless").format_fn(dict(record))
  assert taskless["inputs"] == inputs.split(" ", 1)[1]  # the benchmark word dropped, nothing else
  assert taskless["targets"] == targets


def test_unlabeled_test_examples_get_unk():
  assert glue.TASKS["glue_sst2_v002"].format_fn({"sentence": "x", "label": -1, "idx": 0})["targets"] == "<unk>"
  assert (
    glue.TASKS["glue_mnli_v002"].format_fn({"premise": "p", "hypothesis": "h", "label": -1, "idx": 0})["targets"]
    == "<unk>"
  )


@pytest.mark.parametrize(
  "label, expected",
  [
    (0.0, "0.0"),
    (0.1, "0.0"),
    (0.3, "0.4"),
    (0.5, "0.4"),
    (1.5, "1.6"),
    (2.5, "2.4"),
    (3.7, "3.6"),
    (3.8, "3.8"),
    (3.9, "4.0"),
    (4.9, "4.8"),
    (4.95, "5.0"),
    (5.0, "5.0"),
    (-1.0, "-1.0"),
  ],
)
def test_stsb_rounds_like_tf_round_in_float32(label, expected):
  # Pinned against tf.as_string(tf.round(label * 5) / 5, precision=1) on float32 labels
  # (half to even: 0.5 -> 2.5 -> 2 -> "0.4"; float32(3.7) * 5 == 18.5 -> 18 -> "3.6").
  assert glue.stsb_target(float(np.float32(label))) == expected


def test_task_metadata():
  assert glue.TASKS["glue_mnli_v002"].splits == [
    "train",
    "validation_matched",
    "validation_mismatched",
    "test_matched",
    "test_mismatched",
  ]
  assert glue.TASKS["glue_sst2_v002"].splits == ["train", "validation", "test"]
  assert glue.TASKS["glue_ax_v002"].splits == ["test"]
  assert glue.TASKS["glue_sst2_v002"].candidates == ["negative", "positive"]
  assert glue.TASKS["glue_mnli_v002_taskless"].candidates == ["entailment", "neutral", "contradiction"]
  assert glue.TASKS["glue_stsb_v002"].candidates is None
  assert glue.TASKS["glue_qqp_v002"].tfds_name == "glue/qqp:2.0.0"
  assert glue.TASKS["glue_mrpc_v002"].metrics == ("f1", "accuracy")
  assert glue.TASKS["glue_cola_v002"].metrics == ("matthews_corrcoef",)
  assert glue.TASKS["glue_stsb_v002"].metrics == ("pearson_corrcoef", "spearman_corrcoef")
  for name in glue.TASKS:
    assert task_lib.get_task(name) is glue.TASKS[name]


# ---------------------------------------------------------------- QQP <-> MRPC transfer


def test_mrpc_from_qqp_mapping():
  task = glue.TASKS["glue_mrpc_from_qqp_v002"]
  assert (task.tfds_name, task.splits, task.candidates) == (
    "glue/mrpc:2.0.0",
    ["validation"],
    ["not_duplicate", "duplicate"],
  )
  record = {"sentence1": "A b.", "sentence2": "A c.", "idx": 4}
  pos, neg = task.format_fn({**record, "label": 1}), task.format_fn({**record, "label": 0})
  assert pos == {
    "inputs": "mrpc sentence1: A b. sentence2: A c.",
    "targets": "duplicate",
    "native_target": "equivalent",
    "idx": 4,
  }
  assert (neg["targets"], neg["native_target"]) == ("not_duplicate", "not_equivalent")
  taskless = glue.TASKS["glue_mrpc_from_qqp_v002_taskless"].format_fn({**record, "label": 1})
  assert (taskless["inputs"], taskless["targets"]) == ("sentence1: A b. sentence2: A c.", "duplicate")


def test_qqp_from_mrpc_mapping():
  task = glue.TASKS["glue_qqp_from_mrpc_v002"]
  assert (task.tfds_name, task.candidates) == ("glue/qqp:2.0.0", ["not_equivalent", "equivalent"])
  record = {"question1": "Q1?", "question2": "Q2?", "idx": 0}
  pos, neg = task.format_fn({**record, "label": 1}), task.format_fn({**record, "label": 0})
  assert pos == {
    "inputs": "qqp question1: Q1? question2: Q2?",
    "targets": "equivalent",
    "native_target": "duplicate",
    "idx": 0,
  }
  assert (neg["targets"], neg["native_target"]) == ("not_equivalent", "not_duplicate")
  taskless = glue.TASKS["glue_qqp_from_mrpc_v002_taskless"].format_fn({**record, "label": 0})
  assert taskless["inputs"] == "question1: Q1? question2: Q2?"


def test_transfer_translates_predictions_then_scores_as_target():
  assert glue.translate_label("not_duplicate", "qqp", "mrpc") == "not_equivalent"
  assert glue.translate_label("duplicate", "qqp", "mrpc") == "equivalent"
  assert glue.translate_label("equivalent", "mrpc", "qqp") == "duplicate"
  task = glue.TASKS["glue_mrpc_from_qqp_v002"]
  examples = [
    task.format_fn({"sentence1": "a", "sentence2": "b", "label": y, "idx": i}) for i, y in enumerate([1, 1, 0, 0])
  ]
  # A QQP prompt answers in QQP words; "maybe" is invalid (wrong either way).
  scores = task.score(records(examples, ["duplicate", "not_duplicate", "not_duplicate", "maybe"]))
  direct = glue.TASKS["glue_mrpc_v002"].score(
    records(
      [{"targets": e["native_target"]} for e in examples], ["equivalent", "not_equivalent", "not_equivalent", "maybe"]
    )
  )
  # tp=1, fn=1, fp=1 ("maybe" on a negative target) -> F1 = 2/4; 2 of 4 right.
  assert scores == direct == pytest.approx({"f1": 50.0, "accuracy": 50.0})
  # Predictions in the target's own words are not translated away (the reference's str.replace).
  reverse = glue.TASKS["glue_qqp_from_mrpc_v002"]
  examples = [reverse.format_fn({"question1": "a", "question2": "b", "label": 1, "idx": 0})]
  assert reverse.score(records(examples, ["equivalent"]))["accuracy"] == 100.0


# ---------------------------------------------------------------- scoring


def test_f1_and_accuracy_count_invalid_predictions_wrong():
  eq, ne = "equivalent", "not_equivalent"
  examples = [{"targets": t} for t in (eq, eq, ne, ne, eq)]
  scores = glue.TASKS["glue_mrpc_v002"].score(records(examples, [eq, ne, eq, "junk", ""]))
  # T5's f1_score_with_invalid: junk on a negative -> false positive, "" on a positive -> false negative.
  # tp=1, fp=2, fn=2 -> F1 = 2/6.
  assert scores == pytest.approx({"f1": 100 / 3, "accuracy": 20.0})
  qqp = glue.TASKS["glue_qqp_v002_taskless"].score(records([{"targets": "duplicate"}] * 2, ["duplicate"] * 2))
  assert qqp == pytest.approx({"f1": 100.0, "accuracy": 100.0})


def test_cola_matthews():
  a, u = "acceptable", "unacceptable"
  examples = [{"targets": t} for t in (a, a, a, u, u, u)]
  scores = glue.TASKS["glue_cola_v002"].score(records(examples, [a, a, u, u, u, a]))
  # tp=2, fn=1, tn=2, fp=1 -> (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
  assert scores == pytest.approx({"matthews_corrcoef": 100 / 3})
  # T5 maps every non-label prediction to one class (-1), whatever its text: with targets (1, 1, 1, 0, 0, 0)
  # and predictions (1, -1, -1, 0, 0, 1): n=6, correct 3, target counts {1: 3, 0: 3}, prediction counts
  # {1: 2, 0: 2, -1: 2} -> (3*6 - (3*2 + 3*2)) / sqrt((36 - 12) * (36 - 18)) = 6 / sqrt(432).
  # Had "junk" and "acceptible" been two classes: 6 / sqrt(468).
  scores = glue.TASKS["glue_cola_v002"].score(records(examples, [a, "junk", "acceptible", u, u, a]))
  assert scores == pytest.approx({"matthews_corrcoef": 600 / 432**0.5})


def test_stsb_parses_floats():
  targets = ["1.0", "2.4", "3.0", "4.8", "0.2"]
  predictions = ["1.2", "2.4", "not a number", "5.0", " 0.4 "]
  scores = glue.TASKS["glue_stsb_v002"].score(records([{"targets": t} for t in targets], predictions))
  t = [1.0, 2.4, 3.0, 4.8, 0.2]
  p = [1.2, 2.4, -1.0, 5.0, 0.4]  # unparseable -> -1.0, as T5's string_to_float
  assert scores == pytest.approx(
    {"pearson_corrcoef": 100 * stats.pearsonr(t, p)[0], "spearman_corrcoef": 100 * stats.spearmanr(t, p)[0]}
  )


def test_accuracy_tasks():
  examples = [{"targets": t} for t in ("entailment", "neutral", "contradiction", "neutral")]
  scores = glue.TASKS["glue_mnli_v002"].score(records(examples, ["entailment", "neutral", "neutral", "Neutral"]))
  assert scores == {"accuracy": 50.0}
  assert glue.TASKS["glue_ax_v002"].score(records(examples, ["entailment"] * 4)) == {}


# ---------------------------------------------------------------- tfds wiring and imports


def test_every_task_and_split_batches_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4):
    for name, task in sorted(glue.TASKS.items()):
      splits = task.splits if not name.endswith("_taskless") else task.splits[-1:]
      for split in splits:
        it = BatchIterator(
          task, split, {"inputs": 64, "targets": 8}, 3, shuffle=False, seed=0, repeat=False, drop_remainder=False
        )
        batches = list(it)
        assert len(batches) == 2 and batches[0].arrays["encoder_input_tokens"].shape == (3, 64), (name, split)
        assert int(sum(b.arrays["mask"].sum() for b in batches)) == 4, (name, split)
        benchmark = glue.GLUE_CONFIGS[name[len("glue_") : name.index("_v002")].split("_from_")[0]][0]
        for ex in batches[0].text["examples"]:
          if task.candidates and not split.startswith("test"):
            assert ex["targets"] in task.candidates, (name, split, ex)
          first = ex["inputs"].split(" ", 1)[0]
          assert first.endswith(":") if name.endswith("_taskless") else first == benchmark, (name, ex)


def test_import_needs_no_tensorflow():
  script = textwrap.dedent("""
      import sys
      for name in ("tensorflow", "tensorflow_datasets", "seqio"):
        sys.modules[name] = None  # any import of these now raises ImportError
      from prompt_tuning.data import task as task_lib
      from prompt_tuning.tasks import glue
      task = task_lib.get_task("glue_mrpc_from_qqp_v002_taskless")
      ex = task.format_fn({"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0})
      print(ex["inputs"], ex["targets"], task.score([{"example": ex, "prediction": "duplicate"}]))
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "sentence1: a sentence2: b duplicate {'f1': 100.0, 'accuracy': 100.0}"
