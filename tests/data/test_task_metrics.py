"""Task-level metrics (F1, Matthews, correlations, MultiRC, SQuAD/ReCoRD) against hand-computed values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from prompt_tuning.data import metrics


def test_binary_f1_and_invalid_predictions():
  targets = ["True", "True", "False", "False", "True"]
  predictions = ["True", "False", "True", "maybe", "True"]
  # 'maybe' is invalid: with negative given it is wrong, here a false positive (target False).
  # tp 2 (0, 4), fp 2 (2, 3), fn 1 (1): F1 = 4 / 7.
  assert metrics.f1(targets, predictions, positive="True", negative="False") == {"f1": pytest.approx(400 / 7)}
  # Without `negative` it is just "not True": tp 2, fp 1, fn 1 -> 4 / 6.
  assert metrics.f1(targets, predictions, positive="True") == {"f1": pytest.approx(400 / 6)}
  assert metrics.f1(["False"], ["False"], positive="True") == {"f1": 0.0}  # no true positive
  assert metrics.get_metric("f1_true")(targets, predictions) == {"f1": pytest.approx(400 / 7)}
  out = metrics.get_metric("f1_duplicate")(["duplicate", "not_duplicate"], ["duplicate", "duplicate"])
  assert out == {"f1": pytest.approx(200 / 3)}  # tp 1, fp 1


def test_matthews_corrcoef():
  # Binary: tp 2, fn 1, fp 1, tn 2 -> (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
  out = metrics.matthews_corrcoef(list("aaabbb"), list("aabbba"))
  assert out == {"matthews_corrcoef": pytest.approx(100 / 3)}
  # Multiclass (sklearn's form): n 4, correct 2, sum t_k p_k = 2+2+1 = 5:
  # (2*4 - 5) / sqrt((16 - 6) * (16 - 6)) = 0.3.
  assert metrics.matthews_corrcoef(list("abca"), list("abbc")) == {"matthews_corrcoef": pytest.approx(30.0)}
  assert metrics.matthews_corrcoef(list("ab"), list("aa")) == {"matthews_corrcoef": 0.0}  # undefined -> 0
  assert metrics.matthews_corrcoef(list("ab"), list("ba")) == {"matthews_corrcoef": pytest.approx(-100.0)}
  # Predictions that are no label ('x', 'y') are ONE class, T5's -1 (sklearn on class ids [0,0,1,1] vs
  # [0,-1,1,-1]): 4 / sqrt((16 - 6) * (16 - 8)); by default the labels are the targets' strings.
  want = {"matthews_corrcoef": pytest.approx(400 / 80**0.5)}
  assert metrics.matthews_corrcoef(list("aabb"), list("axby")) == want
  assert metrics.matthews_corrcoef(list("aabb"), list("axby"), labels=["a", "b", "c"]) == want


def test_pearson_and_spearman():
  # x dev [-1, 0, 1], y = [1, 2, 4] dev [-4/3, -1/3, 5/3]: r = 3 / sqrt(2 * 42/9) = 9 / sqrt(84).
  out = metrics.pearson_corrcoef(["1", "2", "3"], ["1", "2", "4"])
  assert out == {"pearson_corrcoef": pytest.approx(900 / np.sqrt(84))}
  assert metrics.spearman_corrcoef(["1", "2", "3"], ["1", "2", "4"]) == {"spearman_corrcoef": pytest.approx(100.0)}
  # Unparsable -> -1.0: y = [1, -1, 3], dev [0, -2, 2]: r = 2 / sqrt(2 * 8) = 0.5; ranks [2, 1, 3] -> 0.5.
  assert metrics.pearson_corrcoef(["1", "2", "3"], ["1", "x", "3"]) == {"pearson_corrcoef": pytest.approx(50.0)}
  assert metrics.spearman_corrcoef(["1", "2", "3"], ["1", "nan", "3"]) == {"spearman_corrcoef": pytest.approx(50.0)}
  # Ties share their mean rank: t [1, 2.5, 2.5, 4], p [1.5, 1.5, 3, 4] -> 3.75 / 4.5.
  out = metrics.spearman_corrcoef(["1", "2", "2", "3"], ["1", "1", "2", "3"])
  assert out == {"spearman_corrcoef": pytest.approx(100 * 3.75 / 4.5)}
  # A constant series has no correlation: 0, never NaN.
  assert metrics.pearson_corrcoef(["1", "2"], ["3", "3"]) == {"pearson_corrcoef": 0.0}
  assert metrics.spearman_corrcoef(["1", "2"], ["x", "y"]) == {"spearman_corrcoef": 0.0}
  with pytest.raises(ValueError, match="targets must be numbers"):
    metrics.pearson_corrcoef(["one"], ["1"])


def test_correlations_with_ties_in_both_series():
  """T5 computes 100 * scipy.stats.pearsonr / spearmanr; these are worked by hand."""
  targets, predictions = ["1", "1", "2", "3", "3"], ["3", "2", "2", "1", "1"]
  # t dev [-1, -1, 0, 1, 1], p mean 1.8, dev [1.2, .2, .2, -.8, -.8]: r = -3 / sqrt(4 * 2.8).
  assert metrics.pearson_corrcoef(targets, predictions) == {"pearson_corrcoef": pytest.approx(-300 / np.sqrt(11.2))}
  # Ranks t [1.5, 1.5, 3, 4.5, 4.5], p [5, 3.5, 3.5, 1.5, 1.5]: cov -8.25, both variances 9.
  assert metrics.spearman_corrcoef(targets, predictions) == {"spearman_corrcoef": pytest.approx(-8.25 / 9 * 100)}


def test_constant_series_scores_zero_without_scipy_warning():
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # scipy would warn (ConstantInputWarning) and return NaN
    assert metrics.pearson_corrcoef(["1", "2", "3"], ["2", "2", "2"]) == {"pearson_corrcoef": 0.0}
    assert metrics.spearman_corrcoef(["4", "4"], ["1", "2"]) == {"spearman_corrcoef": 0.0}
    assert metrics.pearson_corrcoef(["1"], ["1"]) == {"pearson_corrcoef": 0.0}  # scipy raises on n < 2


def test_cb_macro_f1_over_all_labels():
  labels = ("entailment", "contradiction", "neutral")
  # entailment: tp1 fp1 fn1 -> 0.5; contradiction: tp0 -> 0; neutral: tp1 -> 1. Mean 1.5 / 3.
  targets = ["entailment", "contradiction", "neutral", "entailment"]
  predictions = ["entailment", "entailment", "neutral", "junk"]
  assert metrics.macro_f1(targets, predictions, labels=labels) == {"macro_f1": pytest.approx(50.0)}
  # T5 averages over all three classes, even ones no target has (F1 0): 1 / 3.
  assert metrics.macro_f1(["entailment"] * 2, ["entailment"] * 2, labels=labels) == {"macro_f1": pytest.approx(100 / 3)}
  assert metrics.macro_f1(["entailment"] * 2, ["entailment"] * 2) == {"macro_f1": 100.0}


def _multirc(paragraph, question, target, prediction, **extra):
  example = {"targets": target, "idx": {"paragraph": paragraph, "question": question, "answer": 0}, **extra}
  return {"example": example, "prediction": prediction}


def test_multirc_groups_by_paragraph_and_question():
  records = [
    _multirc(0, 0, "True", "True"),
    _multirc(0, 0, "False", "False"),
    _multirc(0, 0, "True", "False"),
    _multirc(0, 1, "False", "False"),
    _multirc(1, 0, "True", "True"),
    _multirc(1, 0, "True", "maybe"),  # question idx 0 again, other paragraph
  ]
  # EM: (0,0) wrong, (0,1) right, (1,0) wrong -> 1/3 (grouping by question idx alone would give 1/2).
  # F1a: tp 2, fp 0, fn 2 (the miss and the invalid 'maybe') -> 4 / 6.
  out = metrics.multirc_em_f1a(records)
  assert out == {"f1a": pytest.approx(200 / 3), "exact_match": pytest.approx(100 / 3)}
  assert list(out) == ["f1a", "exact_match"]
  # An explicit group id wins over idx.
  grouped = [_multirc(0, 0, "True", "True", group="g"), _multirc(0, 1, "False", "True", group="g")]
  assert metrics.multirc_em_f1a(grouped)["exact_match"] == 0.0
  with pytest.raises(ValueError, match="no examples"):
    metrics.multirc_em_f1a([])


def test_squad_em_f1_max_over_answers():
  out = metrics.squad_em_f1([["The Eiffel Tower", "Eiffel"], ["Paris, France"]], ["eiffel tower!", "Paris"])
  # 1: EM 1, F1 1.  2: 'paris' vs 'paris france': EM 0, F1 2 * (1 * 1/2) / (1 + 1/2) = 2/3.
  assert out == {"em": pytest.approx(50.0), "f1": pytest.approx(100 * (1 + 2 / 3) / 2)}
  # F1 is the max over answers: 'big ball' vs 'red big ball' 0.8, vs 'ball' 2/3.
  out = metrics.squad_em_f1([["red big ball", "ball"]], ["big ball"])
  assert out == {"em": 0.0, "f1": pytest.approx(80.0)}
  with pytest.raises(ValueError, match="non-empty list"):
    metrics.squad_em_f1([[]], ["x"])
  with pytest.raises(ValueError, match="1 targets but 2 predictions"):
    metrics.squad_em_f1([["a"]], ["a", "b"])


def test_registry_lists_new_metrics():
  assert set(metrics.METRICS) >= {"f1_true", "matthews_corrcoef", "pearson_corrcoef", "spearman_corrcoef"}
  out = metrics.compute_metrics(["matthews_corrcoef", "accuracy"], list("ab"), list("ab"))
  assert out == {"matthews_corrcoef": pytest.approx(100.0), "accuracy": 100.0}
