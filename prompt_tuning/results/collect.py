"""Every run under a root, gathered into one table (`prompt-tuning results ROOT`).

A run is a directory holding run_config.json, metrics.jsonl, run_status.json or sweep.json (the
sweep's record of the run's axes: {"experiment", "axes": {name: value}, "gin_files", "bindings",
"command"}); runs are not looked for inside a run. One row per run:

  run               its path under the root
  <axis>...         one column per sweep axis (empty where a run has no such axis)
  experiment        the sweep's experiment name
  status            finished | incomplete | failed | not started | unknown (run_status.json, runs/records.py)
  method            the 'method' axis, else from TRAINABLE_PARAMS: 'prompt tuning' ('prompt/...'),
                    'model tuning' ('.*'), or the regex itself
  model             the model axis ('model', 'model_size', 'size', 'model_config'), else the named
                    config (t5_1_1_base...) the run's architecture is
  model_params      the frozen model's parameter count; trainable_params, trainable_percent: what trained
  task, prompt_length, seed
  metric, score, best_step   the scored metric (--metric, else the run's selection metric) and its best
  task_score        the mean of every metric of the score's family (decode/..., rank/...) at best_step:
                    a task's number in a benchmark average (SuperGLUE: CB's accuracy and F1 averaged)
  final_step, train_steps, wall_seconds
  best/<m>, best_step/<m>    every metric's best value and step (best.json, else metrics.jsonl)

Parameter counts come from run_status.json (the run's own arrays); a run without one is counted
from its run_config.json's model config, shapes only (jax.eval_shape, nothing allocated).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from typing import Any, Iterator, Sequence

from etils import epath

from prompt_tuning import atomic, param_tree
from prompt_tuning.checkpoints.train_state import RUN_CONFIG_FILE, CheckpointError, RunConfig
from prompt_tuning.errors import RunError
from prompt_tuning.runs import records, selection
from prompt_tuning.runs import sweep as sweep_lib

SWEEP_FILE = sweep_lib.SWEEP_FILE
RUN_MARKERS = (RUN_CONFIG_FILE, selection.METRICS_FILE, records.STATUS_FILE, SWEEP_FILE)
MODEL_AXES = ("model", "model_size", "size", "model_config", "MODEL_CONFIG")
METHOD_AXES = ("method", "METHOD")
SEED_AXES = ("seed", "SEED")
FIXED_COLUMNS = (
  "run",
  "experiment",
  "status",
  "method",
  "model",
  "model_params",
  "trainable_params",
  "trainable_percent",
  "task",
  "prompt_length",
  "seed",
  "metric",
  "score",
  "best_step",
  "task_score",
  "final_step",
  "train_steps",
  "wall_seconds",
)


def find_runs(root: str) -> list[epath.Path]:
  """Run directories under `root` (itself included), sorted by path; a run's subdirectories are not searched."""
  top = epath.Path(root)
  if not top.is_dir():
    raise RunError(f"{root} is not a directory")
  found, pending = [], [top]
  while pending:
    directory = pending.pop()
    names = {child.name: child for child in directory.iterdir()}
    if any(marker in names for marker in RUN_MARKERS):
      found.append(directory)
      continue
    pending += [child for child in names.values() if child.is_dir()]
  return sorted(found, key=str)


def read_sweep(run_dir: epath.Path) -> dict[str, Any]:
  """The run's sweep.json ({} without one). Lenient where `runs.sweep.read_record` is strict: any
  object with an 'axes' mapping (older sweeps, or one a user wrote) labels the run."""
  path = run_dir / SWEEP_FILE
  record = atomic.read_json(path)
  if record is None:
    return {}
  if not isinstance(record, dict) or not isinstance(record.get("axes", {}), dict):
    raise RunError(f"{path}: not a sweep record (a JSON object whose 'axes' maps names to values)")
  return record


