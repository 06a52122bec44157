"""The paper's figures from a results table, as PNG and SVG (matplotlib, the `plots` extra).

  scale           score vs. the frozen model's parameters (log x), one line per method (and per any
                  other axis that varies, seeds aside): the mean over seeds, a min-max band, each run a dot
                  (the paper's Figure 1)
  ablation_<axis> score vs. that axis (named in lower case), one line per model size (Figure 3 a-d: prompt length, prompt
                  initialization, pre-training objective, LM-adaptation steps)
  params          trainable parameters as % of the model's, log-log, one line per method (Figure 4)

Reference points (e.g. the paper's published numbers) are overlaid from a CSV with columns
figure (scale, params or ablation_<axis>), line (its label), x and y: hollow markers, labelled
'<line>'. This package ships no such numbers: the user supplies them.

Only matplotlib's object API is used (no pyplot): no GUI backend, no global state.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from prompt_tuning.errors import RunError
from prompt_tuning.results.collect import METHOD_AXES, MODEL_AXES, SEED_AXES

FORMATS = ("png", "svg")
FIGURES = ("scale", "ablation", "params")
_NOT_LINES = frozenset((*MODEL_AXES, *SEED_AXES, *METHOD_AXES))


def _figure():
  try:
    from matplotlib.figure import Figure
  except ImportError:
    raise RunError(
      'plots need matplotlib, which is not installed: pip install -c constraints.txt ".[plots]" '
      "(or pass --plot none for the table alone)"
    ) from None
  return Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")


def _number(value: Any) -> float | None:
  if isinstance(value, bool) or value is None:
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def varying_axes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Axes with more than one value among `rows`, in first-seen order."""
  seen: dict[str, set] = {}
  for row in rows:
    for name, value in row["axes"].items():
      seen.setdefault(name, set()).add(repr(value))
  return [name for name, values in seen.items() if len(values) > 1]


def _line_label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
  parts = []
  for key in keys:
    value = row.get(key) if key in ("method", "model") else row["axes"].get(key)
    parts.append(str(value) if key in ("method", "model") else f"{key}={value}")
  return ", ".join(parts) or "runs"


def series(
  rows: Iterable[Mapping[str, Any]], x_of, y_of, line_keys: Sequence[str]
) -> dict[str, list[tuple[Any, float, float, float, list[float]]]]:
  """{line label: [(x, mean, min, max, values)] sorted by x}: rows grouped by line and x (seeds pooled)."""
  groups: dict[str, dict[Any, list[float]]] = {}
  for row in rows:
    x, y = x_of(row), _number(y_of(row))
    if x is None or y is None:
      continue
    groups.setdefault(_line_label(row, line_keys), {}).setdefault(x, []).append(y)
  out = {}
  for label, by_x in groups.items():
    points = [(x, sum(v) / len(v), min(v), max(v), v) for x, v in by_x.items()]
    out[label] = sorted(points, key=lambda p: (_number(p[0]) is None, _number(p[0]) or 0, str(p[0])))
  return out


def read_reference(path: str) -> list[dict[str, str]]:
  """Reference points from a CSV with columns figure, line, x, y."""
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise RunError(f"cannot read --reference {path}: {e.strerror}") from None
  needed = {"figure", "line", "x", "y"}
  if rows and not needed <= set(rows[0]):
    raise RunError(f"--reference {path} needs columns {', '.join(sorted(needed))}; it has {', '.join(rows[0])}")
  for number, row in enumerate(rows, 2):
    if _number(row["y"]) is None:
      raise RunError(f"--reference {path} line {number}: y {row['y']!r} is not a number")
  return rows


def _draw(axes, lines, categorical: list | None, reference: Sequence[Mapping[str, str]]) -> None:
  position = {v: i for i, v in enumerate(categorical)} if categorical is not None else None

  def where(x):
    return position[x] if position is not None else _number(x)

  for label, points in lines.items():
    xs = [where(p[0]) for p in points]
    (line,) = axes.plot(xs, [p[1] for p in points], marker="o", label=label)
    if any(len(p[4]) > 1 for p in points):  # the spread over seeds
      axes.fill_between(xs, [p[2] for p in points], [p[3] for p in points], color=line.get_color(), alpha=0.2)
    for x, point in zip(xs, points):
      axes.scatter([x] * len(point[4]), point[4], color=line.get_color(), s=8, alpha=0.6)
  for label in dict.fromkeys(r["line"] for r in reference):
    mine = [r for r in reference if r["line"] == label]
    xs = [position.get(r["x"]) if position is not None else _number(r["x"]) for r in mine]
    kept = [(x, _number(r["y"])) for x, r in zip(xs, mine) if x is not None]
    if kept:
      axes.plot(*zip(*kept), linestyle="--", marker="s", fillstyle="none", label=label)
  if categorical is not None:
    axes.set_xticks(range(len(categorical)), [str(v) for v in categorical])
  axes.grid(True, alpha=0.3)
  if lines or reference:
    axes.legend(fontsize="small")


