"""Model selection as in the paper: the best validation step per metric, and the checkpoint it selects.

Every periodic evaluation (TrainSpec.eval_period, and the last step) updates MODEL_DIR/best.json:

  {"selection_metric": "decode/accuracy",
   "best": {"decode/accuracy": {"value": 87.5, "step": 3000}, "rank/accuracy": {...}, ...}}

Metric names are the evaluation's (`decode/<metric>`, `rank/<metric>`, a multi-task run's
`decode/<task>/<metric>`), without metrics.jsonl's `eval/` prefix. Direction is decided by the
name's last part: loss-like names (`LOWER_IS_BETTER`: loss, perplexity, error rates) are better
lower, every other metric (accuracy, F1, exact match, correlations) better higher; counts
(`examples`) are not metrics. Ties keep the earlier step, as an early-stopping rule would.

The selection metric (TrainSpec.selection_metric; default the first metric the evaluation reports,
the task's first metric by decoding, as the paper scores the generated label text) picks the
run's result: train() forces a checkpoint at the step it improves, the checkpointer keeps that
checkpoint out of its keep-N rotation, and its prompt files are copied to prompts/best.npy and
prompts/best.safetensors (a multi-task run: prompts/best/<task>.safetensors). Resuming rebuilds
the record from metrics.jsonl's evaluations up to the resumed step, so steps retrained after a
crash are neither lost nor counted twice.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from etils import epath

from prompt_tuning import atomic
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.train_state import PROMPTS_DIR
from prompt_tuning.errors import RunError

BEST_FILE = "best.json"
METRICS_FILE = "metrics.jsonl"
EVAL_PREFIX = "eval/"  # what train() writes its evaluations under in metrics.jsonl
BEST_NAME = "best"  # prompts/best.npy, prompts/best.safetensors, prompts/best/<task>.safetensors

# Last name parts better when lower; everything else reported by an evaluation is better higher.
LOWER_IS_BETTER = frozenset({"loss", "z_loss", "perplexity", "error", "error_rate", "wer", "cer"})
# Not metrics: what an evaluation reports beside them.
NOT_METRICS = frozenset({"examples", "step"})


def higher_is_better(metric: str) -> bool:
  """Whether larger values of `metric` ('decode/accuracy', 'loss', ...) are better."""
  last = metric.rsplit("/", 1)[-1]
  return not (last in LOWER_IS_BETTER or last.endswith("_loss"))


def is_metric(name: str) -> bool:
  return name.rsplit("/", 1)[-1] not in NOT_METRICS


def _better(value: float, than: float | None, metric: str) -> bool:
  if than is None or math.isnan(than):
    return not math.isnan(value)
  return value > than if higher_is_better(metric) else value < than


def best_steps(history: Iterable[tuple[int, Mapping[str, float]]]) -> dict[str, dict[str, float | int]]:
  """{metric: {'value', 'step'}} over (step, metrics) evaluations in step order; ties keep the earlier step."""
  best: dict[str, dict[str, float | int]] = {}
  for step, metrics in history:
    for name, value in metrics.items():
      if not is_metric(name) or not isinstance(value, (int, float)):
        continue
      value = float(value)
      if _better(value, best.get(name, {}).get("value"), name):
        best[name] = {"value": value, "step": int(step)}
  return best


def read_eval_history(model_dir: str, upto: int | None = None) -> list[tuple[int, dict[str, float]]]:
  """train()'s evaluations in MODEL_DIR/metrics.jsonl as [(step, {metric: value})] in step order.

  metrics.jsonl is appended to by every session: a session that resumed from an older checkpoint
  writes a step's record again, and the later record wins. A line that is not a record is skipped:
  a kill mid-append leaves a cut line, which the next session's first record then continues, and
  that must not stop the run from resuming. `upto`: only steps at or before it.
  """
  path = epath.Path(model_dir) / METRICS_FILE
  if not path.exists():
    return []
  by_step: dict[int, dict[str, float]] = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
      step = int(record["step"])
    except (ValueError, KeyError, TypeError):
      continue
    evals = {k[len(EVAL_PREFIX) :]: v for k, v in record.items() if k.startswith(EVAL_PREFIX)}
    if evals and (upto is None or step <= upto):
      by_step[step] = evals
  return sorted(by_step.items())


class BestTracker:
  """The best evaluation so far per metric, and the step the selection metric selects.

  Args:
    model_dir: MODEL_DIR; its metrics.jsonl (evaluations up to `resumed_step`) seeds the record.
    selection_metric: the metric that selects the run's checkpoint (None: the first one evaluated).
    resumed_step: the step training resumes from (None or 0: a fresh run, nothing seeded).
  """

  def __init__(self, model_dir: str, selection_metric: str | None = None, resumed_step: int | None = None):
    self.model_dir = model_dir
    self.selection_metric = _strip(selection_metric)
    self.history = read_eval_history(model_dir, resumed_step) if resumed_step else []
    self.best = best_steps(self.history)
    if self.selection_metric is None and self.history:
      self.selection_metric = _first_metric(self.history[0][1])

  @property
  def selected_step(self) -> int | None:
    """The step of the selection metric's best value (None: nothing evaluated yet)."""
    entry = self.best.get(self.selection_metric or "")
    return None if entry is None else int(entry["step"])

  def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """Records the evaluation of `step`; returns whether the selection metric improved (a new best).

    Raises:
      RunError: the selection metric is not among what the evaluation reports.
    """
    metrics = {k: v for k, v in metrics.items() if is_metric(k)}
    if self.selection_metric is None:
      self.selection_metric = _first_metric(metrics)
    if self.selection_metric not in metrics:
      raise RunError(
        f"TrainSpec.selection_metric={self.selection_metric!r} is not among the evaluation's metrics "
        f"({', '.join(metrics) or 'none'}); bind one of those"
      )
    before = self.selected_step
    self.history.append((int(step), dict(metrics)))
    self.best = best_steps(self.history)
    return self.selected_step == int(step) and before != int(step)

  def to_json(self) -> dict[str, Any]:
    return {"selection_metric": self.selection_metric, "best": self.best}

  def write(self) -> None:
    """MODEL_DIR/best.json, whole or not at all (process 0)."""
    atomic.write_text(epath.Path(self.model_dir) / BEST_FILE, json.dumps(self.to_json(), indent=1))


