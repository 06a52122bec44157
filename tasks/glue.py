"""GLUE as text-to-text tasks, formatted and scored the way T5 does it.

Formats (t5.data.preprocessors.glue / stsb, chosen by t5.data.glue_utils):

  inputs  = "<benchmark> <feature1>: <text1> <feature2>: <text2>"
  targets = label_classes[label]   ("<unk>" for the label -1 of test splits)

Features are the record's fields except label/idx, sorted by name, so MNLI
reads "mnli hypothesis: ... premise: ..." and QNLI "qnli question: ...
sentence: ...". The benchmark word is the config name, except that
mnli_matched, mnli_mismatched and ax all read "mnli". STS-B rounds the
similarity to the nearest 0.2 (float32, half to even, as tf.round) and
writes it with one decimal ("3.8").

Scoring follows t5.data.glue_utils: predictions outside the label set count
as wrong (string_label_to_class_id -> -1); MRPC/QQP report F1 (positive class
= label 1; an invalid prediction counts as the opposite of its target, as
f1_score_with_invalid) and accuracy; CoLA Matthews correlation (all invalid
predictions one class, T5's -1); STS-B parses floats (unparseable -> -1.0, as
string_to_float) for Pearson and Spearman.

Registered names (data: tfds glue/<config>:2.0.0, which differs from T5's
1.0.0 only in QQP's download source):

  glue_<config>_v002             T5's format; splits as tfds (mnli: train,
                                 validation_matched, validation_mismatched,
                                 test_matched, test_mismatched; ax: test)
  glue_<config>_v002_taskless    the same without the benchmark word, as the
                                 reference prompt-tuning repo's taskless_ tasks
  glue_mrpc_from_qqp_v002[_taskless], glue_qqp_from_mrpc_v002[_taskless]:
                                 zero-shot QQP <-> MRPC transfer, see below.

Rank-classification candidates are the label strings (none for STS-B).

QQP <-> MRPC transfer (the reference repo's prompt_tuning/data/glue_transfer.py,
`glue_{target}_from_{source}_v002`): a prompt trained on the source task is
evaluated on the target task's validation split. Inputs keep the target
task's own T5 format (as the reference does); the label spaces are tied by
class index:

  QQP  0 not_duplicate  <->  MRPC 0 not_equivalent
  QQP  1 duplicate      <->  MRPC 1 equivalent

Targets and candidates are in the source task's label words (what the prompt
was trained to emit), the target task's own label is kept as `native_target`,
and scoring first rewrites a prediction into the target's words the way the
reference postprocessor does (substring replace "duplicate" -> "equivalent",
or back) and then applies the target task's metrics (F1 + accuracy).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data.task import Example, register_task
from prompt_tuning.data.tfds_task import TfdsTask

TFDS_VERSION = "2.0.0"
UNK = "<unk>"
TASKLESS_SUFFIX = "_taskless"
Record = Mapping[str, Any]
Scored = Sequence[Mapping[str, Any]]

_SPLITS = ("train", "validation", "test")
_MNLI_SPLITS = ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
_NLI3 = ("entailment", "neutral", "contradiction")

# config: (benchmark word, label classes (None: regression), splits, metric kind)
GLUE_CONFIGS: dict[str, tuple[str, tuple[str, ...] | None, tuple[str, ...], str]] = {
  "cola": ("cola", ("unacceptable", "acceptable"), _SPLITS, "matthews"),
  "sst2": ("sst2", ("negative", "positive"), _SPLITS, "accuracy"),
  "mrpc": ("mrpc", ("not_equivalent", "equivalent"), _SPLITS, "f1_accuracy"),
  "qqp": ("qqp", ("not_duplicate", "duplicate"), _SPLITS, "f1_accuracy"),
  "stsb": ("stsb", None, _SPLITS, "correlation"),
  "mnli": ("mnli", _NLI3, _MNLI_SPLITS, "accuracy"),
  "mnli_matched": ("mnli", _NLI3, ("validation", "test"), "accuracy"),
  "mnli_mismatched": ("mnli", _NLI3, ("validation", "test"), "accuracy"),
  "qnli": ("qnli", ("entailment", "not_entailment"), _SPLITS, "accuracy"),
  "rte": ("rte", ("entailment", "not_entailment"), _SPLITS, "accuracy"),
  "wnli": ("wnli", ("not_entailment", "entailment"), _SPLITS, "accuracy"),
  "ax": ("mnli", _NLI3, ("test",), "none"),  # diagnostics: unlabeled test set only
}

_METRIC_NAMES = {
  "accuracy": ("accuracy",),
  "f1_accuracy": ("f1", "accuracy"),
  "matthews": ("matthews_corrcoef",),
  "correlation": ("pearson_corrcoef", "spearman_corrcoef"),
  "none": (),
}


def task_name(config: str, taskless: bool = False) -> str:
  return f"glue_{config}_v002" + (TASKLESS_SUFFIX if taskless else "")


def transfer_task_name(source: str, target: str, taskless: bool = False) -> str:
  return f"glue_{target}_from_{source}_v002" + (TASKLESS_SUFFIX if taskless else "")


# ---------------------------------------------------------------- formatting


def label_name(label: int, labels: Sequence[str]) -> str:
  """labels[label]; "<unk>" for -1 (unlabeled test examples)."""
  return UNK if label == -1 else labels[label]


def stsb_target(label: float) -> str:
  """T5's STS-B target: round(label * 5) / 5 in float32 (half to even), one decimal."""
  value = np.rint(np.float32(label) * np.float32(5)) / np.float32(5)
  return "%.1f" % float(value)


