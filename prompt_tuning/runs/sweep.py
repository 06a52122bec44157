"""Experiment grids: one gin file, a cartesian product of training runs, one MODEL_DIR each.

An experiment is a gin file that trains (it includes `runs/prompt_finetune.gin` or another
training config and sets the macros every run shares) and binds `sweep.axes`:

  # gin/experiments/fig3a_prompt_length.gin
  include 'runs/prompt_finetune.gin'
  MIXTURE_OR_TASK_NAME = 'super_glue_boolq_v102'
  ...
  sweep.axes = {
      'PROMPT_LENGTH': [1, 5, 20, 100, 150],            # values of a gin key
      'model': {                                          # {label: setting}
          'small': ['models/t5_1_1/small.gin', "INITIAL_CHECKPOINT_PATH = 'gs://.../checkpoint_1100000'"],
          'base': ['models/t5_1_1/base.gin', "INITIAL_CHECKPOINT_PATH = '...'"],
      },
  }
  sweep.seeds = [0, 1, 2]   # optional: a last axis 'seed', binding TrainSpec.seed
  sweep.bindings = [...]    # optional: 'KEY = VALUE' for every run, e.g. a checkpoint path with {model}

An axis is `name: values`, in one of two forms:
- a list: each value is either a gin file (a string ending in '.gin', parsed after the
  experiment's own files; labelled by its file name without '.gin', e.g. 'base') or a value of the
  gin key `name` (a macro such as PROMPT_LENGTH, or `Configurable.parameter`), bound as
  `name = value` (labelled by the value itself when it is a number, string, bool or None, else by
  its gin text);
- a dict {label: setting}: the setting is a gin file, a binding 'KEY = VALUE', or a list of those,
  for axes that change several things at once (a model size and its checkpoint); `name` is then
  only the axis' name.
A setting may name another axis in braces, `{model}`, for that run's label of it: a checkpoint that
depends on both the model size and the pre-training objective is one binding,
"INITIAL_CHECKPOINT_PATH = 'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_{model}/checkpoint_1100000'".
An axis gin file should set only what the axis changes (as models/*.gin and prompts/*.gin do): one
that includes runs/prompt_finetune.gin again would reset the experiment's own settings.

`prompt-tuning sweep EXPERIMENT.gin --root DIR` runs the product of the axes (the last axis
varying fastest, then the seeds), each run in DIR/<name>, where <name> joins each axis' lowercased
name and its label: `DIR/prompt_length=20,model=base`. A run is exactly

  prompt-tuning train --gin_file=EXPERIMENT.gin [--gin_file=AXIS FILES] [--gin_file=YOUR FILES]
      [--gin.AXIS BINDINGS] [--gin.YOUR BINDINGS] --gin.MODEL_DIR="'DIR/<name>'"

(the axes' files and bindings in the order of the axes, then sweep.bindings; later files and bindings win; `--gin.X` given to sweep applies to every run, except `sweep.*`,
which only shape the grid; overriding an axis' own key is refused).

`DIR/<name>/sweep.json`, written before the run starts, is what tools that gather a grid's results
read (`prompt-tuning results`): one JSON object with exactly these keys

  {"experiment": "fig3a_prompt_length",          sweep.name (default: the file's name without .gin)
   "axes": {"PROMPT_LENGTH": 20, "model": "base"}, each axis' name -> its label (a JSON scalar), in
                                                     the order declared; "seed" last, with sweep.seeds
   "gin_files": ["experiments/fig3a_prompt_length.gin", "models/t5_1_1/base.gin"],
                                                     in parse order: bundled files by their bundled
                                                     name, others by absolute path
   "bindings": ["PROMPT_LENGTH = 20", "INITIAL_CHECKPOINT_PATH = '...'", "MODEL_DIR = '/DIR/...'"],
                                                     'KEY = VALUE', applied after the files, in order
   "command": "prompt-tuning train --gin_file=... --gin.MODEL_DIR=\"'/DIR/...'\""}
                                                     the same run as one shell command line

The shipped experiments name their axes by what the paper's figures plot: `model` (T5 1.1 sizes
small, base, large, xl, xxl), `method` (prompt_tuning, model_tuning), `PROMPT_LENGTH`, `init`
(random_uniform, sampled_vocab, class_labels), `pretraining` (span_corruption, lm_adapted),
`lm_adaptation_steps` (0, 100000), `task`, `seed`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
from typing import Any, Mapping, Sequence

from prompt_tuning.errors import RunError

SWEEP_FILE = "sweep.json"
SWEEP_KEYS = ("experiment", "axes", "gin_files", "bindings", "command")
SEED_AXIS = "seed"
SEED_KEY = "TrainSpec.seed"
_LABEL_UNSAFE = re.compile(r"[^\w.+-]")  # what a directory name keeps of a label ('=' and ',' separate)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """What `sweep.*` binds: the grid's axes, its name and optional seeds."""

  axes: Mapping[str, Any]
  name: str | None = None
  seeds: Sequence[int] | None = None
  bindings: Sequence[str] = ()


