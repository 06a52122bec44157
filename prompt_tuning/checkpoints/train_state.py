"""Saving and resuming the train state with orbax.

Layout under MODEL_DIR:
  checkpoints/<step>/state/   orbax StandardSave of {'step', 'params' (trainable subtree), 'opt_state'}
  checkpoints/<step>/data/    JSON {'position': examples consumed by the train iterator}
  prompts/step_<step>.npy     the prompt [p, d] (or table [k, p, d]) of that step, for other tools

The frozen model is never saved here: it is restored from its own checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from etils import epath

from prompt_tuning.checkpoints.structure import CheckpointError, flatten

CHECKPOINTS_DIR = "checkpoints"
PROMPTS_DIR = "prompts"


class TrainCheckpointer:
  """Saves every `save_period` steps (and on demand), keeping the newest `keep`."""

  def __init__(self, model_dir: str, *, save_period: int, keep: int | None = 3):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    # orbax wants absolute paths; MODEL_DIR may be relative on the command line.
    self.model_dir = epath.Path(model_dir if "://" in model_dir else os.path.abspath(model_dir))
    self.save_period = save_period
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.model_dir / CHECKPOINTS_DIR, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state_tree: dict, data_position: int, *, force: bool = False) -> bool:
    """Saves at multiples of save_period (or when forced); also writes the prompt .npy."""
    if not force and (self.save_period <= 0 or step % self.save_period):
      return False
    if step in self.manager.all_steps():
      return False
    ocp = self._ocp
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state_tree),
                                                    data=ocp.args.JsonSave({"position": int(data_position)})),
                      force=True)
    self.manager.wait_until_finished()
    self._export_prompt(step, state_tree["params"])
    return True

  def restore(self, abstract_state: dict, step: int | None = None) -> tuple[dict, int]:
    """Restores (state_tree, data_position) of `step` (default: latest) into `abstract_state`'s structure."""
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"{self.model_dir / CHECKPOINTS_DIR}: no train checkpoint to restore")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; one line names the step and the cause
      first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise CheckpointError(f"{self.model_dir / CHECKPOINTS_DIR}/{step}: cannot restore the train state "
                            f"({type(e).__name__}: {first_line}); was the run started with another "
                            f"model, prompt length or optimizer?") from None
    return restored["state"], int(restored["data"]["position"])

  def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores only the trained parameters of `step` (default latest), as host numpy arrays.

    For eval and inference, which need no optimizer state (and may not know the optimizer).
    """
    ocp = self._ocp
    step = self.latest_step() if step is None else step
    if step is None or step not in self.manager.all_steps():
      raise CheckpointError(f"{self.model_dir / CHECKPOINTS_DIR}: no train checkpoint "
                            f"{'at all' if step is None else f'at step {step}'}; train first or check MODEL_DIR")
    item = {"params": abstract_params}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)))
    except Exception as e:
      first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise CheckpointError(f"{self.model_dir / CHECKPOINTS_DIR}/{step}: cannot restore the trained parameters "
                            f"({type(e).__name__}: {first_line}); is TRAINABLE_PARAMS / PROMPT_LENGTH as in "
                            f"training?") from None
    return restored["state"]["params"], step

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


def prompt_file(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, PROMPTS_DIR, f"step_{step}.npy")


def checkpoint_dir(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, CHECKPOINTS_DIR, str(step))
