"""Checks a run makes before it builds or writes anything, each failing in one line.

A long run should not load an 11B checkpoint, compile, and only then find that MODEL_DIR is a
file, that its parent is read-only, that BATCH_SIZE does not split over the devices, or that the
directory holds a prompt of another length. These checks read (never create) MODEL_DIR:

  writable_model_dir(model_dir)       train, evaluate: MODEL_DIR can be created or written
  trained_model_dir(model_dir)        evaluate, infer: MODEL_DIR holds train checkpoints
  batch_divides(batch_size, mesh)     train: BATCH_SIZE splits evenly over the 'data' axis
  same_run(model_dir, model, config)  resume, evaluate, infer: the prompt and the frozen model are
                                      the ones MODEL_DIR was trained with (its run_config.json)

Remote directories (gs://) are checked for what can be asked cheaply (existence); their
write failures are reported when they happen.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import jax
from etils import epath

from prompt_tuning import partitioning
from prompt_tuning.checkpoints.train_state import CHECKPOINTS_DIR, read_run_config
from prompt_tuning.errors import RunError, doing

# What MODEL_DIR's own files and folders are: each that exists must be writable too.
_WRITTEN = (
  CHECKPOINTS_DIR,
  "prompts",
  "tensorboard",
  "metrics.jsonl",
  "run_config.json",
  "config.gin",
  "best.json",
  "run_status.json",
)


def _remote(path: str) -> bool:
  return "://" in path


def _named(model_dir: Any) -> str:
  """MODEL_DIR as a non-empty string: an empty one would write into the working directory."""
  if not isinstance(model_dir, (str, os.PathLike)) or not os.fspath(model_dir).strip():
    raise RunError(f"MODEL_DIR is empty ({model_dir!r}): pass --gin.MODEL_DIR=\"'/path/to/dir'\"")
  return os.fspath(model_dir)


def _not_writable(path: str) -> str | None:
  """Why `path` (an existing file or folder) cannot be written, or None."""
  try:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
      return os.strerror(errno.EROFS)
  except OSError:
    pass
  mode = os.W_OK | (os.X_OK if os.path.isdir(path) else 0)
  return None if os.access(path, mode) else os.strerror(errno.EACCES)


def writable_model_dir(model_dir: Any) -> str:
  """Raises RunError unless MODEL_DIR is a directory this process can write, or can create.

  Nothing is created: the nearest existing ancestor is checked instead. Returns MODEL_DIR.
  """
  model_dir = _named(model_dir)
  if _remote(model_dir):
    return model_dir
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    raise RunError(f"MODEL_DIR {model_dir} is a file, not a directory")
  if os.path.isdir(model_dir):
    for name in ("", *_WRITTEN):
      path = os.path.join(model_dir, name) if name else model_dir
      reason = _not_writable(path) if os.path.exists(path) else None
      if reason:
        raise RunError(f"cannot write MODEL_DIR {model_dir}: {reason}: {path}")
    return model_dir
  parent = os.path.dirname(os.path.abspath(model_dir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise RunError(f"cannot create MODEL_DIR {model_dir}: {parent} is a file, not a directory")
  reason = _not_writable(parent)
  if reason:
    raise RunError(f"cannot create MODEL_DIR {model_dir}: {reason}: {parent}")
  return model_dir


def trained_model_dir(model_dir: Any) -> str:
  """Raises RunError unless MODEL_DIR has a checkpoints/ folder (what evaluate and infer read).

  Checked before anything is loaded, and so that a mistyped MODEL_DIR is not created (orbax
  would create `<dir>/checkpoints` on the way to finding it empty). Returns MODEL_DIR.
  """
  model_dir = _named(model_dir)
  with doing(f"read MODEL_DIR {model_dir}"):
    directory = epath.Path(model_dir)
    if not directory.exists():
      raise RunError(f"MODEL_DIR {model_dir} does not exist: train first, or check the path")
    if not directory.is_dir():
      raise RunError(f"MODEL_DIR {model_dir} is a file, not a directory")
    if not (directory / CHECKPOINTS_DIR).is_dir():
      raise RunError(f"MODEL_DIR {model_dir} has no {CHECKPOINTS_DIR}/ (no train checkpoint): train first")
  return model_dir


def has_checkpoints(model_dir: str) -> bool:
  """Whether MODEL_DIR/checkpoints holds a step folder (a run to resume)."""
  with doing(f"read MODEL_DIR {model_dir}"):
    directory = epath.Path(model_dir) / CHECKPOINTS_DIR
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def batch_divides(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """Raises ValueError unless BATCH_SIZE splits evenly over the mesh's 'data' axis (all hosts)."""
  replicas = mesh.shape[partitioning.DATA_AXIS]
  if batch_size % replicas:
    hosts = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
    lower, upper = batch_size - batch_size % replicas, batch_size + replicas - batch_size % replicas
    raise ValueError(
      f"BATCH_SIZE={batch_size} does not split over the {replicas} data-parallel devices{hosts} "
      f"(mesh {dict(mesh.shape)}): use a multiple of {replicas}, e.g. {lower or upper} or {upper}"
    )


def same_run(
  model_dir: str,
  prompt_length: int,
  prompt_placement: str,
  trainable_params: str,
  config=None,
  *,
  prompt_tasks: tuple[str, ...] | None = None,
  shared_length: int = 0,
) -> None:
  """Raises RunError when MODEL_DIR's run_config.json records another prompt or frozen model.

  config: the frozen model's T5Config, once loaded (None: check the prompt settings only, before
  loading it). A MODEL_DIR without run_config.json (another tool's) is not checked.
  prompt_tasks, shared_length: a multi-task run's tasks by prompt row (None: one prompt) and its
  shared part.
  """
  with doing(f"read MODEL_DIR {model_dir}"):
    previous = read_run_config(model_dir)
  if previous is None:
    return
  settings = (
    ("PROMPT_LENGTH", previous.prompt_length, prompt_length),
    ("PROMPT_PLACEMENT", previous.prompt_placement, prompt_placement),
    ("TRAINABLE_PARAMS", previous.trainable_params, trainable_params),
    ("MULTI_TASK_PROMPTS", previous.prompt_tasks is not None, prompt_tasks is not None),
    ("SHARED_PROMPT_LENGTH", previous.shared_prompt_length, shared_length),
  )
  for name, was, now in settings:
    if was != now:
      raise RunError(
        f"MODEL_DIR {model_dir} was trained with {name}={was!r}, this run has {name}={now!r}: "
        f"use the same setting (or another MODEL_DIR)"
      )
  if prompt_tasks is not None and previous.prompt_tasks is not None and previous.prompt_tasks != prompt_tasks:
    raise RunError(
      f"MODEL_DIR {model_dir} trained prompts for tasks {', '.join(previous.prompt_tasks)} (in this order), "
      f"this mixture has {', '.join(prompt_tasks)}: use the same mixture (or another MODEL_DIR)"
    )
  if config is None:
    return
  for field, was, now in previous.model_config.architecture_differences(config):
    source = (
      f"INITIAL_CHECKPOINT_PATH={previous.initial_checkpoint_path!r}"
      if previous.initial_checkpoint_path
      else "random weights from MODEL_CONFIG"
    )
    raise RunError(
      f"MODEL_DIR {model_dir} was trained on a frozen model with {field}={was!r} ({source}), "
      f"this run's has {field}={now!r}: use the model it was trained with (or another MODEL_DIR)"
    )