def sweep(
  axes: Mapping[str, Any] = None,
  name: str | None = None,
  seeds: Sequence[int] | None = None,
  bindings: Sequence[str] = (),
) -> SweepConfig:
  """The gin configurable of an experiment file (`sweep.axes`, `sweep.name`, `sweep.seeds`, `sweep.bindings`).

  bindings: 'KEY = VALUE' for every run, after the axes' own, with `{axis}` filled in (a checkpoint
    path that follows the model size).

  Only `prompt-tuning sweep` calls it; it is registered for train, evaluate and infer too, so an
  experiment file is also an ordinary training config (its `sweep.*` bindings are then inert).
  """
  return SweepConfig(axes=axes, name=name, seeds=seeds, bindings=bindings)


@dataclasses.dataclass(frozen=True)
class Choice:
  """One value of one axis: its label (a JSON scalar) and the gin files and bindings it adds."""

  label: Any
  gin_files: tuple[str, ...] = ()
  bindings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a grid: its directory and everything `sweep.json` records."""

  name: str  # the directory's name under the root, e.g. 'prompt_length=20,model=base'
  model_dir: str
  experiment: str
  axes: dict[str, Any]
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  search_paths: tuple[str, ...] = ()

  def train_args(self) -> list[str]:
    """`prompt-tuning train`'s flags for this run (after the command's name)."""
    args = [f"--gin_search_paths={','.join(self.search_paths)}"] if self.search_paths else []
    args += [f"--gin_file={f}" for f in self.gin_files]
    for binding in self.bindings:
      key, _, value = binding.partition("=")
      args.append(f"--gin.{key.strip()}={value.strip()}")
    return args

  def command(self) -> str:
    """The run as one shell command line, quoted as the README writes them (--gin.X="'text'")."""
    return " ".join(["prompt-tuning", "train", *(_shell_word(a) for a in self.train_args())])

  def record(self) -> dict[str, Any]:
    """The content of `sweep.json` (module docstring)."""
    return {
      "experiment": self.experiment,
      "axes": dict(self.axes),
      "gin_files": list(self.gin_files),
      "bindings": list(self.bindings),
      "command": self.command(),
    }


def _shell_word(arg: str) -> str:
  """`arg` for a POSIX shell, as the README writes flags: `--gin.KEY="'text'"` (only the value quoted)."""
  flag, sep, value = arg.partition("=")
  if sep and flag.startswith("--") and shlex.quote(flag) == flag:
    return f"{flag}={_shell_value(value)}"
  return _shell_value(arg)


def _shell_value(text: str) -> str:
  """`text` as is when safe, in double quotes when that suffices, else in shlex's single quotes."""
  if shlex.quote(text) == text:
    return text
  if not any(c in text for c in '"$`\\!'):
    return f'"{text}"'
  return shlex.quote(text)


def _is_json_scalar(value: Any) -> bool:
  return value is None or isinstance(value, (bool, int, float, str))


def _gin_literal(value: Any) -> str:
  """`value` as gin text (gin reads Python literals: numbers, quoted strings, lists, dicts, tuples, None)."""
  return repr(value)


def _binding_key(binding: str) -> str:
  return binding.partition("=")[0].strip()


def normalize_binding(binding: str) -> str:
  """'KEY=VALUE' (as --gin.KEY=VALUE gives it) as 'KEY = VALUE'."""
  key, sep, value = binding.partition("=")
  if not sep or not key.strip():
    raise RunError(f"bad gin binding {binding!r}: expected KEY = VALUE")
  return f"{key.strip()} = {value.strip()}"