def _strip(metric: str | None) -> str | None:
  if metric is None:
    return None
  if not isinstance(metric, str) or not metric:
    raise RunError(f"TrainSpec.selection_metric must be a metric name such as 'decode/accuracy', got {metric!r}")
  return metric[len(EVAL_PREFIX) :] if metric.startswith(EVAL_PREFIX) else metric


def _first_metric(metrics: Mapping[str, Any]) -> str | None:
  """The evaluation's first metric: the task's first by decoding (decode/ comes before rank/)."""
  return next((k for k in metrics if is_metric(k)), None)


def read_best(model_dir: str) -> dict[str, Any] | None:
  """MODEL_DIR/best.json as written by train(), or None when there is none."""
  path = epath.Path(model_dir) / BEST_FILE
  record = atomic.read_json(path)
  if record is not None and not (isinstance(record, dict) and {"best", "selection_metric"} <= set(record)):
    raise RunError(f"{path}: not a best-step record written by train()")
  return record


def keep_best_prompt(model_dir: str, step: int, tasks: tuple[str, ...] = ()) -> list[str]:
  """Copies step `step`'s prompt files to prompts/best.* (process 0); returns the paths written.

  Written whole or not at all, so a kill leaves the previous best's copy whole.
  """
  prompts = epath.Path(model_dir) / PROMPTS_DIR
  pairs = [(prompts / f"step_{step}.npy", prompts / f"{BEST_NAME}.npy")]
  if tasks:
    pairs += [
      (prompts / f"step_{step}" / f"{t}{bundle_lib.SUFFIX}", prompts / BEST_NAME / f"{t}{bundle_lib.SUFFIX}")
      for t in tasks
    ]
  else:
    pairs.append((prompts / f"step_{step}{bundle_lib.SUFFIX}", prompts / f"{BEST_NAME}{bundle_lib.SUFFIX}"))
  written = []
  for source, target in pairs:
    if source.exists():  # model tuning saves no prompt .npy; a run without a bundle record no bundle
      atomic.write_bytes(target, source.read_bytes())
      written.append(str(target))
  return written
