"""A benchmark's score from per-task runs: the mean over the task axis (the paper's SuperGLUE score).

The paper trains each SuperGLUE task's prompt alone and plots the SuperGLUE score: for every
setting (model size, method, prompt length, seed...), the unweighted mean over the tasks of each
task's score, a task with several metrics counting as their mean (collect.py's `task_score`).
An experiment that sweeps a task axis (`task`, as experiments/superglue.gin does) therefore gets,
beside its per-run table, one row per setting:

  run          'mean over <axis>: <the other axes>'
  <axis>...    every axis but the task axis
  task         'mean of N tasks' (N: the tasks the table holds)
  status       finished when every task's run finished; incomplete while one is missing or running;
               failed when one failed
  score        the mean of the tasks' task_score, only when every task has one (a partial mean
               would not be the benchmark's score)
  tasks_scored how many tasks had a score
  model_params, trainable_params, trainable_percent, prompt_length, seed, method, model: the
               members' (one task's prompt: trainable parameters are per task, as in Figure 4)
  wall_seconds the members' sum
"""

from __future__ import annotations

from typing import Any, Sequence

TASK_AXES = ("task", "TASK")


def task_axis(rows: Sequence[dict[str, Any]]) -> str | None:
  """The task axis the rows vary over, or None when no task axis has two values."""
  for name in TASK_AXES:
    if len({repr(r["axes"].get(name)) for r in rows if name in r["axes"]}) > 1:
      return name
  return None


def _same(values: list) -> Any:
  return values[0] if len(set(map(repr, values))) == 1 else None


def mean_over_tasks(rows: Sequence[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
  """One row per setting of the other axes: the mean over `axis` (see the module docstring).

  Rows without `axis` (runs of another experiment under the same root) are left out.
  """
  tasks = list(dict.fromkeys(r["axes"][axis] for r in rows if axis in r["axes"]))
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    if axis in row["axes"]:
      others = {k: v for k, v in row["axes"].items() if k != axis}
      groups.setdefault(repr(sorted(others.items(), key=lambda kv: kv[0])), []).append(row)
  out = []
  for members in groups.values():
    others = {k: v for k, v in members[0]["axes"].items() if k != axis}
    scores = {m["axes"][axis]: m["task_score"] for m in members if m["task_score"] is not None}
    statuses = [m["status"] for m in members]
    if "failed" in statuses:
      status = "failed"
    elif len({m["axes"][axis] for m in members}) == len(tasks) and all(s in ("finished", "unknown") for s in statuses):
      status = "finished" if "unknown" not in statuses else "unknown"
    else:
      status = "incomplete"
    complete = len(scores) == len(tasks)
    walls = [m["wall_seconds"] for m in members if m["wall_seconds"] is not None]
    out.append(
      {
        "run": f"mean over {axis}: " + (",".join(f"{k}={v}" for k, v in others.items()) or "all"),
        "axes": others,
        "experiment": _same([m["experiment"] for m in members]),
        "status": status,
        "task": f"mean of {len(tasks)} tasks",
        "prompt_length": _same([m["prompt_length"] for m in members]),
        "seed": _same([m["seed"] for m in members]),
        "method": _same([m["method"] for m in members]),
        "model": _same([m["model"] for m in members]),
        "metric": "task_score",
        "score": sum(scores.values()) / len(scores) if complete else None,
        "tasks_scored": len(scores),
        "best_step": None,
        "task_score": None,
        "final_step": None,
        "train_steps": _same([m["train_steps"] for m in members]),
        "wall_seconds": sum(walls) if walls else None,
        "model_params": _same([m["model_params"] for m in members]),
        "trainable_params": _same([m["trainable_params"] for m in members]),
        "trainable_percent": _same([m["trainable_percent"] for m in members]),
        "best": {},
      }
    )
  return out