def glue_inputs(record: Record, benchmark: str | None) -> str:
  """`benchmark key1: text1 key2: text2` over the sorted non-label/idx fields (no benchmark: taskless)."""
  parts = [] if benchmark is None else [benchmark]
  for key in sorted(k for k in record if k not in ("label", "idx")):
    parts += [f"{key}:", record[key]]
  return " ".join(parts)


def format_glue(record: Record, *, benchmark: str, labels: Sequence[str] | None, taskless: bool = False) -> Example:
  """A raw tfds GLUE record -> {'inputs', 'targets', 'idx'} in T5's format."""
  inputs = glue_inputs(record, None if taskless else benchmark)
  targets = stsb_target(record["label"]) if labels is None else label_name(record["label"], labels)
  return {"inputs": inputs, "targets": targets, "idx": record["idx"]}


# ---------------------------------------------------------------- scoring


def _split(records: Scored, target_key: str = "targets") -> tuple[list[str], list[str]]:
  return [r["example"][target_key] for r in records], [r["prediction"] for r in records]


def classification_scores(
  targets: Sequence[str], predictions: Sequence[str], labels: Sequence[str], kind: str
) -> dict[str, float]:
  """T5's GLUE metrics for a classification task of metric `kind` (see GLUE_CONFIGS)."""
  if kind == "none":
    return {}
  if kind == "accuracy":
    return metrics_lib.accuracy(targets, predictions)
  if kind == "f1_accuracy":
    negative, positive = labels  # invalid predictions: wrong either way (T5's f1_score_with_invalid)
    return {
      **metrics_lib.f1(targets, predictions, positive=positive, negative=negative),
      **metrics_lib.accuracy(targets, predictions),
    }
  if kind == "matthews":
    return metrics_lib.matthews_corrcoef(targets, predictions, labels=labels)
  raise ValueError(f"unknown GLUE metric kind {kind!r}")


def score_classification(records: Scored, *, labels: Sequence[str], kind: str) -> dict[str, float]:
  return classification_scores(*_split(records), labels, kind)


def score_stsb(records: Scored) -> dict[str, float]:
  """Pearson and Spearman correlation (x100); unparseable predictions count as -1.0 (T5's string_to_float)."""
  targets, predictions = _split(records)
  return {**metrics_lib.pearson_corrcoef(targets, predictions), **metrics_lib.spearman_corrcoef(targets, predictions)}


# ---------------------------------------------------------------- QQP <-> MRPC transfer

# The word the reference postprocessors rewrite (qqp_to_mrpc / mrpc_to_qqp) in each task's labels.
TRANSFER_WORDS = {"qqp": "duplicate", "mrpc": "equivalent"}
TRANSFER_PAIRS = (("qqp", "mrpc"), ("mrpc", "qqp"))


def translate_label(text: str, source: str, target: str) -> str:
  """A prediction in `source`'s label words -> `target`'s (the reference's substring replace)."""
  return text.replace(TRANSFER_WORDS[source], TRANSFER_WORDS[target])


def format_transfer(record: Record, *, source: str, target: str, taskless: bool = False) -> Example:
  """A `target` record in `target`'s format, with targets in `source`'s label words (same class index)."""
  benchmark, labels = GLUE_CONFIGS[target][:2]
  example = format_glue(record, benchmark=benchmark, labels=labels, taskless=taskless)
  example["native_target"] = example["targets"]
  example["targets"] = label_name(record["label"], GLUE_CONFIGS[source][1])
  return example


def score_transfer(records: Scored, *, source: str, target: str) -> dict[str, float]:
  """`target`'s metrics after rewriting predictions from `source`'s label words into `target`'s."""
  native, predictions = _split(records, "native_target")
  predictions = [translate_label(p, source, target) for p in predictions]
  _, labels, _, kind = GLUE_CONFIGS[target]
  return classification_scores(native, predictions, labels, kind)


# ---------------------------------------------------------------- registration


def _glue_task(config: str, taskless: bool) -> TfdsTask:
  benchmark, labels, splits, kind = GLUE_CONFIGS[config]
  score_fn: Callable[[Scored], dict] = (
    score_stsb if labels is None else functools.partial(score_classification, labels=labels, kind=kind)
  )
  return TfdsTask(
    task_name(config, taskless),
    f"glue/{config}:{TFDS_VERSION}",
    {s: s for s in splits},
    functools.partial(format_glue, benchmark=benchmark, labels=labels, taskless=taskless),
    score_fn,
    candidates=labels,
    metric_names=_METRIC_NAMES[kind],
  )


def _transfer_task(source: str, target: str, taskless: bool) -> TfdsTask:
  return TfdsTask(
    transfer_task_name(source, target, taskless),
    f"glue/{target}:{TFDS_VERSION}",
    {"validation": "validation"},
    functools.partial(format_transfer, source=source, target=target, taskless=taskless),
    functools.partial(score_transfer, source=source, target=target),
    candidates=GLUE_CONFIGS[source][1],
    metric_names=_METRIC_NAMES[GLUE_CONFIGS[target][3]],
  )


def _build_tasks() -> dict[str, TfdsTask]:
  tasks = {}
  for taskless in (False, True):
    for config in GLUE_CONFIGS:
      tasks[task_name(config, taskless)] = _glue_task(config, taskless)
    for source, target in TRANSFER_PAIRS:
      tasks[transfer_task_name(source, target, taskless)] = _transfer_task(source, target, taskless)
  return tasks


TASKS: dict[str, TfdsTask] = _build_tasks()
for _task in TASKS.values():
  register_task(_task)
