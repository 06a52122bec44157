"""Text metrics: `(targets: list[str], predictions: list[str]) -> dict[str, float]`.

Values are percentages (0-100), as T5/seqio report them, so they compare
directly with published tables. Every function raises on length mismatch or
empty input (an eval that saw no examples is a bug, not a score).
"""

from __future__ import annotations

import re
import string
from typing import Callable, Sequence

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


def macro_f1(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """100 * mean over the classes present in `targets` of per-class F1.

  Per class c: precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = their
  harmonic mean, 0 when undefined. Predicted classes absent from `targets` add
  no term of their own (but still count as false negatives of the true class),
  as sklearn's f1_score(average="macro", labels=sorted(set(targets))).
  """
  _check(targets, predictions)
  scores = []
  for c in sorted(set(targets)):
    tp = sum(t == c and p == c for t, p in zip(targets, predictions))
    fp = sum(t != c and p == c for t, p in zip(targets, predictions))
    fn = sum(t == c and p != c for t, p in zip(targets, predictions))
    scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
  return {"macro_f1": 100.0 * sum(scores) / len(scores)}


METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "exact_match": exact_match,
    "macro_f1": macro_f1,
}


def get_metric(name: str) -> MetricFn:
  if name not in METRICS:
    raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
  return METRICS[name]


def compute_metrics(names: Sequence[str], targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Runs every named metric and merges their results."""
  out: dict[str, float] = {}
  for name in names:
    out.update(get_metric(name)(targets, predictions))
  return out
