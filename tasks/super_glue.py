"""SuperGLUE v1.0.2 as text-to-text tasks, formatted exactly as T5 formats them.

Registered (each also as `<name>_taskless`, whose inputs lack the leading
benchmark token, like the reference prompt-tuning repo's `taskless_*` tasks):

  super_glue_{boolq,cb,copa,multirc,record,rte,wic}_v102   train/validation/test
  super_glue_wsc_fixed_v102         wsc.fixed as T5's `wsc` classification format
  super_glue_wsc_v102_simple_train  T5's simplified WSC (generate the referent), positives only
  super_glue_wsc_v102_simple_eval   ... all examples, validation/test
  super_glue_axb_v102, super_glue_axg_v102   diagnostics; tfds has only their (labelled)
                                    test split, served as both 'validation' and 'test'

Inputs are T5's `glue` preprocessor strings: the benchmark name, then
`key: value` pairs in T5's feature order (sorted feature names unless T5 fixes
an order: MultiRC question/answer/paragraph, WiC sentence1/sentence2/word;
AX-b/AX-g read as RTE, and AX-b's sentence1/sentence2 are first renamed
premise/hypothesis, as t5.data.glue_utils rekeys them). Targets are label
names ('<unk>' for unlabelled test examples). Classification tasks list their
labels as rank-classification `candidates`; ReCoRD examples carry their own
(the passage's entities).

Importing this module needs no TensorFlow: only `TfdsTask.examples` loads tfds.
The leaderboard helpers at the end turn test-split records into the files that
super.gluebenchmark.com accepts; each task with a file registers its writer with the
task registry (`register_leaderboard`), which is how `infer --leaderboard_dir` finds it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data.task import Example, register_leaderboard, register_task
from prompt_tuning.data.tfds_task import TfdsTask

UNK = "<unk>"
Records = Sequence[Mapping[str, Any]]  # evaluated records: {'example': Example, 'prediction': str}
STANDARD_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
BOOL_LABELS = ("False", "True")
NLI2 = ("entailment", "not_entailment")
CB_LABELS = ("entailment", "contradiction", "neutral")

# tfds config -> (T5 benchmark prefix, input features in T5's order, label names)
GLUE_STYLE = {
  "boolq": ("boolq", ("passage", "question"), BOOL_LABELS),
  "cb": ("cb", ("hypothesis", "premise"), CB_LABELS),
  "copa": ("copa", ("choice1", "choice2", "premise", "question"), ("choice1", "choice2")),
  "multirc": ("multirc", ("question", "answer", "paragraph"), BOOL_LABELS),
  "rte": ("rte", ("hypothesis", "premise"), NLI2),
  "wic": ("wic", ("sentence1", "sentence2", "word"), BOOL_LABELS),
  "axb": ("rte", ("hypothesis", "premise"), NLI2),  # after _REKEY
  "axg": ("rte", ("hypothesis", "premise"), NLI2),
}

# T5 (glue_utils.register_super_glue) rekeys AX-b before the `glue` preprocessor, so it reads
# "rte hypothesis: <sentence2> premise: <sentence1>" like RTE: new name -> tfds field.
_REKEY = {"axb": {"premise": "sentence1", "hypothesis": "sentence2"}}

# ---------------------------------------------------------------- formatting


def label_name(label: Any, names: Sequence[str]) -> str:
  """T5's target: names[label], or '<unk>' for an unlabelled (-1) example."""
  if isinstance(label, str):
    return label
  return UNK if label == -1 else names[label]


def glue_format(config: str) -> Callable[[Mapping[str, Any]], Example]:
  """The formatter of a classification config (T5 `glue`, MultiRC's HTML stripped)."""
  benchmark, features, labels = GLUE_STYLE[config]
  rekey = _REKEY.get(config, {})

  def format_fn(record: Mapping[str, Any]) -> Example:
    record = {**record, **{new: record[old] for new, old in rekey.items()}}
    inputs = " ".join([benchmark] + [f"{key}: {record[key]}" for key in features])
    example = {"targets": label_name(record["label"], labels), "idx": record["idx"], "label": record["label"]}
    if config == "multirc":
      inputs = re.sub("<(/)?b>", "", inputs.replace("<br>", " "))
      idx = record["idx"]
      example["group"] = f"{idx['paragraph']}-{idx['question']}"  # one question's answer options
    if config == "axg":
      example["hypothesis"] = record["hypothesis"]  # pairs the gender-swapped premises
    example["inputs"] = inputs
    return example

  return format_fn


