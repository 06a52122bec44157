"""SQuAD -> MRQA out-of-domain zero-shot QA tasks, in T5's SQuAD format.

The prompt-tuning paper's domain-shift experiment (Lester et al. 2021, Sec. 6;
the reference repo's prompt_tuning/data/qa.py) trains a prompt on SQuAD and
evaluates it, unchanged, on the out-of-domain dev sets of the MRQA 2019 shared
task. Here every split comes from tfds `mrqa` (1.0.0):

  mrqa_squad_v100                     mrqa/squad       train, validation
  mrqa_<subset>_v100 (validation)     mrqa/<subset>    the MRQA dev file, which
                                                       tfds calls "test"
  subsets: bio_asq, drop, duo_rc, race, relation_extraction, textbook_qa
  (the reference's mrqa_{bioasq,drop,duorc,race,relation_extraction,textbookqa}_v001)

tfds `mrqa` also has the in-domain training sets (news_qa, trivia_qa,
search_qa, hotpot_qa, natural_questions); they are not registered here.

Format (t5.data.preprocessors.squad, which the reference's MRQA preprocessor
mirrors): question, context and every answer get spaces around each ASCII
punctuation character and runs of whitespace squeezed to one space (RE2's
[[:punct:]] and \\s, which are ASCII-only), then

  inputs  = "question: <question> context: <context>"
  targets = <first answer>
  answers = [<all gold answers>]

Scoring: SQuAD EM and F1 of the prediction against all gold answers (max over
answers, SQuAD normalization), as t5.evaluation.metrics.squad.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data.task import Example, register_task
from prompt_tuning.data.tfds_task import TfdsTask

TFDS_VERSION = "1.0.0"
TRAIN_SUBSET = "squad"
OUT_OF_DOMAIN_SUBSETS = ("bio_asq", "drop", "duo_rc", "race", "relation_extraction", "textbook_qa")

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # RE2 [[:punct:]]
_WHITESPACE = re.compile(r"[\t\n\f\r ]+")  # RE2 \s


def task_name(subset: str) -> str:
  return f"mrqa_{subset}_v100"


def pad_punctuation(text: str) -> str:
  """T5's _pad_punctuation: a space either side of each punctuation mark, whitespace squeezed."""
  return _WHITESPACE.sub(" ", _PUNCTUATION.sub(r" \1 ", text))


def _answers(record: Mapping[str, Any]) -> list[str]:
  """The gold answers; the detected answer spans' text when a record lists none."""
  answers = list(record.get("answers") or [])
  if not answers:
    detected = record.get("detected_answers") or {}
    answers = list(detected.get("text", []) if isinstance(detected, Mapping) else [d["text"] for d in detected])
  return answers


def format_qa(record: Mapping[str, Any]) -> Example | None:
  """A raw tfds `mrqa` record -> a T5 SQuAD-style example (None: no gold answer to score against)."""
  answers = [pad_punctuation(a) for a in _answers(record)]
  if not answers:
    return None
  question, context = pad_punctuation(record["question"]), pad_punctuation(record["context"])
  inputs = _WHITESPACE.sub(" ", " ".join(["question:", question, "context:", context]))
  return {
    "inputs": inputs,
    "targets": answers[0],
    "idx": record["qid"],
    "answers": answers,
    "subset": record.get("subset", ""),
  }


def score_qa(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """SQuAD {'em', 'f1'} (percent) of predictions against every example's gold `answers`."""
  return metrics_lib.squad_em_f1([list(r["example"]["answers"]) for r in records], [r["prediction"] for r in records])


def _qa_task(subset: str, splits: Mapping[str, str]) -> TfdsTask:
  return TfdsTask(
    task_name(subset), f"mrqa/{subset}:{TFDS_VERSION}", splits, format_qa, score_qa, metric_names=("em", "f1")
  )


TASKS: dict[str, TfdsTask] = {
  task_name(TRAIN_SUBSET): _qa_task(TRAIN_SUBSET, {"train": "train", "validation": "validation"})
}
TASKS.update({task_name(s): _qa_task(s, {"validation": "test"}) for s in OUT_OF_DOMAIN_SUBSETS})

for _task in TASKS.values():
  register_task(_task)