def _setting(axis: str, label: Any, setting: Any) -> Choice:
  """A {label: setting} axis' value: a gin file, a binding 'KEY = VALUE', or a list of those."""
  items = [setting] if isinstance(setting, str) else setting
  if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, str) for i in items):
    raise RunError(
      f"sweep.axes[{axis!r}][{label!r}] must be a gin file, a binding 'KEY = VALUE' or a list of those, got {setting!r}"
    )
  files, bindings = [], []
  for item in items:
    if item.strip().endswith(".gin"):
      files.append(item.strip())
    elif "=" in item:
      bindings.append(normalize_binding(item))
    else:
      raise RunError(
        f"sweep.axes[{axis!r}][{label!r}]: {item!r} is neither a gin file (ending in .gin) nor a binding 'KEY = VALUE'"
      )
  if not _is_json_scalar(label):
    raise RunError(f"sweep.axes[{axis!r}] has a label {label!r}: labels must be strings or numbers")
  return Choice(label, tuple(files), tuple(bindings))


def _choices(axis: str, values: Any) -> list[Choice]:
  """An axis' values (a list, or a {label: setting} dict) as Choices; raises RunError."""
  if not isinstance(axis, str) or not axis.strip():
    raise RunError(f"sweep.axes has an axis named {axis!r}: axis names are non-empty strings")
  if isinstance(values, Mapping):
    choices = [_setting(axis, label, setting) for label, setting in values.items()]
  elif isinstance(values, (list, tuple)):
    choices = []
    for value in values:
      if isinstance(value, str) and value.strip().endswith(".gin"):
        choices.append(Choice(os.path.splitext(os.path.basename(value.strip()))[0], gin_files=(value.strip(),)))
      else:
        label = value if _is_json_scalar(value) else _gin_literal(value)
        choices.append(Choice(label, bindings=(f"{axis} = {_gin_literal(value)}",)))
  else:
    raise RunError(f"sweep.axes[{axis!r}] must be a list of values or a {{label: setting}} dict, got {values!r}")
  if not choices:
    raise RunError(f"sweep.axes[{axis!r}] is empty: give it at least one value")
  labels = [dir_label(c.label) for c in choices]
  repeated = sorted({label for label in labels if labels.count(label) > 1})
  if repeated:
    raise RunError(
      f"sweep.axes[{axis!r}] has two values named {repeated[0]!r} (run directories would collide): "
      f"give them labels, {axis!r}: {{'label': setting, ...}}"
    )
  return choices


def dir_label(label: Any) -> str:
  """A label as run directory names write it (characters other than letters, digits and ._+- become _)."""
  return _LABEL_UNSAFE.sub("_", str(label))


def axes_of(config: SweepConfig) -> list[tuple[str, list[Choice]]]:
  """[(axis name, its choices)] in declared order, the seeds last; raises RunError."""
  if config.axes is None:
    raise RunError("the experiment binds no sweep.axes: add sweep.axes = {'MACRO': [values], ...} to it")
  if not isinstance(config.axes, Mapping) or not config.axes:
    raise RunError(f"sweep.axes must be a non-empty dict {{axis: values}}, got {config.axes!r}")
  axes = [(name, _choices(name, values)) for name, values in config.axes.items()]
  if config.seeds is not None:
    seeds = list(config.seeds) if isinstance(config.seeds, (list, tuple)) else None
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
      raise RunError(f"sweep.seeds must be a non-empty list of integers, got {config.seeds!r}")
    if any(name.lower() == SEED_AXIS for name, _ in axes):
      raise RunError(f"sweep.seeds adds an axis {SEED_AXIS!r}, and sweep.axes has one already: keep one of them")
    axes.append((SEED_AXIS, _choices(SEED_AXIS, {s: f"{SEED_KEY} = {s}" for s in seeds})))
  lowered = [name.lower() for name, _ in axes]
  repeated = sorted({n for n in lowered if lowered.count(n) > 1})
  if repeated:
    raise RunError(f"sweep.axes has two axes named {repeated[0]!r} (ignoring case): rename one")
  return axes


def _fill(text: str, labels: Mapping[str, Any]) -> str:
  """`text` with each `{axis}` (an axis' name, in braces) replaced by this run's label of that axis."""
  pattern = re.compile("|".join(re.escape("{" + axis + "}") for axis in labels))
  return pattern.sub(lambda m: str(labels[m.group(0)[1:-1]]), text)


