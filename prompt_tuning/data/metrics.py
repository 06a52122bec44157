"""Text metrics: `(targets: list[str], predictions: list[str]) -> dict[str, float]`.

Values are percentages (0-100), as T5/seqio report them, so they compare
directly with published tables. Every function raises on length mismatch or
empty input (an eval that saw no examples is a bug, not a score).

`METRICS` maps registry names to such functions. Metrics that need more than
one target string per prediction (MultiRC's question groups, SQuAD/ReCoRD's
several gold answers) are plain helpers below the registry, called by task
score functions.
"""

from __future__ import annotations

import collections
import functools
import math
import re
import string
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from prompt_tuning.errors import NotFoundError

_PUNCTUATION = frozenset(string.punctuation)
MetricFn = Callable[[Sequence[str], Sequence[str]], "dict[str, float]"]


def _check(targets: Sequence[str], predictions: Sequence[str]):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  if not len(targets):
    raise ValueError("no examples to score")


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """100 * fraction of predictions equal (as strings) to their target."""
  _check(targets, predictions)
  return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions)) / len(targets)}


def normalize_answer(text: str) -> str:
  """SQuAD normalization: lowercase, drop punctuation and articles (a/an/the), squeeze whitespace."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """100 * fraction equal after `normalize_answer` (SQuAD-style EM)."""
  _check(targets, predictions)
  hits = sum(normalize_answer(t) == normalize_answer(p) for t, p in zip(targets, predictions))
  return {"exact_match": 100.0 * hits / len(targets)}


def macro_f1(
  targets: Sequence[str], predictions: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
  """100 * mean over the classes present in `targets` (or over `labels`) of per-class F1.

  Per class c: precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = their
  harmonic mean, 0 when undefined. Predicted classes absent from `targets` add
  no term of their own (but still count as false negatives of the true class),
  as sklearn's f1_score(average="macro", labels=sorted(set(targets))). Passing
  all class `labels` (T5's CB `mean_3class_f1`) also averages in classes that
  no target has (F1 0).
  """
  _check(targets, predictions)
  scores = []
  for c in sorted(set(targets)) if labels is None else labels:
    tp = sum(t == c and p == c for t, p in zip(targets, predictions))
    fp = sum(t != c and p == c for t, p in zip(targets, predictions))
    fn = sum(t == c and p != c for t, p in zip(targets, predictions))
    scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
  return {"macro_f1": 100.0 * sum(scores) / len(scores)}


def f1(
  targets: Sequence[str], predictions: Sequence[str], positive: str, negative: str | None = None
) -> dict[str, float]:
  """100 * binary F1 of the class `positive` (sklearn's f1_score(pos_label=positive)).

  Without `negative`, any prediction other than `positive` counts as negative.
  With it, a prediction that is neither label is wrong whatever the target (T5's
  f1_score_with_invalid): a false negative for a positive target, a false
  positive for a negative one. F1 is 0 when there is no true positive.
  """
  _check(targets, predictions)
  tp = fp = fn = 0
  for t, p in zip(targets, predictions):
    if negative is not None and p not in (positive, negative):
      p = negative if t == positive else positive
    tp += t == positive and p == positive
    fp += t != positive and p == positive
    fn += t == positive and p != positive
  return {"f1": 100.0 * 2 * tp / (2 * tp + fp + fn) if tp else 0.0}


def matthews_corrcoef(
  targets: Sequence[str], predictions: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
  """100 * Matthews correlation (multiclass form, as sklearn) of class ids, as T5 scores CoLA.

  T5 first maps each string to its label's index, or to -1 when it is no label
  (postprocessors.string_label_to_class_id), so every invalid prediction,
  whatever its text, falls into ONE extra class. `labels` are the label strings
  (default: the distinct targets). 0 when undefined (all targets or all
  predictions one class).
  """
  _check(targets, predictions)
  known = set(targets) if labels is None else set(labels)
  # None stands for T5's -1; a target outside `labels` ('<unk>' of a test split) maps there too.
  targets = [t if t in known else None for t in targets]
  predictions = [p if p in known else None for p in predictions]
  n = len(targets)
  t_counts, p_counts = collections.Counter(targets), collections.Counter(predictions)
  correct = sum(t == p for t, p in zip(targets, predictions))
  cov_tp = correct * n - sum(t_counts[c] * p_counts[c] for c in t_counts)
  cov_pp = n * n - sum(v * v for v in p_counts.values())
  cov_tt = n * n - sum(v * v for v in t_counts.values())
  denom = math.sqrt(cov_pp * cov_tt)
  return {"matthews_corrcoef": 100.0 * cov_tp / denom if denom else 0.0}


def to_float(text: str, default: float = -1.0) -> float:
  """A prediction string as a float; unparsable or non-finite text gives `default` (T5's string_to_float: -1)."""
  try:
    value = float(text)
  except (TypeError, ValueError):
    return default
  return value if math.isfinite(value) else default


def _float_pairs(targets: Sequence[str], predictions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  _check(targets, predictions)
  try:
    t = np.array([float(x) for x in targets], np.float64)
  except ValueError as e:
    raise ValueError(f"correlation targets must be numbers: {e}") from None
  return t, np.array([to_float(p) for p in predictions], np.float64)


def _correlation(name: str, targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """{name: 100 * scipy.stats.<pearsonr|spearmanr>(targets, predictions)[0]}, as T5 computes it.

  A constant series (correlation undefined: scipy warns and gives NaN) scores
  0.0 instead, so a degenerate eval never logs NaN.
  """
  from scipy import stats  # deferred: ~1 s to import, and only correlation tasks need it

  t, p = _float_pairs(targets, predictions)
  if np.all(t == t[0]) or np.all(p == p[0]):
    return {name: 0.0}
  fn = stats.pearsonr if name == "pearson_corrcoef" else stats.spearmanr
  return {name: 100.0 * float(fn(t, p)[0])}


def pearson_corrcoef(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """100 * Pearson correlation of float targets and predictions (STS-B style).

  Unparsable (or non-finite) predictions count as -1.0, as T5's
  `string_to_float` postprocessor makes them; a constant series scores 0.0.
  """
  return _correlation("pearson_corrcoef", targets, predictions)


def spearman_corrcoef(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """100 * Spearman rank correlation (ties share their average rank); parsing and
  degenerate cases as `pearson_corrcoef`."""
  return _correlation("spearman_corrcoef", targets, predictions)


METRICS: dict[str, MetricFn] = {
  "accuracy": accuracy,
  "exact_match": exact_match,
  "macro_f1": macro_f1,
  # Binary F1 of a positive label; predictions that are neither label count as wrong (T5).
  "f1_true": functools.partial(f1, positive="True", negative="False"),  # MultiRC-style True/False
  "f1_equivalent": functools.partial(f1, positive="equivalent", negative="not_equivalent"),  # GLUE MRPC
  "f1_duplicate": functools.partial(f1, positive="duplicate", negative="not_duplicate"),  # GLUE QQP
  "matthews_corrcoef": matthews_corrcoef,
  "pearson_corrcoef": pearson_corrcoef,
  "spearman_corrcoef": spearman_corrcoef,
}


def get_metric(name: str) -> MetricFn:
  if name not in METRICS:
    raise NotFoundError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
  return METRICS[name]


def compute_metrics(names: Sequence[str], targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Runs every named metric and merges their results."""
  out: dict[str, float] = {}
  for name in names:
    out.update(get_metric(name)(targets, predictions))
  return out


# ---------------------------------------------------------------- record-level metrics


def _token_f1(target: str, prediction: str) -> float:
  """SQuAD token F1 of two normalized strings."""
  pred_tokens, target_tokens = prediction.split(), target.split()
  same = sum((collections.Counter(pred_tokens) & collections.Counter(target_tokens)).values())
  if not same:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_em_f1(answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD v1.1 metrics: {"em", "f1"}, each the max over an example's gold answers.

  Texts are compared after `normalize_answer` (T5's `normalize_squad`). Used by
  ReCoRD and MRQA. Raises on an example without gold answers.
  """
  _check(answers, predictions)
  em = f1_sum = 0.0
  for i, (golds, prediction) in enumerate(zip(answers, predictions)):
    if isinstance(golds, str) or not len(golds):
      raise ValueError(f"example {i}: gold answers must be a non-empty list of strings, got {golds!r}")
    p = normalize_answer(prediction)
    golds = [normalize_answer(g) for g in golds]
    em += max(float(g == p) for g in golds)
    f1_sum += max(_token_f1(g, p) for g in golds)
  return {"em": 100.0 * em / len(predictions), "f1": 100.0 * f1_sum / len(predictions)}


def _multirc_group(example: Mapping[str, Any]) -> Hashable:
  if "group" in example:
    return example["group"]
  idx = example["idx"]
  return idx["paragraph"], idx["question"]


def multirc_em_f1a(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC's SuperGLUE metrics over answer-option records {"f1a", "exact_match"}.

  Each record is {'example': {..., 'targets': 'True'/'False', 'group' or
  'idx': {'paragraph', 'question', ...}}, 'prediction': str}, one per answer
  option. F1a: binary F1 of 'True' over all options (`f1` with invalid
  predictions wrong). EM: the fraction of questions (grouped by `group`, else by
  (paragraph, question) idx) whose every option is predicted right.
  """
  if not records:
    raise ValueError("no examples to score")
  targets = [r["example"]["targets"] for r in records]
  predictions = [r["prediction"] for r in records]
  groups: dict[Hashable, bool] = {}
  for r, t, p in zip(records, targets, predictions):
    key = _multirc_group(r["example"])
    groups[key] = groups.get(key, True) and t == p
  return {
    "f1a": f1(targets, predictions, positive="True", negative="False")["f1"],
    "exact_match": 100.0 * sum(groups.values()) / len(groups),
  }