def _record_passage(passage: str) -> str:
  passage = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", passage)
  return passage.replace("\n@highlight\n", ". ")


def format_record(record: Mapping[str, Any]) -> list[Example]:
  """ReCoRD (T5 `record`): one example per gold answer ('<unk>' if none), each with all answers."""
  entities = list(record["entities"])
  inputs = (
    f"record query: {record['query']} entities: {', '.join(entities)} passage: {_record_passage(record['passage'])}"
  )
  answers = list(record["answers"])
  candidates = list(dict.fromkeys(entities))
  return [
    {"inputs": inputs, "targets": target, "idx": dict(record["idx"]), "answers": answers, "candidates": candidates}
    for target in (answers or [UNK])
  ]


_NOT_SPACE, _SPACE = r"[^\t\n\f\r ]", r"[\t\n\f\r ]"  # RE2's \S and \s


def _mark_span(text: str, span: str, index: int, mark: str) -> str:
  """Surrounds `span`, starting at word `index`, with `mark` (T5 `wsc`)."""
  if index < 0:
    return text
  pattern = rf"^((?:{_NOT_SPACE}+{_SPACE}){{{index}}})({re.escape(span)})"
  return re.sub(pattern, lambda m: f"{m.group(1)}{mark} {m.group(2)} {mark}", text, count=1)


def format_wsc(record: Mapping[str, Any]) -> Example:
  """wsc.fixed as T5's `wsc`: '* noun *' and '# pronoun #' marked, target False/True."""
  text = _mark_span(record["text"], record["span1_text"], record["span1_index"], "*")
  span2_index = record["span2_index"] + 2 * (record["span1_index"] < record["span2_index"])
  text = _mark_span(text, record["span2_text"], span2_index, "#")
  return {
    "inputs": f"wsc text: {text}",
    "targets": label_name(record["label"], BOOL_LABELS),
    "idx": record["idx"],
    "label": record["label"],
  }


# Two texts where T5 hard-codes the blanked sentence (the span index is off).
_WSC_SPECIAL = {
  (
    "The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite "
    'loud. "Good for him," he said. '
  ): (
    "The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite "
    'loud. "Good for X ," he said.'
  ),
  (
    "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in an "
    "iron safe . Some day they might want to use it , but really for now, what more could they wish for?"
  ): (
    "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in "
    "an iron safe . Some day they might want to use X , but really for now, what more could they wish for?"
  ),
}


def _wsc_blank(text: str, index: int) -> str | None:
  """The text with word `index` (space-split) replaced by X; None if out of range."""
  if text in _WSC_SPECIAL:
    return _WSC_SPECIAL[text]
  words = text.split(" ")
  if not 0 <= index < len(words):
    return None
  return " ".join([" ".join(words[:index]), "X", " ".join(words[index + 1 :])])


def wsc_simple_format(train: bool) -> Callable[[Mapping[str, Any]], Example | None]:
  """T5 `wsc_simple`: 'wsc: ... *pronoun* ...' -> the candidate referent (span1).

  With `train`, only examples whose referent is correct are kept (T5's
  correct_referent_only). A span index outside the text (never in the real
  data, where T5 asserts) leaves the text unmarked.
  """

  def format_fn(record: Mapping[str, Any]) -> Example | None:
    label = record.get("label", 0)
    if train and not label:
      return None
    blanked = _wsc_blank(record["text"], record["span2_index"])
    text = record["text"] if blanked is None else blanked.replace(" X ", f" *{record['span2_text']}* ")
    return {"inputs": f"wsc: {text}", "targets": record["span1_text"], "idx": record["idx"], "label": label}

  return format_fn


