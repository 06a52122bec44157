"""Evaluation and inference: decoding, rank classification, metrics and JSONL predictions.

Two ways to score a task, both from the same batches:
  * decoding: generate (greedy by default, beam from gin) and compare strings;
  * rank classification: score each candidate target (the task's labels) and
    pick the most likely, when the task supplies candidates.

Multi-host: every process reads the whole global batch (cheap: text), places
only its own rows on the data-sharded device array, and gets every row's
output back (replicated); each process then holds all records, and the task
metrics are the same on every process.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import partitioning
from prompt_tuning.data import sentinel
from prompt_tuning.data.buckets import LengthBuckets
from prompt_tuning.data.features import TruncationCounter, trim_with_eos
from prompt_tuning.data.pipeline import BatchIterator
from prompt_tuning.data.task import Task
from prompt_tuning.models.model import EncoderDecoderModel


class Evaluator:
  """Scores params on a task split; jitted functions are built once and reused.

  Args:
    decode_method / decode_options: passed to EncoderDecoderModel.predict_batch
      ('greedy', or 'beam' with beam_size/alpha, or 'sample').
    rank_classification: None = whenever the task has candidates.
    note: prints a line before each evaluation (which compiles, then runs
      quietly for a while); None prints nothing.
    mesh: where batches run, split over its 'data' axis (default: every device
      of every process, partitioning.make_mesh()). A batch whose size the data
      axis does not divide is padded with empty rows.
    prompt_ids: for a model with a prompt table, {task name: its row}; each example
      (of a mixture: tagged with its task) runs with its task's prompt, so one batch
      mixes tasks. None: a model with one prompt.
    length_buckets: pad each batch's encoder inputs to its input bucket (data/buckets.py)
      instead of the inputs length; decoding and scoring then compile once per bucket the
      split uses, at its first evaluation. Predictions match the unbucketed ones up to float
      rounding (padding is masked).
  """

  def __init__(
    self,
    model: EncoderDecoderModel,
    task: Task,
    feature_lengths: Mapping[str, int],
    batch_size: int,
    *,
    decode_method: str = "greedy",
    decode_options: Mapping[str, Any] | None = None,
    rank_classification: bool | None = None,
    mesh: Mesh | None = None,
    note: Callable[[str], None] | None = None,
    prompt_ids: Mapping[str, int] | None = None,
    length_buckets: LengthBuckets | None = None,
  ):
    self.task, self.feature_lengths, self.batch_size = task, dict(feature_lengths), batch_size
    self.length_buckets = length_buckets
    self.prompt_ids = None if prompt_ids is None else dict(prompt_ids)
    self.decoding = describe_decoding(decode_method, decode_options)
    self._note = note or (lambda message: None)
    self.vocabulary = task.vocabulary
    # TARGET_SENTINEL (data/sentinel.py): candidates gain the prefix, predictions lose it.
    self.target_prefix = sentinel.target_prefix(task)
    self.mesh = partitioning.make_mesh() if mesh is None else mesh
    self._rows = partitioning.data_sharding(self.mesh)
    replicated = NamedSharding(self.mesh, PartitionSpec())  # every process gets every row back
    options = dict(decode_options or {})
    max_length = self.feature_lengths["targets"]
    self._predict = jax.jit(
      lambda params, tokens, task_ids: model.predict_batch(
        params,
        tokens,
        max_decode_length=max_length,
        method=decode_method,
        rng=jax.random.PRNGKey(0),
        task_ids=task_ids,
        **options,
      ),
      out_shardings=replicated,
    )
    self.truncation = TruncationCounter()  # shared by every evaluation, reported once per split
    self.rank_classification = rank_classification
    self.candidates = task.candidates
    if rank_classification and not self.candidates and not _has_example_candidates(task):
      raise ValueError(f"rank classification needs candidates, and task {task.name} has none")
    self._max_target_length = max_length
    if self.candidates:
      self._candidate_tokens = self._candidate_table([self.candidates])[0]  # [candidates, length], replicated
    self._rank = jax.jit(model.rank_classify, out_shardings=replicated)

  def _global(self, rows: np.ndarray) -> jax.Array:
    """Host rows [batch, ...] (the same on every process) -> a global array split over the 'data' axis,
    zero rows appended up to a multiple of its size; each process places only its own rows."""
    pad = -len(rows) % self.mesh.shape[partitioning.DATA_AXIS]
    if pad:
      rows = np.concatenate([rows, np.zeros((pad, *rows.shape[1:]), rows.dtype)])
    return jax.make_array_from_callback(rows.shape, self._rows, lambda index: rows[index])

  def _candidate_table(self, rows_of_candidates: list[list[str]]) -> np.ndarray:
    return candidate_table(self.vocabulary, rows_of_candidates, self._max_target_length, self.target_prefix)

  def _decode(self, tokens: Sequence[int]) -> str:
    """A decoded row [length] as the prediction string: a leading target prefix (the sentinel) dropped."""
    return self.vocabulary.decode(sentinel.strip_target_prefix(tokens, self.target_prefix))

  def _task_ids(self, examples: list) -> jax.Array | None:
    """Each row's prompt-table row (padding rows: 0), placed as the tokens are; None without a table."""
    if self.prompt_ids is None:
      return None
    ids = []
    for example in examples:
      name = example.get("task", self.task.name) if example else None
      if name is not None and name not in self.prompt_ids:
        raise ValueError(f"no prompt for task {name!r}; prompts are for {', '.join(sorted(self.prompt_ids))}")
      ids.append(0 if name is None else self.prompt_ids[name])
    return self._global(np.asarray(ids, np.int32))

  def _ranks(
    self, params: Any, tokens: jax.Array, examples: list, task_ids: jax.Array | None = None
  ) -> tuple[list, np.ndarray] | None:
    """(candidates per row, scores [batch, candidates]) or None when rank classification is off.

    `tokens`: the global [padded batch, n] array; `examples`: the batch's len(examples) real and padding rows."""
    if self.rank_classification is False:
      return None
    per_example = [ex.get("candidates") if ex else None for ex in examples]
    if any(per_example):
      # Rows without candidates of their own (a mixture's generative tasks) get a placeholder
      # and no rank prediction: they are scored by decoding alone.
      rows = [list(c) if c else (self.candidates or []) for c in per_example]
      rows = [r if r else [""] for r in rows]
      table = self._candidate_table(rows)
      scores = np.asarray(self._rank(params, tokens, self._global(table), task_ids))[: len(examples)]
      scores = np.where(table.any(axis=-1), scores, -np.inf)  # padding candidates never win
      return rows, scores
    if not self.candidates:
      return None
    scores = np.asarray(self._rank(params, tokens, self._candidate_tokens, task_ids))[: len(examples)]
    return [self.candidates] * len(examples), scores

  def _batches(self, split: str) -> Iterator:
    counter = self.truncation if split not in self.truncation.splits else None  # count each split once
    # Every process reads every row (see the module docstring); _global places its own share.
    batches = BatchIterator(
      self.task,
      split,
      self.feature_lengths,
      self.batch_size,
      shuffle=False,
      seed=0,
      repeat=False,
      drop_remainder=False,
      counter=counter,
      length_buckets=self.length_buckets,
    )
    self.truncation.report()
    return batches

  def predictions(self, params: Any, split: str) -> Iterator[dict[str, Any]]:
    """Yields one record per real example: input, target, prediction, score (+ rank fields)
    and, under "example", the example itself (for the task's metrics)."""
    for batch in self._batches(split):
      size = len(batch.arrays["mask"])
      tokens = self._global(batch.arrays["encoder_input_tokens"])
      task_ids = self._task_ids(batch.text["examples"])
      decoded = self._predict(params, tokens, task_ids)
      out_tokens, out_scores = np.asarray(decoded.tokens)[:size, 0], np.asarray(decoded.scores)[:size, 0]
      ranked = self._ranks(params, tokens, batch.text["examples"], task_ids)
      for i, real in enumerate(batch.arrays["mask"]):
        if not real:
          continue
        record = {
          "input": batch.text["inputs"][i],
          "target": batch.text["targets"][i],
          "prediction": self._decode(out_tokens[i].tolist()),
          "score": float(out_scores[i]),
          "example": batch.text["examples"][i],
        }
        example = batch.text["examples"][i]
        if ranked is not None and (self.candidates or example.get("candidates")):
          candidates, scores = ranked[0][i], ranked[1][i]
          record["rank_prediction"] = candidates[int(np.argmax(scores[: len(candidates)]))]
          record["rank_scores"] = {c: float(s) for c, s in zip(candidates, scores)}
        yield record

  def evaluate(self, params: Any, split: str = "validation") -> dict[str, float]:
    """Task metrics by decoding ('decode/<metric>') and by rank classification ('rank/<metric>'),
    and the number of examples ('examples', an int)."""
    ranking = self.rank_classification or (self.rank_classification is None and self.candidates)
    self._note(f"evaluating {self.task.name} on {split}: {self.decoding}{'; rank classification' if ranking else ''}")
    records = list(self.predictions(params, split))
    if not records:
      raise ValueError(f"task {self.task.name} split {split} has no examples to evaluate")
    return {**score_records(self.task, records), "examples": len(records)}


