"""The benchmark's result tables: one line per result (a RunResult as its dict), its name, then one
right-aligned cell per column, or its error.

Every mode prints its rows through `table`, each with its own columns:

  tables.table(data["results"], 14, [("step ms", "10.2f", tables.field("step_ms")), ...])
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

Result = Mapping[str, Any]
# (title, format spec such as '10.2f' or '8.1%', the cell's value from a result: a number or None)
Column = tuple[str, str, Callable[[Result], Any]]


def field(name: str) -> Callable[[Result], Any]:
  """A column's value: the result's own field ('step_ms', 'examples_per_s', 'peak_gib', ...)."""
  return lambda result: result[name]


def extra(name: str) -> Callable[[Result], Any]:
  """A column's value: one of the result's extras (None where the row has none)."""
  return lambda result: result["extra"].get(name)


def _width(title: str, spec: str) -> int:
  digits = spec.split(".")[0].rstrip("dfs%")
  return max(len(title), int(digits or 0))


def cell(value: Any, spec: str, width: int = 0) -> str:
  """`value` formatted by `spec`, '-' when None, right-aligned to `width`."""
  return ("-" if value is None else format(value, spec)).rjust(width)


def table(results: Mapping[str, Result], label_width: int, columns: Sequence[Column]) -> list[str]:
  """The header and one line per result, keyed by its JSON key ('ours_bucketed' prints 'ours bucketed')."""
  widths = [_width(title, spec) for title, spec, _ in columns]
  lines = [" ".join([" " * label_width, *(title.rjust(w) for (title, _, _), w in zip(columns, widths))])]
  for key, result in results.items():
    label = f"{key.replace('_', ' '):{label_width}s}"
    if result["error"]:
      lines.append(f"{label} {result['error']}")
      continue
    cells = [cell(value(result), spec, w) for (_, spec, value), w in zip(columns, widths)]
    lines.append(" ".join([label, *cells]))
  return lines
