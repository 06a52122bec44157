"""SuperGLUE tasks: T5's exact text formats, scoring, batches under tfds mock data, leaderboard files."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning.data import vocab
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.data.task import get_task
from prompt_tuning.tasks import mixtures, super_glue

LENGTHS = {"inputs": 64, "targets": 8}


# seqio's small test model, found without importing seqio (which would import TensorFlow).
SMALL_MODEL = os.path.join(
  importlib.util.find_spec("seqio").submodule_search_locations[0], "test_data/sentencepiece/sentencepiece.model"
)


@pytest.fixture(scope="module", autouse=True)
def small_vocabulary():
  vocab.set_default_vocabulary(SMALL_MODEL)
  yield
  vocab.set_default_vocabulary(vocab.T5_VOCABULARY_PATH)


@pytest.fixture(scope="module")
def mock_tfds():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=4):
    yield


def fmt(name: str, record: dict):
  return get_task(name).format_fn(record)


# ---------------------------------------------------------------- T5's formats, pinned


def test_boolq_cb_copa_rte_wic_formats():
  ex = fmt(
    "super_glue_boolq_v102", {"question": "is the sky blue", "passage": "The sky is blue.", "idx": 3, "label": 1}
  )
  assert (ex["inputs"], ex["targets"], ex["idx"]) == (
    "boolq passage: The sky is blue. question: is the sky blue",
    "True",
    3,
  )
  ex = fmt("super_glue_cb_v102", {"premise": "It rains.", "hypothesis": "It is dry.", "idx": 0, "label": 1})
  assert (ex["inputs"], ex["targets"]) == ("cb hypothesis: It is dry. premise: It rains.", "contradiction")
  ex = fmt(
    "super_glue_copa_v102",
    {
      "premise": "The man broke his toe.",
      "choice1": "He dropped a hammer.",
      "choice2": "He got a hole in his sock.",
      "question": "cause",
      "idx": 0,
      "label": 0,
    },
  )
  assert (ex["inputs"], ex["targets"]) == (
    "copa choice1: He dropped a hammer. choice2: He got a hole in his sock. premise: The man broke his toe. "
    "question: cause",
    "choice1",
  )
  ex = fmt("super_glue_rte_v102", {"premise": "A cat sat.", "hypothesis": "An animal sat.", "idx": 7, "label": 0})
  assert (ex["inputs"], ex["targets"]) == ("rte hypothesis: An animal sat. premise: A cat sat.", "entailment")
  ex = fmt(
    "super_glue_wic_v102",
    {
      "word": "bank",
      "sentence1": "He sat by the bank.",
      "sentence2": "The bank closed.",
      "start1": 14,
      "end1": 18,
      "start2": 4,
      "end2": 8,
      "idx": 1,
      "label": 0,
    },
  )
  assert (ex["inputs"], ex["targets"]) == (
    "wic sentence1: He sat by the bank. sentence2: The bank closed. word: bank",
    "False",
  )
  unlabelled = fmt("super_glue_rte_v102", {"premise": "p", "hypothesis": "h", "idx": 0, "label": -1})
  assert unlabelled["targets"] == "<unk>"
  assert get_task("super_glue_rte_v102").candidates == ["entailment", "not_entailment"]
  assert get_task("super_glue_copa_v102").candidates == ["choice1", "choice2"]
  assert get_task("super_glue_cb_v102").candidates == ["entailment", "contradiction", "neutral"]


def test_diagnostics_read_as_rte():
  # T5 rekeys AX-b (premise <- sentence1, hypothesis <- sentence2), then sorts the feature names.
  ex = fmt("super_glue_axb_v102", {"sentence1": "The cat sat.", "sentence2": "A cat sat.", "idx": 0, "label": 1})
  assert (ex["inputs"], ex["targets"]) == ("rte hypothesis: A cat sat. premise: The cat sat.", "not_entailment")
  assert (
    fmt("super_glue_axb_v102_taskless", {"sentence1": "P.", "sentence2": "H.", "idx": 0, "label": 0})["inputs"]
    == "hypothesis: H. premise: P."
  )
  ex = fmt(
    "super_glue_axg_v102",
    {"premise": "The nurse said she was tired.", "hypothesis": "The nurse was tired.", "idx": 4, "label": 0},
  )
  assert (ex["inputs"], ex["targets"]) == (
    "rte hypothesis: The nurse was tired. premise: The nurse said she was tired.",
    "entailment",
  )
  for name in ("super_glue_axb_v102", "super_glue_axg_v102"):
    task = get_task(name)
    assert task.splits == ["validation", "test"] and task._splits == {"validation": "test", "test": "test"}


def test_multirc_strips_html_and_carries_its_group():
  ex = fmt(
    "super_glue_multirc_v102",
    {
      "paragraph": "<b>Sent 1: </b>Alice ran.<br><b>Sent 2: </b>Bob sat.<br>",
      "question": "Who ran?",
      "answer": "Alice",
      "idx": {"paragraph": 2, "question": 5, "answer": 1},
      "label": 1,
    },
  )
  assert ex["inputs"] == "multirc question: Who ran? answer: Alice paragraph: Sent 1: Alice ran. Sent 2: Bob sat. "
  assert (ex["targets"], ex["group"], ex["idx"]) == ("True", "2-5", {"paragraph": 2, "question": 5, "answer": 1})


RECORD = {
  "passage": "This is the passage.\n@highlight\nPenguins swim\n@highlight\nPigeons fly",
  "query": "A @placeholder is a bird.",
  "entities": ["penguin", "potato", "pigeon"],
  "answers": ["penguin", "pigeon"],
  "idx": {"passage": 3, "query": 9},
}


def test_record_one_example_per_answer_with_entity_candidates():
  examples = fmt("super_glue_record_v102", RECORD)
  inputs = (
    "record query: A @placeholder is a bird. entities: penguin, potato, pigeon "
    "passage: This is the passage. Penguins swim. Pigeons fly"
  )
  assert [(e["inputs"], e["targets"]) for e in examples] == [(inputs, "penguin"), (inputs, "pigeon")]
  for e in examples:
    assert e["answers"] == ["penguin", "pigeon"] and e["candidates"] == ["penguin", "potato", "pigeon"]
    assert e["idx"] == {"passage": 3, "query": 9}
  (test,) = fmt("super_glue_record_v102", dict(RECORD, answers=[]))
  assert test["targets"] == "<unk>" and test["answers"] == []
  (taskless, _) = fmt("super_glue_record_v102_taskless", RECORD)
  assert taskless["inputs"] == inputs[len("record ") :]
  assert get_task("super_glue_record_v102").candidates is None  # per example instead


WSC = {
  "text": "Mitchell asked Tom if he could lend some money.",
  "span1_text": "Tom",
  "span1_index": 2,
  "span2_text": "he",
  "span2_index": 4,
  "idx": 5,
  "label": 1,
}


def test_wsc_fixed_marks_noun_and_pronoun():
  ex = fmt(
    "super_glue_wsc_fixed_v102",
    {
      "text": "This is a test sentence .",
      "span1_text": "test",
      "span1_index": 3,
      "span2_text": "This",
      "span2_index": 0,
      "idx": 0,
      "label": 0,
    },
  )
  assert (ex["inputs"], ex["targets"]) == ("wsc text: # This # is a * test * sentence .", "False")
  ex = fmt("super_glue_wsc_fixed_v102", WSC)  # span1 first: span2's index shifts by the 2 marks
  assert (ex["inputs"], ex["targets"]) == ("wsc text: Mitchell asked * Tom * if # he # could lend some money.", "True")


def test_wsc_simple_highlights_pronoun_and_trains_on_positives():
  ex = fmt("super_glue_wsc_v102_simple_eval", WSC)
  assert (ex["inputs"], ex["targets"], ex["label"]) == (
    "wsc: Mitchell asked Tom if *he* could lend some money.",
    "Tom",
    1,
  )
  assert fmt("super_glue_wsc_v102_simple_train", WSC)["targets"] == "Tom"
  assert fmt("super_glue_wsc_v102_simple_train", dict(WSC, label=0)) is None  # T5: correct referent only
  assert fmt("super_glue_wsc_v102_simple_eval", dict(WSC, label=0))["label"] == 0
  special = dict(
    WSC,
    text=(
      "The boy continued to whip the pony , and eventually the pony threw him over. John "
      'laughed out quite loud. "Good for him," he said. '
    ),
    span2_text="him",
    span2_index=99,
  )
  assert fmt("super_glue_wsc_v102_simple_eval", special)["inputs"] == (
    "wsc: The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite "
    'loud. "Good for *him* ," he said.'
  )
  assert fmt("super_glue_wsc_v102_simple_eval_taskless", WSC)["inputs"] == (
    "Mitchell asked Tom if *he* could lend some money."
  )
  assert get_task("super_glue_wsc_v102_simple_train").splits == ["train"]
  assert get_task("super_glue_wsc_v102_simple_eval").splits == ["validation", "test"]


def test_taskless_drops_only_the_first_token():
  record = {"premise": "A cat sat.", "hypothesis": "An animal sat.", "idx": 7, "label": 0}
  assert fmt("super_glue_rte_v102_taskless", record)["inputs"] == "hypothesis: An animal sat. premise: A cat sat."
  assert fmt("super_glue_wsc_fixed_v102_taskless", WSC)["inputs"].startswith("text: Mitchell")
  assert {n for n in super_glue.TASK_NAMES if n.endswith("_taskless")} == {
    n + "_taskless" for n in super_glue.TASK_NAMES if not n.endswith("_taskless")
  }


# ---------------------------------------------------------------- scoring


def rec(example: dict, prediction: str) -> dict:
  return {"example": example, "prediction": prediction}


def test_classification_scores():
  def ex(target, **kw):
    return dict(targets=target, idx=kw.pop("idx", 0), **kw)

  boolq = get_task("super_glue_boolq_v102").score([rec(ex("True"), "True"), rec(ex("False"), "True")])
  assert boolq == {"accuracy": 50.0}
  cb = get_task("super_glue_cb_v102").score([rec(ex("entailment"), "entailment"), rec(ex("neutral"), "neutral")])
  assert cb == {"macro_f1": pytest.approx(200 / 3), "accuracy": 100.0}  # contradiction counts, with F1 0
  axb = get_task("super_glue_axb_v102").score(
    [
      rec(ex(t), p)
      for t, p in zip(
        ["entailment", "entailment", "not_entailment", "not_entailment"],
        ["entailment", "not_entailment", "not_entailment", "not_entailment"],
      )
    ]
  )
  # tp 1, fn 1, fp 0, tn 2: (1*2 - 0*1) / sqrt(1 * 2 * 3 * 2) = 2 / sqrt(12).
  assert axb == {"matthews_corrcoef": pytest.approx(200 / 12**0.5), "accuracy": 75.0}
  # Two different invalid strings are one class (T5's -1): targets (0, 0, 1, 1), predictions (0, -1, 1, -1).
  # n=4, correct 2; target counts {0: 2, 1: 2}, prediction counts {0: 1, 1: 1, -1: 2}:
  # (2*4 - (2*1 + 2*1)) / sqrt((16 - 6) * (16 - 8)) = 4 / sqrt(80). (Two classes of their own: 4 / sqrt(96).)
  axb = get_task("super_glue_axb_v102").score(
    [
      rec(ex(t), p)
      for t, p in zip(
        ["entailment", "entailment", "not_entailment", "not_entailment"],
        ["entailment", "junk", "not_entailment", "entail"],
      )
    ]
  )
  assert axb == {"matthews_corrcoef": pytest.approx(400 / 80**0.5), "accuracy": 50.0}
  axg_records = [
    rec(ex("entailment", idx=0, hypothesis="h0"), "entailment"),
    rec(ex("entailment", idx=1, hypothesis="h0"), "entailment"),
    rec(ex("not_entailment", idx=2, hypothesis="h1"), "entailment"),
    rec(ex("not_entailment", idx=3, hypothesis="h1"), "not_entailment"),
  ]
  assert get_task("super_glue_axg_v102").score(axg_records) == {"accuracy": 75.0, "gender_parity": 50.0}


def test_multirc_score_groups_answers_by_question():
  task = get_task("super_glue_multirc_v102")
  raw = {"paragraph": "P", "question": "Q", "answer": "A", "label": 1}
  examples = [
    task.format_fn(dict(raw, idx={"paragraph": p, "question": q, "answer": a}, label=label))
    for p, q, a, label in [(0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 1), (1, 0, 0, 0)]
  ]
  out = task.score([rec(e, p) for e, p in zip(examples, ["True", "True", "True", "False"])])
  # Questions (0,0) wrong, (0,1) and (1,0) right: EM 2/3. F1a: tp 2, fp 1, fn 0 -> 0.8.
  assert out == {"f1a": pytest.approx(80.0), "exact_match": pytest.approx(200 / 3)}


def test_record_score_max_over_answers_once_per_query():
  task = get_task("super_glue_record_v102")
  first = task.format_fn(RECORD)  # two copies of query 9 (one per answer)
  other = task.format_fn(dict(RECORD, answers=["Paris"], idx={"passage": 3, "query": 10}))
  out = task.score([rec(first[0], "Pigeon"), rec(first[1], "potato"), rec(other[0], "London")])
  assert out == {"f1": 50.0, "em": 50.0}  # query 9 scored once, on its first record


def test_wsc_simple_score_checks_the_referent():
  task = get_task("super_glue_wsc_v102_simple_eval")
  records = [
    rec({"targets": "Tom", "label": 1}, "tom"),  # right
    rec({"targets": "the fuzzy bunny", "label": 1}, "bunny"),  # subset: right
    rec({"targets": "Bob's hat", "label": 1}, "Bob"),  # possessive mismatch: wrong
    rec({"targets": "Tom", "label": 0}, "Mitchell"),
  ]  # not the (wrong) candidate: right
  assert task.score(records) == {"accuracy": 75.0}
  # T5 scores an empty or determiner-only prediction -1: wrong for either label, never a correct "no match".
  records = [
    rec({"targets": "Tom", "label": 0}, ""),
    rec({"targets": "Tom", "label": 0}, "The"),
    rec({"targets": "the dog", "label": 1}, " this "),
    rec({"targets": "Tom", "label": 0}, "Mitchell"),
  ]  # right, as above
  assert task.score(records) == {"accuracy": 25.0}
  assert [super_glue.wsc_simple_class(p, "the dog") for p in ("", "a", "dog", "cat")] == [-1, -1, 1, 0]


# ---------------------------------------------------------------- leaderboard rows


def test_leaderboard_rows_by_hand():
  rows = super_glue.leaderboard_rows(
    "super_glue_boolq_v102", [rec({"idx": 0}, "True"), rec({"idx": 1}, "False"), rec({"idx": 2}, "junk")]
  )
  assert rows == [{"idx": 0, "label": "true"}, {"idx": 1, "label": "false"}, {"idx": 2, "label": "false"}]
  assert super_glue.leaderboard_rows("super_glue_copa_v102_taskless", [rec({"idx": 4}, "choice2")]) == [
    {"idx": 4, "label": 1}
  ]
  assert super_glue.leaderboard_rows("super_glue_cb_v102", [rec({"idx": 4}, "neutral")]) == [
    {"idx": 4, "label": "neutral"}
  ]
  assert super_glue.leaderboard_rows("super_glue_wsc_fixed_v102", [rec({"idx": 4}, "True")]) == [
    {"idx": 4, "label": "True"}
  ]
  assert super_glue.leaderboard_rows(
    "super_glue_wsc_v102_simple_eval",
    [rec({"idx": 1, "targets": "Tom"}, "Tom"), rec({"idx": 2, "targets": "Tom"}, "Ann")],
  ) == [{"idx": 1, "label": "True"}, {"idx": 2, "label": "False"}]
  record_rows = super_glue.leaderboard_rows(
    "super_glue_record_v102",
    [
      rec({"idx": {"passage": 0, "query": 7}}, "penguin"),
      rec({"idx": {"passage": 0, "query": 7}}, "x"),
      rec({"idx": {"passage": 1, "query": 8}}, "Paris"),
    ],
  )
  assert record_rows == [{"idx": 7, "label": "penguin"}, {"idx": 8, "label": "Paris"}]

  def mrc(p, q, a):
    return {"idx": {"paragraph": p, "question": q, "answer": a}}

  multirc_rows = super_glue.leaderboard_rows(
    "super_glue_multirc_v102",
    [rec(mrc(0, 0, 0), "True"), rec(mrc(0, 0, 1), "False"), rec(mrc(0, 1, 0), "True"), rec(mrc(1, 2, 0), "x")],
  )
  assert multirc_rows == [
    {
      "idx": 0,
      "passage": {
        "questions": [
          {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0}]},
          {"idx": 1, "answers": [{"idx": 0, "label": 1}]},
        ]
      },
    },
    {"idx": 1, "passage": {"questions": [{"idx": 2, "answers": [{"idx": 0, "label": 0}]}]}},
  ]
  with pytest.raises(KeyError, match="no SuperGLUE leaderboard file"):
    super_glue.leaderboard_rows("super_glue_wsc_v102_simple_train", [])
  assert super_glue.LEADERBOARD_FILES["super_glue_axb_v102"] == "AX-b.jsonl"
  assert super_glue.LEADERBOARD_FILES["super_glue_record_v102_taskless"] == "ReCoRD.jsonl"


def test_leaderboard_writers_are_registered_and_found_by_inference(tmp_path):
  from prompt_tuning.data.task import get_leaderboard
  from prompt_tuning.runs import infer as inference

  assert {n for n in super_glue.TASK_NAMES if get_leaderboard(n)} == set(super_glue.LEADERBOARD_FILES)
  mixture = get_task("super_glue_v102_proportional")  # every member has a file but simple WSC train
  assert inference.leaderboard_members(mixture) == [
    t.name for t in mixture.tasks if t.name in super_glue.LEADERBOARD_FILES
  ]
  records = [{"example": {"idx": i, "task": "super_glue_rte_v102"}, "prediction": "not_entailment"} for i in (3, 4)]
  records.append({"example": {"idx": 0, "task": "super_glue_boolq_v102"}, "prediction": "True"})
  written = inference.write_leaderboards(mixture, records, str(tmp_path))
  assert sorted(os.path.basename(p) for p in written) == ["BoolQ.jsonl", "RTE.jsonl"]
  assert [json.loads(line) for line in open(tmp_path / "RTE.jsonl")] == [
    {"idx": 3, "label": "not_entailment"},
    {"idx": 4, "label": "not_entailment"},
  ]
  with pytest.raises(ValueError, match="task super_glue_wsc_v102_simple_train has no SuperGLUE leaderboard format"):
    inference.leaderboard_members(get_task("super_glue_wsc_v102_simple_train"))


# ---------------------------------------------------------------- under tfds mock data


@pytest.mark.parametrize("name", super_glue.TASK_NAMES)
def test_every_task_yields_batches(name, mock_tfds):
  task = get_task(name)
  for split in task.splits:
    batches = list(BatchIterator(task, split, LENGTHS, 4, shuffle=False, seed=0, repeat=False, drop_remainder=False))
    assert batches, (name, split)
    assert batches[0].arrays["encoder_input_tokens"].shape == (4, 64)
    assert all(ex["inputs"] and ex["targets"] for b in batches for ex in b.text["examples"] if ex)


@pytest.mark.parametrize("suffix", ["", "_taskless"])
def test_mixture_yields_batches(suffix, mock_tfds):
  mixture = get_task(f"super_glue_v102_proportional{suffix}")
  batch = next(
    iter(BatchIterator(mixture, "train", LENGTHS, 8, shuffle=True, seed=1, repeat=True, drop_remainder=True))
  )
  assert batch.arrays["mask"].sum() == 8
  validation = list(mixture.examples("validation"))
  assert {ex["task"] for ex in validation} == {
    n + suffix for n in mixtures.SUPER_GLUE_TRAINING_TASKS if not n.endswith("_simple_train")
  }


def test_taskless_variants_under_mock_data(mock_tfds):
  for name in super_glue.TASK_NAMES:
    if name.endswith("_taskless"):
      continue
    task, taskless = get_task(name), get_task(name + "_taskless")
    split = task.splits[0]
    full, bare = list(task.examples(split)), list(taskless.examples(split))
    assert [re.sub(r"^[^ ]* ", "", e["inputs"], count=1) for e in full] == [e["inputs"] for e in bare]
    prefix = full[0]["inputs"].split(" ")[0]
    assert prefix in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "wsc:"), prefix
    assert [e["targets"] for e in full] == [e["targets"] for e in bare]


def test_record_examples_under_mock_data(mock_tfds):
  task = get_task("super_glue_record_v102")
  train, validation = list(task.examples("train")), list(task.examples("validation"))
  assert len(validation) == 4  # one per query
  assert len(train) == sum(max(len(e["answers"]), 1) for e in validation)  # one per answer
  for ex in train + validation:
    assert ex["candidates"] and len(set(ex["candidates"])) == len(ex["candidates"])
    assert ex["inputs"].startswith("record query: ")


def _check_rows(name: str, rows: list, examples: list):
  kind = name.replace("_taskless", "")
  if kind == "super_glue_multirc_v102":
    assert sum(len(q["answers"]) for r in rows for q in r["passage"]["questions"]) == len(examples)
    for row in rows:
      assert set(row) == {"idx", "passage"} and isinstance(row["idx"], int)
      for q in row["passage"]["questions"]:
        assert isinstance(q["idx"], int) and all(a["label"] in (0, 1) for a in q["answers"])
    return
  assert len(rows) == len(examples) and all(set(r) == {"idx", "label"} and isinstance(r["idx"], int) for r in rows)
  labels = {r["label"] for r in rows}
  allowed = {
    "super_glue_boolq_v102": {"true", "false"},
    "super_glue_wic_v102": {"true", "false"},
    "super_glue_copa_v102": {0, 1},
    "super_glue_wsc_fixed_v102": {"True", "False"},
    "super_glue_wsc_v102_simple_eval": {"True", "False"},
    "super_glue_cb_v102": {"entailment", "contradiction", "neutral"},
  }.get(kind, {"entailment", "not_entailment"})
  if kind == "super_glue_record_v102":
    assert all(r["label"] in e["candidates"] for r, e in zip(rows, examples))
  else:
    assert labels <= allowed, (name, labels)


def test_leaderboard_files_for_mocked_test_splits(mock_tfds, tmp_path):
  for name, filename in super_glue.LEADERBOARD_FILES.items():
    task = get_task(name)
    examples = list(task.examples("test"))
    records = [rec(e, (e.get("candidates") or task.candidates or [e["targets"]])[0]) for e in examples]
    path = super_glue.write_leaderboard_file(name, records, str(tmp_path / name))
    assert os.path.basename(path) == filename
    with open(path) as f:
      rows = [json.loads(line) for line in f]
    _check_rows(name, rows, examples)


# ---------------------------------------------------------------- no TensorFlow needed to list tasks


def test_tasks_register_without_tensorflow():
  script = textwrap.dedent("""
      import sys
      for name in ("tensorflow", "tensorflow_datasets", "seqio"):
        sys.modules[name] = None  # importing them now raises ImportError
      from prompt_tuning.data.task import get_task
      from prompt_tuning.tasks import mixtures, super_glue
      task = get_task("super_glue_rte_v102_taskless")
      ex = task.format_fn({"premise": "p", "hypothesis": "h", "idx": 0, "label": 0})
      assert ex["inputs"] == "hypothesis: h premise: p", ex
      assert get_task("super_glue_v102_proportional").splits == ["train", "validation", "test"]
      loaded = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_datasets", "seqio")
                and sys.modules[m] is not None]
      assert not loaded, loaded
      print(len(super_glue.TASK_NAMES))
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == str(len(super_glue.TASK_NAMES))