def score_records(task: Task, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """The task's metrics of records (see Evaluator.predictions): 'decode/<metric>' from 'prediction',
  'rank/<metric>' from 'rank_prediction' when some record has one."""
  out = {f"decode/{k}": v for k, v in task.score(records).items()}
  if any("rank_prediction" in r for r in records):
    # Examples without candidates keep their decoded prediction.
    ranked = [dict(r, prediction=r.get("rank_prediction", r["prediction"])) for r in records]
    out.update({f"rank/{k}": v for k, v in task.score(ranked).items()})
  return out


def describe_decoding(method: str, options: Mapping[str, Any] | None = None) -> str:
  """How predictions are decoded, for people: 'greedy decoding', 'beam decoding with alpha=0.6, beam_size=4'."""
  details = ", ".join(f"{k}={v}" for k, v in sorted(dict(options or {}).items()))
  return f"{method} decoding" + (f" with {details}" if details else "")


def candidate_table(
  vocabulary: Any, rows_of_candidates: Sequence[Sequence[str]], max_length: int, prefix: Sequence[int] = ()
) -> np.ndarray:
  """Candidate targets as token ids [rows, max candidates, length]: each EOS-terminated and cut to
  `max_length` as targets are in training (seqio's append_eos_after_trim), 0-padded; missing candidates all 0.
  prefix: ids before each candidate's, as training put them before each target (TARGET_SENTINEL)."""
  encoded = [
    [trim_with_eos([*prefix, *vocabulary.encode(c)], max_length, vocabulary.eos_id) for c in row]
    for row in rows_of_candidates
  ]
  width = max(len(row) for row in encoded)
  length = max(len(ids) for row in encoded for ids in row)
  table = np.zeros((len(encoded), width, length), np.int32)
  for i, row in enumerate(encoded):
    for j, ids in enumerate(row):
      table[i, j, : len(ids)] = ids
  return table


def _has_example_candidates(task: Task) -> bool:
  """Whether the task's examples carry their own candidates (looks at the first one)."""
  for split in task.splits:
    for example in task.examples(split):
      return bool(example.get("candidates"))
  return False


def write_predictions(records: Iterator[dict[str, Any]], path: str) -> int:
  """Writes records as JSONL (input, prediction, score, ...); returns the count. Process 0 only."""
  count = 0
  if jax.process_index() != 0:
    return sum(1 for _ in records)
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("w") as f:
    for record in records:
      record = {k: v for k, v in record.items() if k != "example"}
      f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
      count += 1
  return count
