"""Metric values against hand-computed numbers (percentages)."""

from __future__ import annotations

import pytest

from prompt_tuning.data import metrics


def test_accuracy():
  assert metrics.accuracy(["a", "b", "a", "c"], ["a", "b", "b", "c"]) == {"accuracy": 75.0}
  assert metrics.accuracy(["yes"], ["yes "]) == {"accuracy": 0.0}  # exact strings


def test_exact_match_normalizes():
  assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
  out = metrics.exact_match(["The cat", "a dog", "bird"], ["cat!", "dog", "birds"])
  assert out == {"exact_match": pytest.approx(200 / 3)}


def test_macro_f1():
  # a: tp1 fp1 fn1 -> 0.5;  b: tp2 fp1 fn0 -> 0.8;  c: tp0 -> 0.  Mean 1.3 / 3.
  out = metrics.macro_f1(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"])
  assert out == {"macro_f1": pytest.approx(100 * 1.3 / 3)}
  # A predicted class absent from targets gets no term: a: tp1 fp0 fn1 -> 2/3.
  assert metrics.macro_f1(["a", "a"], ["a", "x"]) == {"macro_f1": pytest.approx(200 / 3)}
  assert metrics.macro_f1(["x", "y"], ["x", "y"]) == {"macro_f1": 100.0}


def test_registry_and_errors():
  assert set(metrics.METRICS) >= {"accuracy", "exact_match", "macro_f1"}
  out = metrics.compute_metrics(["accuracy", "macro_f1"], ["a", "b"], ["a", "a"])
  assert out == {"accuracy": 50.0, "macro_f1": pytest.approx(100 * (2 / 3 + 0) / 2)}
  with pytest.raises(KeyError, match="known: accuracy"):
    metrics.get_metric("bleu")
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="no examples"):
    metrics.macro_f1([], [])