def _save(figure, out_dir: str, name: str) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, f"{name}.{fmt}") for fmt in FORMATS]
  for path in paths:
    figure.savefig(path)
  return paths


def _metric_label(rows: Sequence[Mapping[str, Any]]) -> str:
  if all(r["metric"] == "task_score" for r in rows):  # benchmark.py's rows: a benchmark's score
    return f"{rows[0]['task']}: mean task score (best validation step)"
  metrics = sorted({str(r["metric"]) for r in rows})
  return f"{' / '.join(metrics)} (best validation step)"


def _reference_for(reference: Sequence[Mapping[str, str]], figure: str) -> list[Mapping[str, str]]:
  return [r for r in reference if r["figure"].lower() == figure.lower()]


def scale_figure(rows, out_dir: str, reference=()) -> list[str]:
  """Score vs. model parameters (log x), one line per method; the paper's Figure 1."""
  keys = ["method", *(a for a in varying_axes(rows) if a not in _NOT_LINES)]
  lines = series(rows, lambda r: r["model_params"], lambda r: r["score"], keys)
  figure = _figure()
  axes = figure.add_subplot()
  _draw(axes, lines, None, _reference_for(reference, "scale"))
  axes.set_xscale("log")
  axes.set_xlabel("model parameters")
  axes.set_ylabel(_metric_label(rows))
  axes.set_title("score vs. model size")
  return _save(figure, out_dir, "scale")


def ablation_figure(rows, axis: str, out_dir: str, reference=()) -> list[str]:
  """Score vs. `axis` (log x when numeric and spanning a decade), one line per model size; Figure 3."""
  keys = ["model", *(a for a in varying_axes(rows) if a not in _NOT_LINES and a != axis)]
  if "method" not in keys and len({r["method"] for r in rows}) > 1:
    keys.insert(1, "method")
  values = [r["axes"].get(axis) for r in rows if axis in r["axes"]]
  numeric = all(_number(v) is not None for v in values)
  categorical = None if numeric else list(dict.fromkeys(values))
  lines = series(rows, lambda r: r["axes"].get(axis), lambda r: r["score"], keys)
  figure = _figure()
  axes = figure.add_subplot()
  _draw(axes, lines, categorical, _reference_for(reference, f"ablation_{axis}"))
  positive = [_number(v) for v in values if (_number(v) or 0) > 0]
  if numeric and positive and len(positive) == len(values) and max(positive) / min(positive) >= 10:
    axes.set_xscale("log")
  axes.set_xlabel(axis)
  axes.set_ylabel(_metric_label(rows))
  axes.set_title(f"ablation: {axis}")
  return _save(figure, out_dir, f"ablation_{axis.lower()}")  # as the run directories spell the axis


def params_figure(rows, out_dir: str, reference=()) -> list[str]:
  """Trainable parameters as % of the model's vs. model parameters, log-log, one line per method; Figure 4."""
  lines = series(rows, lambda r: r["model_params"], lambda r: r["trainable_percent"], ["method"])
  figure = _figure()
  axes = figure.add_subplot()
  _draw(axes, lines, None, _reference_for(reference, "params"))
  axes.set_xscale("log")
  axes.set_yscale("log")
  axes.set_xlabel("model parameters")
  axes.set_ylabel("trainable parameters (% of the model)")
  axes.set_title("task-specific parameters")
  return _save(figure, out_dir, "params")


def draw(
  rows: Sequence[Mapping[str, Any]],
  out_dir: str,
  figures: Sequence[str] = FIGURES,
  ablations: Sequence[str] | None = None,
  reference: Sequence[Mapping[str, str]] = (),
) -> list[str]:
  """Draws `figures` of scored rows into out_dir; returns the files written.

  ablations: the axes of the ablation panels (None: every axis that varies, model, method and seed aside).
  """
  unknown = [f for f in figures if f not in FIGURES]
  if unknown:
    raise RunError(f"unknown --plot {', '.join(unknown)}; choose from {', '.join(FIGURES)} or none")
  if not rows:
    return []
  axes = []
  if "ablation" in figures:  # resolved before anything is drawn: a wrong name writes no figure
    axes = [a for a in varying_axes(rows) if a not in _NOT_LINES] if ablations is None else list(ablations)
    axes = [_run_axis(rows, axis) for axis in axes]
  written = []
  if "scale" in figures:
    written += scale_figure(rows, out_dir, reference)
  if "params" in figures:
    written += params_figure(rows, out_dir, reference)
  for axis in axes:
    written += ablation_figure(rows, axis, out_dir, reference)
  return written


def _run_axis(rows: Sequence[Mapping[str, Any]], name: str) -> str:
  """The runs' axis called `name`, in any case: run directories spell axes in lower case
  (prompt_length=20) while sweep.json keeps the experiment's spelling (PROMPT_LENGTH)."""
  names = {axis for r in rows for axis in r["axes"]}
  if name in names:
    return name
  matches = sorted(axis for axis in names if axis.lower() == name.lower())
  if len(matches) != 1:
    raise RunError(f"--ablation {name!r} is no axis of these runs ({', '.join(varying_axes(rows))})")
  return matches[0]
