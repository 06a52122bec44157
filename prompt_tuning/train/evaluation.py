"""Evaluation and inference: decoding, rank classification, metrics and JSONL predictions.

Two ways to score a task, both from the same batches:
  * decoding: generate (greedy by default, beam from gin) and compare strings;
  * rank classification: score each candidate target (the task's labels) and
    pick the most likely, when the task supplies candidates.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from prompt_tuning.data import metrics as metrics_lib
from prompt_tuning.data.features import trim_with_eos
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.data.task import Task
from prompt_tuning.models.model import EncoderDecoderModel


class Evaluator:
  """Scores params on a task split; jitted functions are built once and reused.

  Args:
    decode_method / decode_options: passed to EncoderDecoderModel.predict_batch
      ('greedy', or 'beam' with beam_size/alpha, or 'sample').
    rank_classification: None = whenever the task has candidates.
  """

  def __init__(self, model: EncoderDecoderModel, task: Task, feature_lengths: Mapping[str, int], batch_size: int, *,
               decode_method: str = "greedy", decode_options: Mapping[str, Any] | None = None,
               rank_classification: bool | None = None):
    self.task, self.feature_lengths, self.batch_size = task, dict(feature_lengths), batch_size
    self.vocabulary = task.vocabulary
    options = dict(decode_options or {})
    max_length = self.feature_lengths["targets"]
    self._predict = jax.jit(lambda params, tokens: model.predict_batch(
        params, tokens, max_decode_length=max_length, method=decode_method, rng=jax.random.PRNGKey(0), **options))
    candidates = task.candidates
    if rank_classification and not candidates:
      raise ValueError(f"rank classification needs candidates, and task {task.name} has none")
    self.candidates = candidates if (rank_classification is None or rank_classification) else None
    if self.candidates:
      rows = [trim_with_eos(self.vocabulary.encode(c) + [1], max_length) for c in self.candidates]
      table = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
      for i, row in enumerate(rows):
        table[i, :len(row)] = row
      self._candidate_tokens = jnp.asarray(table)
      self._rank = jax.jit(model.rank_classify)

  def _batches(self, split: str) -> Iterator:
    return BatchIterator(self.task, split, self.feature_lengths, self.batch_size, shuffle=False, seed=0,
                         repeat=False, drop_remainder=False, process_index=jax.process_index(),
                         process_count=jax.process_count())

  def predictions(self, params: Any, split: str) -> Iterator[dict[str, Any]]:
    """Yields one record per real example: inputs, targets, prediction, score (+ rank fields)."""
    for batch in self._batches(split):
      tokens = batch.arrays["encoder_input_tokens"]
      decoded = self._predict(params, tokens)
      out_tokens, out_scores = np.asarray(decoded.tokens[:, 0]), np.asarray(decoded.scores[:, 0])
      if self.candidates:
        rank_scores = np.asarray(self._rank(params, tokens, self._candidate_tokens))
      for i, real in enumerate(batch.arrays["mask"]):
        if not real:
          continue
        record = {"input": batch.text["inputs"][i], "target": batch.text["targets"][i],
                  "prediction": self.vocabulary.decode(out_tokens[i].tolist()), "score": float(out_scores[i])}
        if self.candidates:
          best = int(np.argmax(rank_scores[i]))
          record["rank_prediction"] = self.candidates[best]
          record["rank_scores"] = {c: float(s) for c, s in zip(self.candidates, rank_scores[i])}
        yield record

  def evaluate(self, params: Any, split: str = "validation") -> dict[str, float]:
    """Task metrics by decoding ('decode/<metric>') and by rank classification ('rank/<metric>')."""
    records = list(self.predictions(params, split))
    if not records:
      raise ValueError(f"task {self.task.name} split {split} has no examples to evaluate")
    targets = [r["target"] for r in records]
    out = {f"decode/{k}": v for k, v in
           metrics_lib.compute_metrics(self.task.metrics, targets, [r["prediction"] for r in records]).items()}
    if self.candidates:
      ranked = metrics_lib.compute_metrics(self.task.metrics, targets, [r["rank_prediction"] for r in records])
      out.update({f"rank/{k}": v for k, v in ranked.items()})
    out["examples"] = float(len(records))
    return out


def write_predictions(records: Iterator[dict[str, Any]], path: str) -> int:
  """Writes records as JSONL (input, prediction, score, ...); returns the count. Process 0 only."""
  count = 0
  if jax.process_index() != 0:
    return sum(1 for _ in records)
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("w") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
      count += 1
  return count
