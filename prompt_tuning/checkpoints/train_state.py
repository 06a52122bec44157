"""Saving and resuming the train state with orbax.

Layout under MODEL_DIR:
  checkpoints/<step>/state/   orbax StandardSave of {'step', 'params' (trainable subtree), 'opt_state'}
  checkpoints/<step>/data/    JSON {'position': examples consumed by the train iterator}
  checksums/step_<step>.json  SHA-256 of every leaf of that step's state (checkpoints/integrity.py)
  prompts/step_<step>.npy     the prompt [p, d] (or table [k, p, d]; a multi-task run: its task parts) of that step
  prompts/step_<step>.safetensors        its bundle (checkpoints/bundle.py); a multi-task run instead:
  prompts/step_<step>/<task>.safetensors  one bundle per task, its whole prompt (runs/multitask.py)
  run_config.json             `RunConfig`: what was trained, to rebuild it without gin (load_pretrained)

The frozen model is never saved here: it is restored from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from etils import epath

from prompt_tuning import atomic, faults, param_tree, partitioning
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints import integrity, t5x
from prompt_tuning.checkpoints.structure import CheckpointError, check_params
from prompt_tuning.errors import first_line
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.param_tree import flatten
from prompt_tuning.progress import say

CHECKPOINTS_DIR = "checkpoints"
PROMPTS_DIR = "prompts"
RUN_CONFIG_FILE = "run_config.json"
# The CheckpointManager's items (checkpoints/<step>/<item>/), and the key of the trainable
# parameters in the state item; checkpoints/variables.py reads them too.
STATE_ITEM = "state"
DATA_ITEM = "data"
PARAMS_KEY = "params"


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What a MODEL_DIR holds a training of, written by train() (CLI or Python alike).

  config.gin says the same for gin users, but only the CLI writes it and reading it back
  needs gin's global state; this record lets `load_pretrained(prompt=MODEL_DIR)` rebuild
  the frozen model, the prompt layer and the task's text handling from MODEL_DIR alone.

  Attributes:
    prompt_length, prompt_placement: the prompt layer (PromptConfig).
    trainable_params: the regex of trained parameters (restored from the checkpoints).
    task, mixture_or_task_module, vocabulary_path: the task and how to find it and its vocabulary.
    task_feature_lengths: {'inputs': n, 'targets': m} of training.
    initial_checkpoint_path: the frozen model's checkpoint, as given ('': random init from `seed`).
    model_config: the frozen model's T5Config as used.
    seed: the run's seed (random frozen weights are initialized from it).
    prompt_tasks: a multi-task run's tasks, by prompt row (runs/multitask.py); None: one prompt.
    shared_prompt_length, shared_prompt_combine: its shared prompt part (PromptConfig).
  """

  prompt_length: int
  prompt_placement: str
  trainable_params: str
  task: str
  mixture_or_task_module: str | None
  vocabulary_path: str | None
  task_feature_lengths: Mapping[str, int]
  initial_checkpoint_path: str
  model_config: T5Config
  seed: int
  prompt_tasks: tuple[str, ...] | None = None
  shared_prompt_length: int = 0
  shared_prompt_combine: str = "concat"

  def to_json(self) -> str:
    values = dataclasses.asdict(self)
    values.update(model_config=self.model_config.to_dict(), task_feature_lengths=dict(self.task_feature_lengths))
    return json.dumps(values, indent=1)

  @classmethod
  def from_json(cls, text: str, source: str = RUN_CONFIG_FILE) -> "RunConfig":
    try:
      values = json.loads(text)
      values["model_config"] = T5Config.from_dict(values["model_config"])
      if values.get("prompt_tasks") is not None:
        values["prompt_tasks"] = tuple(values["prompt_tasks"])
      return cls(**values)
    except (ValueError, KeyError, TypeError) as e:  # json errors are ValueErrors
      raise CheckpointError(f"{source}: not a run config written by train() ({first_line(e, typed=True)})") from None


def write_run_config(model_dir: str, run: RunConfig) -> None:
  """Writes MODEL_DIR/run_config.json, whole or not at all (call on process 0 only)."""
  atomic.write_text(epath.Path(model_dir) / RUN_CONFIG_FILE, run.to_json())