def join_dir(root: str, name: str) -> str:
  """root/name, for local paths and URLs (gs://) alike."""
  return f"{root.rstrip('/')}/{name}" if "://" in root else os.path.join(root, name)


def expand(
  config: SweepConfig,
  experiment: str,
  root: str,
  *,
  base_files: Sequence[str],
  extra_files: Sequence[str] = (),
  extra_bindings: Sequence[str] = (),
  search_paths: Sequence[str] = (),
) -> list[Run]:
  """The runs of a grid, in order (the last axis varies fastest).

  Args:
    config: the experiment's `sweep.*`.
    experiment: the experiment's name (sweep.json's "experiment" unless config.name is set).
    root: where the run directories go (local or gs://).
    base_files: the experiment file, as the runs name it (module docstring).
    extra_files, extra_bindings: the user's --gin_file and --gin.X flags, for every run (sweep.*
      bindings are dropped by the caller).
    search_paths: --gin_search_paths, passed on to every run.
  Raises:
    RunError: a malformed axis, two runs in one directory, or a flag that overrides an axis' key.
  """
  axes = axes_of(config)
  if isinstance(config.bindings, str) or not all(isinstance(b, str) for b in config.bindings or ()):
    raise RunError(f"sweep.bindings must be a list of 'KEY = VALUE' strings, got {config.bindings!r}")
  shared = [normalize_binding(b) for b in config.bindings or ()]
  bindings = [normalize_binding(b) for b in extra_bindings]
  axis_keys = {_binding_key(b) for _, choices in axes for c in choices for b in c.bindings}
  for binding in bindings:
    if _binding_key(binding) in axis_keys:
      raise RunError(
        f"--gin.{_binding_key(binding)} sets a key that an axis of the sweep sets: drop the flag, or change the "
        f"axis with --gin.sweep.axes=..."
      )
    if _binding_key(binding) == "MODEL_DIR":
      raise RunError("--gin.MODEL_DIR is set by sweep for each run (ROOT/<run name>): pass --root instead")
  name = config.name or experiment
  root = root if "://" in root else os.path.abspath(root)
  runs, seen = [], {}
  for combination in itertools.product(*(choices for _, choices in axes)):
    run_name = ",".join(f"{axis.lower()}={dir_label(c.label)}" for (axis, _), c in zip(axes, combination))
    if run_name in seen:  # two labels that differ only in unsafe characters
      raise RunError(f"two runs of the sweep would share the directory {run_name!r}: label the axis values apart")
    seen[run_name] = True
    model_dir = join_dir(root, run_name)
    labels = {axis: c.label for (axis, _), c in zip(axes, combination)}
    runs.append(
      Run(
        name=run_name,
        model_dir=model_dir,
        experiment=name,
        axes=labels,
        gin_files=(*base_files, *(_fill(f, labels) for c in combination for f in c.gin_files), *extra_files),
        bindings=(
          *(_fill(b, labels) for c in combination for b in c.bindings),
          *(_fill(b, labels) for b in shared),
          *bindings,
          f"MODEL_DIR = {_gin_literal(model_dir)}",
        ),
        search_paths=tuple(search_paths),
      )
    )
  return runs


def write_record(run: Run) -> str:
  """Writes `run.model_dir/sweep.json` whole (creating the directory); returns its path."""
  from etils import epath

  from prompt_tuning import atomic

  directory = epath.Path(run.model_dir)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / SWEEP_FILE
  atomic.write_text(path, json.dumps(run.record(), indent=2) + "\n")
  return os.fspath(path)


def read_record(model_dir: str) -> dict[str, Any] | None:
  """`model_dir/sweep.json` (module docstring), or None when there is none; raises RunError if malformed."""
  from prompt_tuning import atomic

  path = os.path.join(model_dir, SWEEP_FILE)
  record = atomic.read_json(path)
  if record is None:
    return None
  if not isinstance(record, dict) or set(record) != set(SWEEP_KEYS) or not isinstance(record.get("axes"), dict):
    raise RunError(f"{path} is not a sweep record: expected an object with keys {', '.join(SWEEP_KEYS)}")
  return record