def _method(regex: str | None) -> str | None:
  if regex is None:
    return None
  if regex == param_tree.EVERYTHING:
    return "model tuning"
  if regex.startswith("prompt/"):
    return "prompt tuning"
  return regex


def _axis(axes: dict[str, Any], names: Sequence[str]) -> Any:
  return next((axes[n] for n in names if n in axes), None)


@functools.lru_cache(maxsize=64)
def _counted_from_config(config_json: str, prompt_length: int, regex: str) -> tuple[int, int | None]:
  """(model params, trainable params or None) from a model config's shapes, without any array."""
  import jax

  from prompt_tuning.models.t5 import network
  from prompt_tuning.models.t5.config import T5Config

  config = T5Config.from_dict(json.loads(config_json))
  params = network.abstract_params(config)
  prompt = jax.ShapeDtypeStruct((prompt_length, config.emb_dim), "float32")
  try:
    trainable, _ = param_tree.split_trainable({**params, "prompt": {"prompt": prompt}}, regex)
  except ValueError:  # a regex this version cannot read: leave the count empty rather than guess
    return records.count_params(params), None
  return records.count_params(params), records.count_params(trainable)


def model_name(config: Any) -> str | None:
  """The named config (NAMED_CONFIGS) whose architecture `config` has, or None."""
  from prompt_tuning.models.t5.config import NAMED_CONFIGS, RUNTIME_FIELDS

  def arch(c) -> dict:
    return {k: v for k, v in c.to_dict().items() if k not in RUNTIME_FIELDS}

  mine = arch(config)
  return next((name for name, named in NAMED_CONFIGS.items() if arch(named) == mine), None)


def _status(status: dict | None, has_training: bool) -> str:
  if status is None:
    return "unknown" if has_training else "not started"
  return {"finished": "finished", "failed": "failed"}.get(status.get("status"), "incomplete")


def _task_score(metric: str | None, best: dict, history: Sequence[tuple[int, dict]]) -> float | None:
  """The mean of the metrics of `metric`'s family (its name up to the last '/') at its best step.

  SuperGLUE's score of a task with several metrics is their unweighted mean (CB: accuracy and
  F1; MultiRC: F1a and exact match; ReCoRD: F1 and EM), taken at the one step the run selected.
  Falls back to the score itself when metrics.jsonl lacks that step.
  """
  if metric is None or best.get("value") is None:
    return None
  family = metric.rsplit("/", 1)[0] + "/" if "/" in metric else ""
  at_step = dict(history).get(best.get("step"), {})
  values = [
    float(v)
    for name, v in at_step.items()
    if name.startswith(family) and "/" not in name[len(family) :] and selection.is_metric(name) and v is not None
  ]
  return sum(values) / len(values) if metric in at_step and values else float(best["value"])


