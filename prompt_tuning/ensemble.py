"""Prompt ensembling (the paper's Table 3): N prompts of one task, one batched forward on one model.

The members are rows of one prompt table ([k, p_max, embed], runs/bundles.py). Each batch of B
examples runs as ONE device batch of N*B rows, member-major: row m*B + i is example i with member
m's prompt. So EVAL_BATCH_SIZE counts examples and the device batch is EVAL_BATCH_SIZE x N rows;
decoding and rank classification run once per batch, on one model, whatever N.

  ensemble decoding: the majority vote over the N decoded strings; a tie goes to the string of
    the earliest member among the tied ones (deterministic).
  ensemble rank classification: the candidate with the highest mean over members of the
    per-candidate log-likelihood scores; a tie goes to the earlier candidate (np.argmax).

Each member is scored as well, from the same batch: N+1 sets of metrics.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Sequence

import numpy as np

from prompt_tuning.evaluation import Evaluator, score_records

ENSEMBLE = "ensemble"


def member_key(member: int) -> str:
  """The metrics prefix of member `member` (0-based, in the order given): 'member_0'."""
  return f"member_{member}"


def majority_vote(predictions: Sequence[str]) -> int:
  """The index of the member whose string wins: the most common string, ties to the earliest member."""
  counts = Counter(predictions)
  best = max(counts.values())
  return next(m for m, p in enumerate(predictions) if counts[p] == best)


def mean_score_choice(scores: np.ndarray) -> tuple[int, np.ndarray]:
  """(the winning candidate, the mean scores [candidates]) of member scores [members, candidates].

  Candidates a row lacks score -inf for every member, so their mean is -inf and they never win."""
  mean = np.mean(np.asarray(scores, np.float64), axis=0)
  return int(np.argmax(mean)), mean


class EnsembleEvaluator(Evaluator):
  """An Evaluator whose every example runs with each of `members` (prompt-table rows) in one batch.

  Takes Evaluator's arguments plus `members`; the model must have a prompt table holding those
  rows. The task's examples all run with the members, whatever their task name (one task only:
  runs/bundles.py refuses an ensemble inside a mixture).
  """

  def __init__(self, *args: Any, members: Sequence[int], **kwargs: Any):
    super().__init__(*args, **kwargs)
    if not members:
      raise ValueError("an ensemble needs at least one member prompt")
    self.members = tuple(int(m) for m in members)

  def predictions(self, params: Any, split: str) -> Iterator[dict[str, Any]]:
    """Yields one record per real example: Evaluator's fields for the ensemble ('prediction': the
    vote, 'score': the log-likelihood of the earliest member that decoded it, 'rank_prediction' and
    'rank_scores': by mean score) plus each member's 'member_predictions', 'member_scores' and
    'member_rank_predictions' (lists in member order)."""
    n = len(self.members)
    for batch in self._batches(split):
      size = len(batch.arrays["mask"])
      examples = batch.text["examples"]
      # [n * size, length], member-major: one forward for every member.
      tokens = self._global(np.tile(batch.arrays["encoder_input_tokens"], (n, 1)))
      task_ids = self._global(np.repeat(np.asarray(self.members, np.int32), size))
      decoded = self._predict(params, tokens, task_ids)
      out_tokens = np.asarray(decoded.tokens)[: n * size, 0].reshape(n, size, -1)
      out_scores = np.asarray(decoded.scores)[: n * size, 0].reshape(n, size)
      ranked = self._ranks(params, tokens, list(examples) * n, task_ids)
      for i, real in enumerate(batch.arrays["mask"]):
        if not real:
          continue
        example = examples[i]
        members = [self._decode(out_tokens[m, i].tolist()) for m in range(n)]
        winner = majority_vote(members)
        record = {
          "input": batch.text["inputs"][i],
          "target": batch.text["targets"][i],
          "prediction": members[winner],
          "score": float(out_scores[winner, i]),
          "member_predictions": members,
          "member_scores": [float(s) for s in out_scores[:, i]],
          "example": example,
        }
        if ranked is not None and (self.candidates or example.get("candidates")):
          candidates = ranked[0][i]
          scores = ranked[1][i::size][:, : len(candidates)]  # [members, candidates]: rows m*size + i
          best, mean = mean_score_choice(scores)
          record["rank_prediction"] = candidates[best]
          record["rank_scores"] = {c: float(s) for c, s in zip(candidates, mean)}
          record["member_rank_predictions"] = [candidates[int(np.argmax(row))] for row in scores]
        yield record

  def evaluate(self, params: Any, split: str = "validation") -> dict[str, float]:
    """N+1 sets of metrics: 'member_<m>/decode/<metric>' (and rank/) for each member in order,
    'ensemble/decode/<metric>' by majority vote and 'ensemble/rank/<metric>' by mean score; and
    'examples' (an int)."""
    ranking = self.rank_classification or (self.rank_classification is None and self.candidates)
    self._note(
      f"evaluating an ensemble of {len(self.members)} prompts on {self.task.name} {split} "
      f"({self.batch_size} examples x {len(self.members)} prompts a batch): {self.decoding}"
      f"{'; rank classification' if ranking else ''}"
    )
    records = list(self.predictions(params, split))
    if not records:
      raise ValueError(f"task {self.task.name} split {split} has no examples to evaluate")
    out: dict[str, Any] = {}
    for m in range(len(self.members)):
      member = []
      for r in records:
        one = dict(r, prediction=r["member_predictions"][m])
        one.pop("rank_prediction", None)
        if "member_rank_predictions" in r:
          one["rank_prediction"] = r["member_rank_predictions"][m]
        member.append(one)
      out.update({f"{member_key(m)}/{k}": v for k, v in score_records(self.task, member).items()})
    out.update({f"{ENSEMBLE}/{k}": v for k, v in score_records(self.task, records).items()})
    out["examples"] = len(records)
    return out


def member_table(sources: Sequence[str], metrics: dict[str, Any]) -> list[str]:
  """Lines naming each member by its bundle path with its metrics, then the ensemble's."""
  names = [member_key(m) for m in range(len(sources))] + [ENSEMBLE]
  labels = [*sources, f"{len(sources)} prompts: majority vote, mean score"]
  width = max(len(n) for n in names)
  lines = []
  for name, label in zip(names, labels):
    values = "  ".join(f"{k[len(name) + 1 :]} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(name + "/"))
    lines.append(f"{name:<{width}}  {values}  ({label})")
  return lines
