"""Saving and resuming the train state with orbax.

Layout under MODEL_DIR:
  checkpoints/<step>/state/   orbax StandardSave of {'step', 'params' (trainable subtree), 'opt_state'}
  checkpoints/<step>/data/    JSON {'position': examples consumed by the train iterator}
  prompts/step_<step>.npy     the prompt [p, d] (or table [k, p, d]) of that step, for other tools
  run_config.json             `RunConfig`: what was trained, to rebuild it without gin (load_pretrained)

The frozen model is never saved here: it is restored from its own checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath

from prompt_tuning import faults, param_tree
from prompt_tuning.checkpoints.structure import CheckpointError, check_params
from prompt_tuning.errors import first_line
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.param_tree import flatten

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

  def to_json(self) -> str:
    values = dataclasses.asdict(self)
    values.update(model_config=self.model_config.to_dict(), task_feature_lengths=dict(self.task_feature_lengths))
    return json.dumps(values, indent=1)

  @classmethod
  def from_json(cls, text: str, source: str = RUN_CONFIG_FILE) -> "RunConfig":
    try:
      values = json.loads(text)
      values["model_config"] = T5Config.from_dict(values["model_config"])
      return cls(**values)
    except (ValueError, KeyError, TypeError) as e:  # json errors are ValueErrors
      raise CheckpointError(f"{source}: not a run config written by train() ({first_line(e, typed=True)})") from None


def write_run_config(model_dir: str, run: RunConfig) -> None:
  """Writes MODEL_DIR/run_config.json (call on process 0 only)."""
  directory = epath.Path(model_dir)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / RUN_CONFIG_FILE).write_text(run.to_json())


def read_run_config(model_dir: str) -> RunConfig | None:
  """MODEL_DIR's RunConfig, or None when it has none (e.g. a directory of another tool)."""
  path = epath.Path(model_dir) / RUN_CONFIG_FILE
  if not path.exists():
    return None
  return RunConfig.from_json(path.read_text(), str(path))


class TrainCheckpointer:
  """Saves every `save_period` steps (and on demand), keeping the newest `keep`."""

  def __init__(self, model_dir: str, *, save_period: int, keep: int | None = 3):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    # orbax wants absolute paths; MODEL_DIR may be relative on the command line.
    self.model_dir = epath.Path(model_dir if "://" in model_dir else os.path.abspath(model_dir))
    self.save_period = save_period
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(
      self.model_dir / CHECKPOINTS_DIR, options=options, item_names=(STATE_ITEM, DATA_ITEM)
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state_tree: dict, data_position: int, *, force: bool = False) -> bool:
    """Saves at multiples of save_period (or when forced); also writes the prompt .npy."""
    if not force and (self.save_period <= 0 or step % self.save_period):
      return False
    if step in self.manager.all_steps():
      return False
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
    self._export_prompt(step, state_tree[PARAMS_KEY])
    return True

  def restore(self, abstract_state: dict, step: int | None = None) -> tuple[dict, int]:
    """Restores (state_tree, data_position) of `step` (default: latest) into `abstract_state`'s structure."""
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{self.model_dir / CHECKPOINTS_DIR}: no train checkpoint to restore")
    try:
      restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
          **{STATE_ITEM: ocp.args.StandardRestore(abstract_state), DATA_ITEM: ocp.args.JsonRestore()}
        ),
      )
    except Exception as e:  # orbax raises many types; one line names the step and the cause
      raise CheckpointError(
        f"{self.model_dir / CHECKPOINTS_DIR}/{step}: cannot restore the train state "
        f"({first_line(e, typed=True)}); was the run started with another "
        f"model, prompt length or optimizer?"
      ) from None
    return restored[STATE_ITEM], int(restored[DATA_ITEM]["position"])

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores only the trained parameters of `step` (default latest), as host numpy arrays.

    For eval and inference, which need no optimizer state (and may not know the optimizer).
    """
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    if step is None or step not in self.manager.all_steps():
      raise CheckpointError(
        f"{self.model_dir / CHECKPOINTS_DIR}: no train checkpoint "
        f"{'at all' if step is None else f'at step {step}'}; train first or check MODEL_DIR"
      )
    item = {PARAMS_KEY: abstract_params}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    try:
      restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
          **{STATE_ITEM: ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)}
        ),
      )
    except Exception as e:
      raise CheckpointError(
        f"{self.model_dir / CHECKPOINTS_DIR}/{step}: cannot restore the trained parameters "
        f"({first_line(e, typed=True)}); is TRAINABLE_PARAMS / PROMPT_LENGTH as in "
        f"training?"
      ) from None
    return restored[STATE_ITEM][PARAMS_KEY], step

  def _export_prompt(self, step: int, trainable: Any) -> None:
    prompt = flatten(trainable).get("prompt/prompt")
    if prompt is None or jax.process_index() != 0:
      return
    out = self.model_dir / PROMPTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"step_{step}.npy").open("wb") as f:
      np.save(f, np.asarray(jax.device_get(prompt), np.float32))

  def close(self) -> None:
    self.manager.close()


def restore_trained(model_dir: str, params: dict, trainable_params: str, step: int | None = None) -> tuple[dict, int]:
  """`params` with the trained subtree of MODEL_DIR's checkpoint `step` (default: the latest) in place.

  The trainable subtree is the one `trainable_params` selects (as in the run that wrote it);
  returns (params, the restored step).
  """
  trainable, frozen = param_tree.split_trainable(params, trainable_params)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), trainable)
  checkpointer = TrainCheckpointer(model_dir, save_period=0, keep=None)
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
