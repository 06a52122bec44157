"""`prompt-tuning sweep EXPERIMENT.gin --root DIR`: train every run of an experiment grid, one after another.

  prompt-tuning sweep experiments/fig3a_prompt_length.gin --root gs://my-bucket/fig3a
  prompt-tuning sweep experiments/fig3a_prompt_length.gin --root /data/fig3a --print_commands=runs.sh
  prompt-tuning sweep my_grid.gin --root /tmp/grid --gin.TRAIN_STEPS=2 --dry_run

The experiment file and its axes: prompt_tuning/runs/sweep.py. Each run is a `prompt-tuning train`
subprocess (a failing run cannot take the others down, and each run's accelerator memory is
freed when it ends) in ROOT/<run name>, which receives `sweep.json` before it starts. Runs whose
latest checkpoint has reached TRAIN_STEPS are skipped; runs with an earlier checkpoint resume
from it (train's own resumption). A run that fails is reported in one line and the sweep goes on
with the next; the sweep then exits 1, naming the failed runs. SIGTERM or Ctrl-C stops the run
in progress the way train stops (a checkpoint of the step, then exit 143 / 130) and the sweep
with it: the same command later resumes that run and does the rest.

`--print_commands[=FILE]` starts nothing: it writes each unfinished run's sweep.json and prints
its `prompt-tuning train` command, one per line (to FILE, or stdout), for a launcher of your own
(SLURM arrays, Cloud TPU queues); running those lines gives the same directories as the sweep.
`--dry_run` lists the runs and their state and writes nothing. `--max_runs N` trains at most N
runs this time (the rest on the next call).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import Any, Callable

from prompt_tuning import gin_utils
from prompt_tuning.errors import RunError, first_line

_NAME = "prompt-tuning sweep"
_SWEEP_SELECTOR = "prompt_tuning.runs.sweep.sweep"


class _FlagError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    raise _FlagError(message)


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog=_NAME, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiment", help="the experiment gin file (e.g. experiments/fig3a_prompt_length.gin)")
  parser.add_argument("--root", required=True, help="where each run's MODEL_DIR goes (local or gs://)")
  parser.add_argument(
    "--print_commands",
    nargs="?",
    const="-",
    default=None,
    metavar="FILE",
    help="write one `prompt-tuning train` command per unfinished run (to FILE, default stdout) instead of running",
  )
  parser.add_argument("--dry_run", action="store_true", help="list the runs and their state; write nothing")
  parser.add_argument("--max_runs", type=int, default=None, help="train at most this many runs now")
  parser.add_argument(
    "--select",
    action="append",
    default=[],
    metavar="AXIS=LABEL[,LABEL]",
    help="keep only the runs with these labels of AXIS (repeatable), e.g. --select model=small,base",
  )
  return gin_utils.add_gin_flags(parser)


def _targets_sweep(binding: str) -> bool:
  """Whether a binding sets `sweep.*` (any unambiguous tail of prompt_tuning.runs.sweep.sweep, any scope)."""
  selector = binding.partition("=")[0].strip().rsplit("/", 1)[-1].rpartition(".")[0]
  return bool(selector) and _SWEEP_SELECTOR.split(".")[-len(selector.split(".")) :] == selector.split(".")


def _portable(name: str, search_paths: list[str]) -> str:
  """A gin file as runs name it: a bundled file by its bundled name, any other by its absolute path."""
  path = gin_utils.resolve_gin_file(name, search_paths)
  if "://" in path:
    return path
  bundled = gin_utils.bundled_gin_dir()
  return os.path.relpath(path, bundled) if path.startswith(bundled + os.sep) else path


def load_runs(args: argparse.Namespace) -> list:
  """The experiment's runs, each one's gin parsed and checked; raises GinConfigError or RunError."""
  import dataclasses

  import gin
  from prompt_tuning.cli import gin_runner
  from prompt_tuning.runs import sweep as sweep_lib

  search_paths = gin_utils.split_search_paths(args.gin_search_paths)
  experiment = _portable(args.experiment, search_paths)
  user_files = [_portable(f, search_paths) for f in args.gin_file]
  gin.clear_config()
  gin_runner.register_all()
  configure = gin_utils.register_configurables({"sweep": sweep_lib.sweep}, module="prompt_tuning.runs.sweep")["sweep"]
  gin_utils.parse_gin_flags([experiment, *user_files], args.gin_bindings, search_paths, finalize=False)
  config = configure()
  gin.clear_config()
  runs = sweep_lib.expand(
    config,
    os.path.splitext(os.path.basename(args.experiment))[0],
    args.root,
    base_files=[experiment],
    extra_files=user_files,
    extra_bindings=[b for b in args.gin_bindings if not _targets_sweep(b)],
    search_paths=search_paths,
  )
  runs = _selected(runs, args.select)
  portable = {}
  checked = []
  for run in runs:  # every run's config parses (REQUIRED macros, typos) before any run starts
    files = tuple(portable.setdefault(f, _portable(f, search_paths)) for f in run.gin_files)
    run = dataclasses.replace(run, gin_files=files)
    try:
      gin_runner.parse_gin(gin_runner.CommandLine(list(run.gin_files), list(run.bindings), search_paths, None))
      gin_runner.check_entry_point("train")
      steps = gin_runner.binding("TrainSpec.steps")
    except gin_utils.GinConfigError as e:
      raise RunError(f"run {run.name}: {e}") from None
    finally:
      gin.clear_config()
    checked.append((run, steps))
  return checked


def _selected(runs: list, selections: list[str]) -> list:
  """The runs whose labels match every --select AXIS=LABEL[,LABEL] (axis names ignore case)."""
  from prompt_tuning.runs import sweep as sweep_lib

  for selection in selections:
    axis, sep, labels = selection.partition("=")
    names = {name.lower(): name for name in runs[0].axes}
    if not sep or axis.strip().lower() not in names:
      raise RunError(f"--select {selection!r}: expected AXIS=LABEL[,LABEL] with AXIS one of {', '.join(runs[0].axes)}")
    name = names[axis.strip().lower()]
    known = list(dict.fromkeys(sweep_lib.dir_label(run.axes[name]) for run in runs))
    wanted = [label.strip() for label in labels.split(",") if label.strip()]
    unknown = [label for label in wanted if label not in known]
    if unknown or not wanted:
      raise RunError(
        f"--select {selection!r}: axis {name} has no label {unknown[0] if unknown else ''!r} "
        f"(its labels: {', '.join(known)})"
      )
    runs = [run for run in runs if sweep_lib.dir_label(run.axes[name]) in wanted]
  return runs


def latest_step(model_dir: str) -> int | None:
  """The newest step under MODEL_DIR/checkpoints (committed orbax steps are named by their number)."""
  from etils import epath

  from prompt_tuning.checkpoints.train_state import CHECKPOINTS_DIR

  directory = epath.Path(model_dir) / CHECKPOINTS_DIR
  if not directory.is_dir():
    return None
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
  return max(steps) if steps else None


def _state(steps: Any, latest: int | None) -> str:
  if latest is None:
    return "new"
  if isinstance(steps, int) and latest >= steps:
    return f"finished (step {latest})"
  return f"at step {latest} of {steps}"


def _say(message: str) -> None:
  print(f"{_NAME}: {message}", file=sys.stderr, flush=True)


def _train(run, on_signal: Callable[[int], None]) -> int:
  """Runs `prompt-tuning train` for `run` in a subprocess; returns its exit status (128+N when signalled)."""
  process = subprocess.Popen([sys.executable, "-m", "prompt_tuning.cli.main", "train", *run.train_args()])

  def forward(signum, frame):  # SIGTERM to the sweep (a preempted job): the run saves, then stops
    on_signal(signum)
    process.send_signal(signum)

  previous = signal.signal(signal.SIGTERM, forward)
  try:
    while True:
      try:
        status = process.wait()
        break
      except KeyboardInterrupt:  # Ctrl-C reached the run too (one process group): wait for its save
        on_signal(signal.SIGINT)
  finally:
    signal.signal(signal.SIGTERM, previous)
  return 128 - status if status < 0 else status


def _execute(checked: list, max_runs: int | None) -> int:
  from prompt_tuning.runs import records
  from prompt_tuning.runs import sweep as sweep_lib

  total, started, skipped, left, failed, stop = len(checked), 0, 0, 0, [], []
  for index, (run, steps) in enumerate(checked, 1):
    latest = latest_step(run.model_dir)
    state = _state(steps, latest)
    if state.startswith("finished"):
      skipped += 1
      _say(f"[{index}/{total}] {run.name}: {state}, skipped")
      continue
    if max_runs is not None and started >= max_runs:
      left += 1
      continue
    started += 1
    sweep_lib.write_record(run)
    resuming = f", resuming at step {latest}" if latest is not None else ""
    _say(f"[{index}/{total}] {run.name}: training to step {steps}{resuming} in {run.model_dir}")
    status = _train(run, stop.append)
    if stop or status in (130, 143):
      _say(f"stopped in run {run.name} (exit status {status}): run the same command again to resume it and the rest")
      return status if status in (130, 143) else 128 + stop[0]
    if status != 0:
      records.record_early_failure(run.model_dir, steps, f"prompt-tuning train exited with status {status}")
      failed.append(f"{run.name} (exit status {status})")
      _say(f"[{index}/{total}] {run.name} failed (exit status {status}; its error is above); going on with the others")
  trained = started - len(failed)
  summary = f"{trained} run{'s' if trained != 1 else ''} trained, {skipped} already finished"
  if left:
    summary += f", {left} left by --max_runs={max_runs} (run again for them)"
  if failed:
    _say(f"{summary}; {len(failed)} failed: {', '.join(failed)}")
    return 1
  _say(summary)
  return 0


def _print_commands(checked: list, destination: str) -> int:
  from prompt_tuning.runs import sweep as sweep_lib

  lines, finished = [], 0
  for run, steps in checked:
    if _state(steps, latest_step(run.model_dir)).startswith("finished"):
      finished += 1
      continue
    sweep_lib.write_record(run)
    lines.append(run.command())
  text = "".join(f"{line}\n" for line in lines)
  if destination == "-":
    sys.stdout.write(text)
  else:
    with open(destination, "w") as f:
      f.write(text)
  where = "" if destination == "-" else f" to {destination}"
  _say(f"wrote {len(lines)} command{'s' if len(lines) != 1 else ''}{where}; {finished} run(s) already finished")
  return 0


def main(argv: list[str]) -> int:
  try:
    args = _parser().parse_args(gin_utils.rewrite_gin_args(argv))
  except (_FlagError, gin_utils.GinConfigError) as e:
    print(f"{_NAME}: error: {e}", file=sys.stderr)
    return 2
  if args.max_runs is not None and args.max_runs < 1:
    print(f"{_NAME}: error: --max_runs must be at least 1, got {args.max_runs}", file=sys.stderr)
    return 2
  try:
    checked = load_runs(args)
    if args.dry_run:
      for run, steps in checked:
        print(f"{run.name}\t{_state(steps, latest_step(run.model_dir))}\t{run.command()}")
      return 0
    if args.print_commands is not None:
      return _print_commands(checked, args.print_commands)
    return _execute(checked, args.max_runs)
  except (RunError, gin_utils.GinConfigError, OSError) as e:
    print(f"{_NAME}: error: {first_line(e)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{_NAME}: interrupted (Ctrl-C)", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
