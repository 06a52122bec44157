"""`prompt-tuning results ROOT`: every run under ROOT in one table, and the paper's figures.

  prompt-tuning results runs/fig1                       runs/fig1/results/{results.csv,results.jsonl,*.png,*.svg}
  prompt-tuning results runs/fig3a --out /tmp/fig3a --metric rank/accuracy --ablation prompt_length
  prompt-tuning results runs/fig1 --plot none           the table alone (no matplotlib needed)
  prompt-tuning results runs/fig1 --reference paper.csv overlay reference points (columns figure, line, x, y)

The table (prompt_tuning/results/collect.py) has a row per run: its sweep axes, status, method, model,
parameter counts, the best value and step of every metric, final step and wall time. The figures
(prompt_tuning/results/plots.py) draw finished runs (--include_incomplete: every run with a score).
Runs that sweep a task axis (the SuperGLUE experiments) also get results_mean_over_task.{csv,jsonl},
a row per setting with the mean of the tasks' scores (prompt_tuning/results/benchmark.py), and the
figures draw that mean, the paper's SuperGLUE score.
"""

from __future__ import annotations

import argparse
import os
import sys

from prompt_tuning.errors import RunError


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="prompt-tuning results", description=__doc__.split("\n")[0])
  parser.add_argument("root", help="a directory of runs (searched recursively), local or gs://")
  parser.add_argument("--out", help="where the table and figures go (default: ROOT/results)")
  parser.add_argument("--metric", help="the score column and the figures' y (default: each run's selection metric)")
  parser.add_argument(
    "--plot", action="append", help="scale, ablation, params (repeat for several) or none; default: all three"
  )
  parser.add_argument("--ablation", action="append", help="an axis for an ablation panel (default: every varying axis)")
  parser.add_argument("--reference", help="a CSV of reference points to overlay: columns figure, line, x, y")
  parser.add_argument("--include_incomplete", action="store_true", help="plot runs that did not finish too")
  return parser


def main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  from prompt_tuning.results import benchmark, collect

  out = args.out or os.path.join(args.root, "results")
  figures = [f for f in (args.plot or list(("scale", "ablation", "params"))) if f != "none"]
  try:
    rows = collect.gather(args.root, args.metric)
    if "://" in out:
      raise RunError(f"--out {out} must be a local directory (the figures are written by matplotlib)")
    written = list(collect.write_table(rows, out))
    drawn = rows
    axis = benchmark.task_axis(rows)
    if axis is not None:  # per-task runs: the figures draw the benchmark's score, the mean over tasks
      drawn = benchmark.mean_over_tasks(rows, axis)
      written += collect.write_table(drawn, out, f"results_mean_over_{axis}")
    if figures:
      from prompt_tuning.results import plots

      reference = plots.read_reference(args.reference) if args.reference else ()
      scored = list(collect.iter_scored(drawn, args.include_incomplete))
      written += plots.draw(scored, out, figures, args.ablation, reference)
  except RunError as e:
    print(f"prompt-tuning results: error: {e}", file=sys.stderr)
    return 1
  counts: dict[str, int] = {}
  for row in rows:
    counts[row["status"]] = counts.get(row["status"], 0) + 1
  print(f"{len(rows)} runs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) under {args.root}")
  for path in written:
    print(f"  {path}")
  return 0