def read_run_config(model_dir: str) -> RunConfig | None:
  """MODEL_DIR's RunConfig, or None when it has none (e.g. a directory of another tool)."""
  path = epath.Path(model_dir) / RUN_CONFIG_FILE
  if not path.exists():
    return None
  return RunConfig.from_json(path.read_text(), str(path))


class _Untrusted(Exception):
  """A checkpoint that cannot be used (unreadable, corrupt): the caller tries the next older one."""


@contextlib.contextmanager
def _quiet_closed_event_loop() -> Iterator[None]:
  """Drops the 'Event loop is closed' tracebacks of a failed orbax restore; other unraisables pass on.

  When tensorstore fails a read, orbax's asyncio loop is closed before tensorstore's
  callbacks for the other arrays run; each prints a traceback through sys.unraisablehook,
  which would bury the one warning line of a skipped checkpoint.
  """
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _say(message: str) -> None:
  if jax.process_index() == 0:
    say(message)


class TrainCheckpointer:
  """Saves every `save_period` steps (and on demand), keeping the newest `keep`; restores the newest good one.

  Each save first records the checksums of the saved tree (checkpoints/integrity.py), so a
  restore verifies what it read. A latest checkpoint that is corrupt, truncated or unreadable
  is skipped with one warning line and the newest good one is restored instead.

  Args:
    model_dir: MODEL_DIR (local or gs://).
    save_period: `save` writes at multiples of it (0: only when forced).
    keep: the newest checkpoints kept (None: all). Rotation runs after a save completes and
      never counts a checkpoint found corrupt, so the last good one is never rotated away; nor
      does it count or delete the `protect`ed step (the best validation checkpoint).
    read_only: for evaluate and infer: creates no directory, deletes and rewrites nothing.
    warn: where the one-line warnings and notes go (default: stderr, process 0 only).
    bundle: the record of the run's prompt (checkpoints/bundle.py; its `prompt` is ignored): with
      it, every saved prompt is also written as prompts/step_<n>.safetensors, a bundle.
    task_prompts: a multi-task run's trainable tree -> {task: its whole prompt [p, d]} for each of its
      `tasks`: with it (and `bundle`), each task's goes to prompts/step_<n>/<task>.safetensors, with
      its own metrics.
  """

  def __init__(
    self,
    model_dir: str,
    *,
    save_period: int,
    keep: int | None = 3,
    read_only: bool = False,
    warn: Callable[[str], None] = _say,
    bundle: bundle_lib.PromptBundle | None = None,
    task_prompts: Callable[[Any], Mapping[str, np.ndarray]] | None = None,
    tasks: tuple[str, ...] = (),
  ):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    # orbax wants absolute paths; MODEL_DIR may be relative on the command line.
    self.model_dir = epath.Path(model_dir if "://" in model_dir else os.path.abspath(model_dir))
    self.save_period = save_period
    self.keep = keep
    self.read_only = read_only
    self._warn = warn
    self._bundle = bundle
    self._task_prompts = task_prompts
    self._tasks = tuple(tasks)
    self._untrusted: set[int] = set()  # steps this process found bad: replaced by a new save, never kept
    self.protected: int | None = None  # the best validation step (runs/selection.py): never rotated away
    # Rotation is ours (`_rotate`), not orbax's: orbax would delete before the new step's files
    # are complete, and would count checkpoints found corrupt.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None, create=not read_only, read_only=read_only, enable_async_checkpointing=False
    )
    self.manager = ocp.CheckpointManager(
      self.model_dir / CHECKPOINTS_DIR, options=options, item_names=(STATE_ITEM, DATA_ITEM)
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(
    self, step: int, state_tree: dict, data_position: int, *, force: bool = False, metrics: dict | None = None
  ) -> bool:
    """Saves at multiples of save_period (or when forced): checksums, the orbax checkpoint, the prompt .npy
    (and bundle, with `metrics`: the evaluation of this step, if there was one)."""
    if not force and (self.save_period <= 0 or step % self.save_period):
      return False
    if step in self.manager.all_steps():
      if step not in self._untrusted:
        return False
      self.manager.delete(step)  # the corrupt one this run fell back from, now retrained
      self._untrusted.discard(step)
    host_tree = partitioning.to_host(state_tree)  # on every process: it may gather (a collective)
    if jax.process_index() == 0:
      # Before orbax commits: a committed checkpoint always has its manifest (integrity.py says why).
      integrity.write_manifest(self.model_dir, step, host_tree, data_position)
    ocp = self._ocp
    self.manager.save(
      step,
      args=ocp.args.Composite(
        **{
          STATE_ITEM: ocp.args.StandardSave(state_tree),
          DATA_ITEM: ocp.args.JsonSave({"position": int(data_position)}),
        }
      ),
      force=True,
    )
    self.manager.wait_until_finished()
    faults.point("checkpoint_committed", step)  # test-only (prompt_tuning/faults.py)
    self._export_prompt(step, host_tree[PARAMS_KEY], metrics)
    self._rotate()
    return True

  def protect(self, step: int | None) -> None:
    """Keeps checkpoint `step` (the selected best one) out of the rotation, beside the newest `keep`;
    the step protected before it rotates away as any other."""
    self.protected = step

  def _rotate(self) -> None:
    """Deletes all but the newest `keep` checkpoints (and their manifests) and the protected one; bad ones
    are not counted."""
    if self.keep is None or self.keep < 1:
      return
    good = sorted(s for s in self.manager.all_steps() if s not in self._untrusted and s != self.protected)
    for step in good[: -self.keep]:
      self.manager.delete(step)  # on every process: orbax deletes once and synchronizes
      if jax.process_index() == 0:
        integrity.remove_manifest(self.model_dir, step)

  def restore(self, abstract_state: dict, step: int | None = None) -> tuple[dict, int]:
    """Restores (state_tree, data_position) of the newest good checkpoint (or of `step`) into
    `abstract_state`'s structure; then (unless read-only) rewrites any prompt .npy of a kept
    checkpoint that is missing or unreadable. Call on every process.

    Raises:
      CheckpointError: no checkpoint, none good, or they hold another model, prompt or optimizer.
    """
    ocp = self._ocp

    def attempt(step: int) -> tuple[dict, int]:
      manifest = self._manifest(step, abstract_state, within="")
      try:
        restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardRestore(abstract_state), DATA_ITEM: ocp.args.JsonRestore()}
          ),
        )
      except Exception as e:  # orbax raises many types; one line names the cause
        raise _Untrusted(self._unreadable(e, manifest)) from None
      state, position = restored[STATE_ITEM], int(restored[DATA_ITEM]["position"])
      self._verify(manifest, state, position)
      return state, position

    (state, position), step = self._newest_good(attempt, step, "resuming from")
    if not self.read_only:
      self._repair_prompts(step, state[PARAMS_KEY])
    return state, position

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores only the trained parameters of the newest good checkpoint (or of `step`), as host numpy.

    For eval and inference, which need no optimizer state (and may not know the optimizer).
    """
    all_steps = self.manager.all_steps()
    if not all_steps or (step is not None and step not in all_steps):
      raise CheckpointError(
        f"{self.model_dir / CHECKPOINTS_DIR}: no train checkpoint "
        f"{'at all' if step is None or not all_steps else f'at step {step}'}; train first or check MODEL_DIR"
      )
    return self._newest_good(lambda s: self._restore_params_at(abstract_params, s), step, "using")

  def _restore_params_at(self, abstract_params: Any, step: int) -> Any:
    # A PyTree restore of the params alone, outside the manager: a manager that restored the whole
    # state (StandardRestore) refuses another kind of restore of the same item.
    item = {PARAMS_KEY: abstract_params}
    manifest = self._manifest(step, item, within=f"{PARAMS_KEY}/")
    try:
      restored = t5x.restore_numpy(self._step_dir(step) / STATE_ITEM, jax.tree.map(lambda _: 0, item))
    except Exception as e:  # orbax raises many types; one line names the cause
      raise _Untrusted(self._unreadable(e, manifest)) from None
    self._verify(manifest, restored)
    return restored[PARAMS_KEY]

  def _newest_good(self, attempt: Callable[[int], Any], step: int | None, continuing: str) -> tuple[Any, int]:
    """attempt(step) on `step`, or from the latest step down until one is good; one warning line per
    checkpoint skipped. Returns (what attempt returned, its step)."""
    steps = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise CheckpointError(f"{self.model_dir / CHECKPOINTS_DIR}: no train checkpoint to restore")
    skipped = []
    for candidate in steps:
      try:
        with _quiet_closed_event_loop():
          value = attempt(candidate)
      except _Untrusted as e:
        skipped.append((candidate, str(e)))
        continue
      for bad, why in skipped:
        self._warn(f"warning: checkpoint {self._step_dir(bad)} {why}; {continuing} step {candidate}")
      self._untrusted.update(bad for bad, _ in skipped)
      return value, candidate
    bad, why = skipped[0]
    if step is not None:
      then = "pass another step, or none for the newest good one"
    elif len(skipped) > 1:
      then = f"the {len(skipped) - 1} older one(s) are not good either"
    else:
      then = "there is no older checkpoint to fall back to"
    raise CheckpointError(f"checkpoint {self._step_dir(bad)} {why}; {then}")

  def _manifest(self, step: int, abstract: Any, within: str) -> dict | None:
    """The step's checksum manifest after checking it describes `abstract`'s tree; None for an
    earlier version's checkpoint (said in one line: it restores unverified)."""
    try:
      manifest = integrity.read_manifest(self.model_dir, step)
    except CheckpointError as e:
      raise _Untrusted(f"is untrusted: {e}") from None
    if manifest is None:
      self._warn(f"note: checkpoint {self._step_dir(step)} has no checksums (an earlier version wrote it): unverified")
      return None
    mismatch = integrity.structure_mismatch(manifest, abstract, within)
    if mismatch:  # not corruption: every checkpoint of this run would differ alike, so stop here
      raise CheckpointError(
        f"checkpoint {self._step_dir(step)} does not fit this run: {mismatch}; was MODEL_DIR trained with "
        f"another model, prompt length, TRAINABLE_PARAMS or optimizer?"
      )
    return manifest

  def _unreadable(self, error: Exception, manifest: dict | None) -> str:
    # Without a manifest a failed read may also be another run's tree; say so as before.
    hint = "" if manifest else " (or was the run started with another model, prompt length or optimizer?)"
    return f"cannot be read ({first_line(error, typed=True)}){hint}"

  def _verify(self, manifest: dict | None, restored: Any, position: int | None = None) -> None:
    problem = manifest and integrity.verify(manifest, restored, position)
    if problem:
      raise _Untrusted(f"is corrupt: {problem}")

  def _repair_prompts(self, restored_step: int, restored_params: Any) -> None:
    """Rewrites the prompt .npy of every kept checkpoint whose file is missing, unreadable or differs.

    A kill between a checkpoint's commit and its .npy write leaves exactly that. The decision is
    taken on every process alike (a restore is collective); process 0 writes.
    """
    prompt = flatten(restored_params).get("prompt/prompt")
    if prompt is None:
      return
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), restored_params)
    broken = []
    for step in sorted(self.manager.all_steps()):
      if step in self._untrusted or step > restored_step:
        continue
      try:
        manifest = integrity.read_manifest(self.model_dir, step)
      except CheckpointError:
        continue  # an older checkpoint found bad later; nothing to rewrite from
      expected = manifest["leaves"].get(integrity.PROMPT_LEAF) if manifest else None
      problem = integrity.prompt_file_problem(self._prompt_path(step), expected, np.shape(prompt))
      problem = problem or self._bundle_problem(step, expected)
      if problem:
        broken.append((step, problem))
    if broken and jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("prompt_tuning:prompt_files_checked")  # read before anyone writes
    for step, problem in broken:
      try:
        params = restored_params if step == restored_step else self._restore_params_at(abstract, step)
      except (_Untrusted, CheckpointError) as e:
        self._warn(f"warning: cannot rewrite {self._prompt_path(step)} ({problem}): checkpoint {step} {e}")
        continue
      if jax.process_index() == 0:
        self._export_prompt(step, params)
      self._warn(f"note: rewrote {self._prompt_path(step)} ({problem}) from checkpoint {self._step_dir(step)}")

  def _export_prompt(self, step: int, trainable: Any, metrics: dict | None = None) -> None:
    """Writes prompts/step_<step>.npy and, with a bundle record, its bundle; each whole or not at all
    (process 0)."""
    prompt = flatten(trainable).get("prompt/prompt")
    if prompt is None or jax.process_index() != 0:
      return
    prompt = np.asarray(prompt, np.float32)
    buffer = io.BytesIO()
    np.save(buffer, prompt)
    atomic.write_bytes(self._prompt_path(step), buffer.getvalue())
    if self._bundle is not None and self._task_prompts is not None:
      for task, whole in self._task_prompts(trainable).items():
        # The mixture's evaluation names a task's metrics 'decode/<task>/accuracy': the task's own
        # are named as a single-task run's ('decode/accuracy').
        own = {
          "/".join(p for p in k.split("/") if p != task): v for k, v in (metrics or {}).items() if task in k.split("/")
        }
        bundle = dataclasses.replace(
          self._bundle, prompt=np.asarray(whole, np.float32), task=task, step=step, metrics=own
        )
        atomic.write_bytes(self._task_bundle_path(step, task), bundle.to_bytes())
    elif self._bundle is not None and prompt.ndim == 2:
      bundle = dataclasses.replace(self._bundle, prompt=prompt, step=step, metrics=dict(metrics or {}))
      atomic.write_bytes(self._bundle_path(step), bundle.to_bytes())

  def _bundle_problem(self, step: int, expected: Any) -> str | None:
    """Why prompts/step_<step>.safetensors must be rewritten (missing, unreadable, another prompt), or None."""
    if self._bundle is None:
      return None
    if self._task_prompts is not None:  # per task: each must be there and readable
      for path in self._task_bundle_paths(step):
        try:
          bundle_lib.PromptBundle.from_bytes(path.read_bytes(), str(path))
        except (CheckpointError, OSError) as e:
          return f"the bundle {path.name} is missing or unreadable: {first_line(e)}"
      return None
    path = self._bundle_path(step)
    if not path.exists():
      return "its bundle is missing"
    try:
      prompt = bundle_lib.PromptBundle.from_bytes(path.read_bytes(), str(path)).prompt
    except (CheckpointError, OSError) as e:
      return f"its bundle is unreadable: {first_line(e)}"
    if expected is not None and integrity.leaf_checksum(prompt)["sha256"] != expected["sha256"]:
      return "its bundle holds another prompt"
    return None

  def _prompt_path(self, step: int) -> epath.Path:
    return self.model_dir / PROMPTS_DIR / f"step_{step}.npy"

  def _bundle_path(self, step: int) -> epath.Path:
    return self.model_dir / PROMPTS_DIR / f"step_{step}{bundle_lib.SUFFIX}"

  def _task_bundle_path(self, step: int, task: str) -> epath.Path:
    return self.model_dir / PROMPTS_DIR / f"step_{step}" / f"{task}{bundle_lib.SUFFIX}"

  def _task_bundle_paths(self, step: int) -> list[epath.Path]:
    return [self._task_bundle_path(step, task) for task in self._tasks]

  def _step_dir(self, step: int) -> epath.Path:
    return self.model_dir / CHECKPOINTS_DIR / str(step)

  def close(self) -> None:
    self.manager.close()


def restore_trained(model_dir: str, params: dict, trainable_params: str, step: int | None = None) -> tuple[dict, int]:
  """`params` with the trained subtree of MODEL_DIR's checkpoint `step` (default: the latest) in place.

  The trainable subtree is the one `trainable_params` selects (as in the run that wrote it);
  returns (params, the restored step).
  """
  trainable, frozen = param_tree.split_trainable(params, trainable_params)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), trainable)
  checkpointer = TrainCheckpointer(model_dir, save_period=0, keep=None, read_only=True)
  try:
    restored, step = checkpointer.restore_params(abstract, step)
  finally:
    checkpointer.close()
  check_params(restored, abstract, f"{model_dir} step {step}")
  return param_tree.merge_params(restored, frozen), int(step)


def prompt_file(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, PROMPTS_DIR, f"step_{step}.npy")


def checkpoint_dir(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, CHECKPOINTS_DIR, str(step))