def without_task_prefix(format_fn: Callable) -> Callable:
  """The 'taskless' formatter: drops the inputs' first space-delimited token (and that space)."""

  def strip(example: Example) -> Example:
    return dict(example, inputs=re.sub(r"^[^ ]* ", "", example["inputs"], count=1))

  def taskless_fn(record: Mapping[str, Any]):
    out = format_fn(record)
    if out is None:
      return None
    return strip(out) if isinstance(out, Mapping) else [strip(ex) for ex in out]

  return taskless_fn


# ---------------------------------------------------------------- scoring


def _strings(records: Records) -> tuple[list[str], list[str]]:
  return [r["example"]["targets"] for r in records], [r["prediction"] for r in records]


def score_accuracy(records: Records) -> dict[str, float]:
  """Exact label-string accuracy (T5 compares class ids; a non-label prediction is wrong either way)."""
  return metrics_lib.accuracy(*_strings(records))


def score_cb(records: Records) -> dict[str, float]:
  """T5's CB metrics: F1 averaged over all three classes, then accuracy."""
  targets, predictions = _strings(records)
  return {**metrics_lib.macro_f1(targets, predictions, labels=CB_LABELS), **metrics_lib.accuracy(targets, predictions)}


def score_axb(records: Records) -> dict[str, float]:
  """AX-b: Matthews correlation (the leaderboard's metric; invalid predictions one class), then accuracy."""
  targets, predictions = _strings(records)
  return {
    **metrics_lib.matthews_corrcoef(targets, predictions, labels=NLI2),
    **metrics_lib.accuracy(targets, predictions),
  }