def run_row(root: epath.Path, run_dir: epath.Path, metric: str | None = None) -> dict[str, Any]:
  """One run's row (see the module docstring); axes under 'axes'."""
  sweep = read_sweep(run_dir)
  axes = dict(sweep.get("axes") or {})
  try:
    config = (
      RunConfig.from_json((run_dir / RUN_CONFIG_FILE).read_text(), str(run_dir / RUN_CONFIG_FILE))
      if (run_dir / RUN_CONFIG_FILE).exists()
      else None
    )
  except CheckpointError as e:
    raise RunError(str(e)) from None
  status = records.read_status(str(run_dir))
  best_record = selection.read_best(str(run_dir))
  history = selection.read_eval_history(str(run_dir))
  best = best_record["best"] if best_record else selection.best_steps(history)
  chosen = metric or (best_record or {}).get("selection_metric") or next(iter(best), None)
  if metric and best and metric not in best:
    raise RunError(f"--metric {metric!r} is not among {run_dir}'s metrics ({', '.join(best)})")
  row: dict[str, Any] = {
    "run": str(run_dir)[len(str(root)) :].strip("/") or ".",
    "axes": axes,
    "experiment": sweep.get("experiment"),
    "status": _status(status, has_training=config is not None or bool(history)),
    "task": config.task if config else None,
    "prompt_length": config.prompt_length if config else None,
    "seed": _axis(axes, SEED_AXES) if _axis(axes, SEED_AXES) is not None else (config.seed if config else None),
    "method": _axis(axes, METHOD_AXES) or _method(config.trainable_params if config else None),
    "model": _axis(axes, MODEL_AXES) or (model_name(config.model_config) if config else None),
    "metric": chosen,
    "score": best.get(chosen, {}).get("value"),
    "best_step": best.get(chosen, {}).get("step"),
    "task_score": _task_score(chosen, best.get(chosen, {}), history),
    "final_step": (status or {}).get("step", history[-1][0] if history else None),
    "train_steps": (status or {}).get("train_steps"),
    "wall_seconds": (status or {}).get("wall_seconds"),
    "best": best,
  }
  model_params, trainable = (status or {}).get("model_params"), (status or {}).get("trainable_params")
  if model_params is None and config is not None and not config.prompt_tasks:
    model_params, trainable = _counted_from_config(
      json.dumps(config.model_config.to_dict(), sort_keys=True), config.prompt_length, config.trainable_params
    )
  if row["model"] is None and model_params:
    row["model"] = f"{model_params / 1e6:.3g}M"
  row["model_params"], row["trainable_params"] = model_params, trainable
  row["trainable_percent"] = 100.0 * trainable / model_params if model_params and trainable is not None else None
  return row


def gather(root: str, metric: str | None = None) -> list[dict[str, Any]]:
  """Rows of every run under `root` (see `run_row`)."""
  top = epath.Path(root)
  runs = find_runs(root)
  if not runs:
    raise RunError(f"no run under {root} (a run directory holds {', '.join(RUN_MARKERS)})")
  return [run_row(top, run, metric) for run in runs]


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The table's columns: run, the axes (in first-seen order), the fixed ones, then best/<m>, best_step/<m>."""
  axes, metrics, extra = [], [], []
  for row in rows:
    axes += [a for a in row["axes"] if a not in axes and a not in FIXED_COLUMNS]
    metrics += [m for m in row["best"] if m not in metrics]
    extra += [k for k in row if k not in (*FIXED_COLUMNS, "axes", "best", *extra)]  # e.g. benchmark.py's tasks_scored
  best = [*(f"best/{m}" for m in metrics), *(f"best_step/{m}" for m in metrics)]
  return ["run", *axes, *FIXED_COLUMNS[1:], *extra, *best]


def flat(row: dict[str, Any]) -> dict[str, Any]:
  """A row as one flat record: axes and best metrics spread into their columns."""
  out = {k: v for k, v in row.items() if k not in ("axes", "best")}
  for name, value in row["axes"].items():
    out.setdefault(name, value)
  for name, entry in row["best"].items():
    out[f"best/{name}"], out[f"best_step/{name}"] = entry["value"], entry["step"]
  return out


def write_table(rows: Sequence[dict[str, Any]], out_dir: str, name: str = "results") -> tuple[str, str]:
  """Writes OUT/<name>.csv and OUT/<name>.jsonl (whole or not at all); returns their paths."""
  names = columns(rows)
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if v is None else v for k, v in flat(row).items() if k in names})
  csv_path, jsonl_path = (os.path.join(out_dir, f"{name}.{ext}") for ext in ("csv", "jsonl"))
  atomic.write_text(csv_path, text.getvalue())
  atomic.write_text(jsonl_path, "".join(json.dumps(flat(row)) + "\n" for row in rows))
  return csv_path, jsonl_path


def iter_scored(rows: Sequence[dict[str, Any]], include_incomplete: bool = False) -> Iterator[dict[str, Any]]:
  """The rows a figure draws: a score, and finished (or of unknown status) unless `include_incomplete`."""
  for row in rows:
    if row["score"] is not None and (include_incomplete or row["status"] in ("finished", "unknown")):
      yield row
