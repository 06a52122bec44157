"""One variable out of a native, t5x (msgpack + zarr or inline, orbax) or train-state checkpoint."""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prompt_tuning.checkpoints import native
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import CHECKPOINTS_DIR, TrainCheckpointer
from prompt_tuning.checkpoints.variables import read_checkpoint_variable
from prompt_tuning.models.t5 import get_config, network
from support.t5x_format import write_orbax_t5x_checkpoint, write_t5x_checkpoint

EMBEDDING = np.random.RandomState(0).randn(64, 8).astype(np.float32)
PROMPT = np.random.RandomState(1).randn(3, 32).astype(np.float32)


def test_native(tmp_path):
  config = get_config("tiny", vocab_size=64)
  params = dict(network.init_params(config, jax.random.PRNGKey(0)), prompt={"prompt": PROMPT})
  path = str(tmp_path / "native")
  native.save_native(path, config, params)
  np.testing.assert_array_equal(read_checkpoint_variable(path), PROMPT)
  embedding = read_checkpoint_variable(path, "token_embedder/embedding")
  np.testing.assert_array_equal(embedding, params["token_embedder"]["embedding"])
  with pytest.raises(CheckpointError, match=r"no variable 'encoder/nope'; available: prompt/prompt, "):
    read_checkpoint_variable(path, "encoder/nope")
  with pytest.raises(CheckpointError, match=r"a native checkpoint has no steps; drop step=3$"):
    read_checkpoint_variable(path, step=3)


@pytest.mark.parametrize("zarr_min_size", [1, 10**9], ids=["zarr", "inline"])
def test_t5x_legacy_layout(tmp_path, zarr_min_size):
  """The reference prompt-tuning path encoder/prompt/prompt; the latest step unless step= is given."""
  params = {"token_embedder": {"embedding": EMBEDDING}, "encoder": {"prompt": {"prompt": PROMPT}}}
  write_t5x_checkpoint(params, str(tmp_path), 100, zarr_min_size=zarr_min_size)
  later = {"token_embedder": {"embedding": EMBEDDING}, "encoder": {"prompt": {"prompt": PROMPT + 1}}}
  write_t5x_checkpoint(later, str(tmp_path), 200, zarr_min_size=zarr_min_size)
  np.testing.assert_array_equal(read_checkpoint_variable(str(tmp_path)), PROMPT + 1)
  np.testing.assert_array_equal(read_checkpoint_variable(str(tmp_path), step=100), PROMPT)
  np.testing.assert_array_equal(
    read_checkpoint_variable(str(tmp_path / "checkpoint_100"), "encoder/prompt/prompt"), PROMPT
  )
  with pytest.raises(CheckpointError, match=r"no variable 'decoder/prompt'; available: encoder/prompt/prompt"):
    read_checkpoint_variable(str(tmp_path), "decoder/prompt")
  with pytest.raises(CheckpointError, match=r"checkpoint_100: is a single step directory, not checkpoint_200$"):
    read_checkpoint_variable(str(tmp_path / "checkpoint_100"), step=200)


def test_t5x_orbax_layout(tmp_path):
  params = {"token_embedder": {"embedding": EMBEDDING}, "encoder": {"prompt": {"prompt": PROMPT}}}
  write_orbax_t5x_checkpoint(params, str(tmp_path), 5, under_optimizer=True, param_states=True)
  np.testing.assert_array_equal(read_checkpoint_variable(str(tmp_path)), PROMPT)
  np.testing.assert_array_equal(read_checkpoint_variable(str(tmp_path), "token_embedder/embedding"), EMBEDDING)


def _save_train_state(directory: str, steps: dict[int, np.ndarray]) -> None:
  """The train-state contract, written with orbax alone (checkpoints/variables.py's docstring)."""
  manager = ocp.CheckpointManager(directory)
  for step, prompt in steps.items():
    state = {
      "params": {"prompt": {"prompt": prompt}},
      "step": np.int32(step),
      "opt_state": {"mu": {"prompt": {"prompt": np.zeros_like(prompt)}}},
    }
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  manager.close()


def test_train_state_contract(tmp_path):
  directory = str(tmp_path / "train")
  _save_train_state(directory, {10: PROMPT, 20: PROMPT * 2})
  np.testing.assert_array_equal(read_checkpoint_variable(directory), PROMPT * 2)  # latest
  np.testing.assert_array_equal(read_checkpoint_variable(directory, step=10), PROMPT)
  np.testing.assert_array_equal(read_checkpoint_variable(os.path.join(directory, "10")), PROMPT)
  np.testing.assert_array_equal(read_checkpoint_variable(directory, "params/prompt/prompt", step=10), PROMPT)
  with pytest.raises(CheckpointError, match=r"no variable 'prompt/other'; available: prompt/prompt$"):
    read_checkpoint_variable(directory, "prompt/other")
  with pytest.raises(CheckpointError, match=r"no step 30 .*steps: \[10, 20\]"):
    read_checkpoint_variable(directory, step=30)
  with pytest.raises(CheckpointError, match=r"is the directory of step 10, not step=20$"):
    read_checkpoint_variable(os.path.join(directory, "10"), step=20)


def test_what_the_trainer_writes(tmp_path):
  """TrainCheckpointer's own checkpoints (its item and key names are the ones read)."""
  checkpointer = TrainCheckpointer(str(tmp_path), save_period=0)
  try:
    for step, prompt in ((1, PROMPT), (2, PROMPT * 3)):
      state = {
        "step": np.int32(step),
        "params": {"prompt": {"prompt": prompt}},
        "opt_state": {"v": {"prompt": {"prompt": np.ones_like(prompt)}}},
      }
      assert checkpointer.save(step, state, data_position=step * 8, force=True)
  finally:
    checkpointer.close()
  directory = str(tmp_path / CHECKPOINTS_DIR)
  np.testing.assert_array_equal(read_checkpoint_variable(directory), PROMPT * 3)
  np.testing.assert_array_equal(read_checkpoint_variable(directory, step=1), PROMPT)


def test_missing_path(tmp_path):
  with pytest.raises(CheckpointError, match=r"nowhere': checkpoint path does not exist$"):
    read_checkpoint_variable(str(tmp_path / "nowhere"))
  with pytest.raises(CheckpointError, match=r"^'': checkpoint path does not exist$"):
    read_checkpoint_variable("")