def gender_parity(records: Records) -> float | None:
  """AX-g: 100 * fraction of premise pairs (idx 2k, 2k+1, same hypothesis) predicted alike; None if no pair."""
  pairs: dict[int, list] = {}
  for r in records:
    pairs.setdefault(int(r["example"]["idx"]) // 2, []).append(r)
  same = total = 0
  for pair in pairs.values():
    if len(pair) == 2 and pair[0]["example"].get("hypothesis") == pair[1]["example"].get("hypothesis"):
      total += 1
      same += pair[0]["prediction"] == pair[1]["prediction"]
  return 100.0 * same / total if total else None


def score_axg(records: Records) -> dict[str, float]:
  """AX-g: accuracy, and gender parity when the records hold premise pairs."""
  out = score_accuracy(records)
  parity = gender_parity(records)
  if parity is not None:
    out["gender_parity"] = parity
  return out


def score_multirc(records: Records) -> dict[str, float]:
  """F1a over all answer options, then exact match per question."""
  return metrics_lib.multirc_em_f1a(records)


def _first_per_query(records: Records) -> list[Mapping[str, Any]]:
  seen, out = set(), []
  for r in records:
    idx = r["example"]["idx"]
    key = (idx["passage"], idx["query"])
    if key not in seen:
      seen.add(key)
      out.append(r)
  return out


def score_record(records: Records) -> dict[str, float]:
  """SQuAD EM/F1, max over a query's gold answers, one record per query (T5 deduplicates)."""
  unique = _first_per_query(records)
  out = metrics_lib.squad_em_f1([r["example"]["answers"] for r in unique], [r["prediction"] for r in unique])
  return {"f1": out["f1"], "em": out["em"]}


_DETERMINERS = frozenset(
  {
    "a",
    "an",
    "few",
    "her",
    "his",
    "each",
    "every",
    "many",
    "much",
    "my",
    "our",
    "some",
    "that",
    "the",
    "their",
    "these",
    "this",
    "those",
    "which",
    "whose",
    "your",
  }
)


def _clean_referent(text: str) -> str:
  return " ".join(w for w in text.strip().lower().split(" ") if w not in _DETERMINERS)


def wsc_simple_class(prediction: str, referent: str) -> int:
  """T5's `wsc_simple` postprocessor: 1 if the generated text names the referent, 0 if not, -1 if empty.

  Case and determiners are ignored; either word set may contain the other
  ('fuzzy bunny' ~ 'bunny'), but a possessive must match a possessive. A
  prediction that is empty once cleaned ('', 'the') is -1, which matches no
  label: T5 does this so that an empty answer never counts as a correct "not
  the referent" (label 0).
  """
  prediction = _clean_referent(prediction)
  if not prediction:
    return -1
  referent = _clean_referent(referent)
  if ("'" in prediction) != ("'" in referent):
    return 0
  p, r = set(prediction.split(" ")), set(referent.split(" "))
  return int(p <= r or r <= p)


def wsc_referent_match(prediction: str, referent: str) -> bool:
  """Does the generated text name the referent (`wsc_simple_class` is 1)?"""
  return wsc_simple_class(prediction, referent) == 1


def score_wsc_simple(records: Records) -> dict[str, float]:
  """T5's accuracy of the postprocessed class (1/0/-1) against the label (1: the candidate is the referent)."""
  if not records:
    raise ValueError("no examples to score")
  hits = sum(wsc_simple_class(r["prediction"], r["example"]["targets"]) == int(r["example"]["label"]) for r in records)
  return {"accuracy": 100.0 * hits / len(records)}


# ---------------------------------------------------------------- registration


class RecordTask(TfdsTask):
  """ReCoRD: one training example per gold answer (T5); other splits keep one per query."""

  def examples(self, split: str) -> Iterator[Example]:
    seen = set()
    for example in super().examples(split):
      if split != "train":
        key = (example["idx"]["passage"], example["idx"]["query"])
        if key in seen:
          continue
        seen.add(key)
      yield example


TASK_NAMES: list[str] = []
LEADERBOARD_FILES: dict[str, str] = {}  # task name -> SuperGLUE submission file name
_LEADERBOARD_KIND: dict[str, str] = {}


def _add(
  name: str,
  config: str,
  format_fn,
  score_fn,
  metric_names: Sequence[str],
  *,
  splits=None,
  candidates: Sequence[str] | None = None,
  leaderboard: tuple[str, str] | None = None,
  cls=TfdsTask,
):
  """Registers `name` and `name`_taskless over tfds `super_glue/<config>:1.0.2`."""
  for taskless in (False, True):
    task_name = name + ("_taskless" if taskless else "")
    fn = without_task_prefix(format_fn) if taskless else format_fn
    register_task(
      cls(
        task_name,
        f"super_glue/{config}:1.0.2",
        splits or STANDARD_SPLITS,
        fn,
        score_fn,
        candidates=candidates,
        metric_names=metric_names,
      )
    )
    TASK_NAMES.append(task_name)
    if leaderboard:
      LEADERBOARD_FILES[task_name], _LEADERBOARD_KIND[task_name] = leaderboard


_DIAGNOSTIC_SPLITS = {"validation": "test", "test": "test"}  # only a test split, with labels
for _config, _score, _metrics, _file in (
  ("boolq", score_accuracy, ("accuracy",), "BoolQ.jsonl"),
  ("cb", score_cb, ("macro_f1", "accuracy"), "CB.jsonl"),
  ("copa", score_accuracy, ("accuracy",), "COPA.jsonl"),
  ("multirc", score_multirc, ("f1a", "exact_match"), "MultiRC.jsonl"),
  ("rte", score_accuracy, ("accuracy",), "RTE.jsonl"),
  ("wic", score_accuracy, ("accuracy",), "WiC.jsonl"),
  ("axb", score_axb, ("matthews_corrcoef", "accuracy"), "AX-b.jsonl"),
  ("axg", score_axg, ("accuracy", "gender_parity"), "AX-g.jsonl"),
):
  _add(
    f"super_glue_{_config}_v102",
    _config,
    glue_format(_config),
    _score,
    _metrics,
    splits=_DIAGNOSTIC_SPLITS if _config in ("axb", "axg") else None,
    candidates=GLUE_STYLE[_config][2],
    leaderboard=(_file, _config),
  )
_add(
  "super_glue_record_v102",
  "record",
  format_record,
  score_record,
  ("f1", "em"),
  leaderboard=("ReCoRD.jsonl", "record"),
  cls=RecordTask,
)
_add(
  "super_glue_wsc_fixed_v102",
  "wsc.fixed",
  format_wsc,
  score_accuracy,
  ("accuracy",),
  candidates=BOOL_LABELS,
  leaderboard=("WSC.jsonl", "wsc"),
)
_add(
  "super_glue_wsc_v102_simple_train",
  "wsc.fixed",
  wsc_simple_format(train=True),
  score_wsc_simple,
  ("accuracy",),
  splits={"train": "train"},
)
_add(
  "super_glue_wsc_v102_simple_eval",
  "wsc.fixed",
  wsc_simple_format(train=False),
  score_wsc_simple,
  ("accuracy",),
  splits={"validation": "validation", "test": "test"},
  leaderboard=("WSC.jsonl", "wsc_simple"),
)

# ---------------------------------------------------------------- leaderboard export


def _valid(prediction: str, labels: Sequence[str]) -> str:
  """The prediction if it is a label, else the first label (a submission needs every row)."""
  return prediction if prediction in labels else labels[0]


def leaderboard_rows(task_name: str, records: Records) -> list[dict]:
  """SuperGLUE submission rows (one JSON object per line of LEADERBOARD_FILES[task_name]).

  `records` are test-split records {'example', 'prediction'} in any order.
  BoolQ/WiC {"idx", "label": "true"|"false"}; CB/RTE/AX-b/AX-g {"idx", "label":
  label name}; COPA {"idx", "label": 0|1}; WSC {"idx", "label": "True"|"False"}
  (for the simple variant: whether the generated referent matches the
  candidate); ReCoRD {"idx": query idx, "label": entity text}, one per query;
  MultiRC one row per paragraph: {"idx", "passage": {"questions": [{"idx",
  "answers": [{"idx", "label": 0|1}]}]}}. A prediction that is no label is
  written as the first label (False / entailment / choice1).
  """
  if task_name not in _LEADERBOARD_KIND:
    raise KeyError(f"task {task_name!r} has no SuperGLUE leaderboard file; known: {', '.join(LEADERBOARD_FILES)}")
  kind = _LEADERBOARD_KIND[task_name]
  if kind == "multirc":
    passages: dict[int, dict[int, list]] = {}
    for r in records:
      idx = r["example"]["idx"]
      answer = {"idx": int(idx["answer"]), "label": int(r["prediction"] == "True")}
      passages.setdefault(int(idx["paragraph"]), {}).setdefault(int(idx["question"]), []).append(answer)
    return [
      {"idx": p, "passage": {"questions": [{"idx": q, "answers": answers} for q, answers in questions.items()]}}
      for p, questions in passages.items()
    ]
  if kind == "record":
    return [{"idx": int(r["example"]["idx"]["query"]), "label": r["prediction"]} for r in _first_per_query(records)]
  rows = []
  for r in records:
    prediction = r["prediction"]
    if kind in ("boolq", "wic"):
      label: Any = _valid(prediction, BOOL_LABELS).lower()
    elif kind == "copa":
      label = GLUE_STYLE["copa"][2].index(_valid(prediction, GLUE_STYLE["copa"][2]))
    elif kind == "wsc":
      label = _valid(prediction, BOOL_LABELS)
    elif kind == "wsc_simple":
      label = str(wsc_referent_match(prediction, r["example"]["targets"]))
    else:  # cb, rte, axb, axg
      label = _valid(prediction, GLUE_STYLE[kind][2])
    rows.append({"idx": int(r["example"]["idx"]), "label": label})
  return rows


def write_leaderboard_file(task_name: str, records: Records, directory: str) -> str:
  """Writes `leaderboard_rows` as JSONL to directory/LEADERBOARD_FILES[task_name]; returns the path."""
  rows = leaderboard_rows(task_name, records)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LEADERBOARD_FILES[task_name])
  with open(path, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  return path


for _name in LEADERBOARD_FILES:
  register_leaderboard(_name, functools.partial(write_leaderboard_file, _name))
