"""Checksummed train checkpoints (checkpoints/integrity.py through TrainCheckpointer): corruption found
on restore, the newest good checkpoint used instead, prompt files repaired, rotation that keeps the good."""

from __future__ import annotations

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.checkpoints import integrity
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import TrainCheckpointer, restore_trained

PROMPT_SHAPE = (16, 32)  # 2 KB: stored in a data file of its own, not inline in orbax's index


def _tree(step: int) -> dict:
  """A train-state-like tree whose values differ per step: {'step', 'params', 'opt_state'}."""
  rng = np.random.RandomState(step)
  return {
    "step": jnp.asarray(step, jnp.int32),
    "params": {"prompt": {"prompt": jnp.asarray(rng.randn(*PROMPT_SHAPE).astype(np.float32))}},
    "opt_state": ({"v_row": jnp.asarray(rng.rand(5).astype(np.float32))},),
  }


def _abstract() -> dict:
  return {
    "step": np.zeros((), np.int32),
    "params": {"prompt": {"prompt": np.zeros(PROMPT_SHAPE, np.float32)}},
    "opt_state": ({"v_row": np.zeros((5,), np.float32)},),
  }


def _save(model_dir, steps, keep=None) -> TrainCheckpointer:
  checkpointer = TrainCheckpointer(str(model_dir), save_period=1, keep=keep, warn=lambda m: None)
  for step in steps:
    assert checkpointer.save(step, _tree(step), data_position=10 * step)
  checkpointer.close()
  return checkpointer


def _restore(model_dir, **kwargs):
  """(state, position, the warning lines) of a fresh checkpointer's restore."""
  lines = []
  checkpointer = TrainCheckpointer(str(model_dir), save_period=1, warn=lines.append, **kwargs)
  try:
    state, position = checkpointer.restore(_abstract())
  finally:
    checkpointer.close()
  return state, position, lines


def _flip_prompt_bytes(model_dir, step: int) -> None:
  """Overwrites 8 bytes amid the largest data file of checkpoint `step` (its prompt's, compressed) with 0x7f,
  as a bad disk or copy would: orbax checks no checksum there and restores other values."""
  files = glob.glob(os.path.join(model_dir, "checkpoints", str(step), "state", "**", "d", "*"), recursive=True)
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  assert len(data) > 4 * np.prod(PROMPT_SHAPE) // 2, "the prompt is stored elsewhere"
  data[len(data) // 2 : len(data) // 2 + 8] = b"\x7f" * 8
  open(path, "wb").write(bytes(data))


def _truncate_data(model_dir, step: int) -> None:
  for path in glob.glob(os.path.join(model_dir, "checkpoints", str(step), "state", "**", "d", "*"), recursive=True):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def test_flipped_bytes_restore_as_garbage_without_a_checksum(tmp_path):
  # Why the manifest exists: orbax restores flipped array bytes silently.
  _save(tmp_path, [1])
  _flip_prompt_bytes(tmp_path, 1)
  integrity.remove_manifest(integrity.epath.Path(tmp_path), 1)
  state, _, lines = _restore(tmp_path)
  restored, saved = state["params"]["prompt"]["prompt"], _tree(1)["params"]["prompt"]["prompt"]
  assert restored.shape == saved.shape and not np.array_equal(restored, saved)
  assert lines == [
    f"note: checkpoint {tmp_path}/checkpoints/1 has no checksums (an earlier version wrote it): unverified"
  ]


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
  _save(tmp_path, [1, 2, 3])
  (_flip_prompt_bytes if damage == "flipped" else _truncate_data)(tmp_path, 3)
  state, position, lines = _restore(tmp_path)
  assert int(state["step"]) == 2 and position == 20
  np.testing.assert_array_equal(state["params"]["prompt"]["prompt"], _tree(2)["params"]["prompt"]["prompt"])
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"warning: checkpoint {tmp_path}/checkpoints/3 ")
  assert lines[0].endswith("; resuming from step 2")
  cause = "is corrupt: params/prompt/prompt differs from its checksum" if damage == "flipped" else "cannot be read ("
  assert cause in lines[0] and "\n" not in lines[0]


def test_a_resumed_run_replaces_the_bad_checkpoint_and_rotation_keeps_the_good(tmp_path):
  _save(tmp_path, [1, 2, 3], keep=2)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  _flip_prompt_bytes(tmp_path, 3)
  checkpointer = TrainCheckpointer(str(tmp_path), save_period=1, keep=2, warn=lambda m: None)
  state, _ = checkpointer.restore(_abstract())
  assert int(state["step"]) == 2
  # The bad 3 is not counted: saving 3 again replaces it and leaves the good 2 in place.
  assert checkpointer.save(3, _tree(3), data_position=30)
  assert checkpointer.save(4, _tree(4), data_position=40)
  checkpointer.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]
  assert sorted(os.listdir(tmp_path / "checksums")) == ["step_3.json", "step_4.json"]
  state, _, lines = _restore(tmp_path)
  assert int(state["step"]) == 4 and lines == []


def test_no_good_checkpoint_is_one_error_line(tmp_path):
  _save(tmp_path, [1, 2])
  _flip_prompt_bytes(tmp_path, 1)
  _truncate_data(tmp_path, 2)
  with pytest.raises(CheckpointError) as info:
    _restore(tmp_path)
  message = str(info.value)
  assert message.startswith(f"checkpoint {tmp_path}/checkpoints/2 cannot be read (")
  assert message.endswith("; the 1 older one(s) are not good either") and "\n" not in message


def test_an_unreadable_manifest_is_untrusted(tmp_path):
  _save(tmp_path, [1, 2])
  (tmp_path / "checksums" / "step_2.json").write_text('{"format": 1, "lea')  # cut short
  _, _, lines = _restore(tmp_path)
  assert len(lines) == 1 and f"checkpoint {tmp_path}/checkpoints/2 is untrusted: its checksum manifest" in lines[0]


def test_another_run_shape_is_refused_at_once_not_blamed_on_corruption(tmp_path):
  _save(tmp_path, [1])
  abstract = _abstract()
  abstract["params"]["prompt"]["prompt"] = np.zeros((7, 32), np.float32)
  checkpointer = TrainCheckpointer(str(tmp_path), save_period=1, warn=lambda m: None)
  with pytest.raises(
    CheckpointError,
    match=r"does not fit this run: the checkpoint has params/prompt/prompt \(16, 32\), this run \(7, 32\)",
  ):
    checkpointer.restore(abstract)
  checkpointer.close()


def test_missing_or_truncated_prompt_files_are_rewritten_on_resume(tmp_path):
  _save(tmp_path, [1, 2, 3])
  prompts = tmp_path / "prompts"
  os.remove(prompts / "step_1.npy")
  with open(prompts / "step_3.npy", "r+b") as f:
    f.truncate(100)  # as a kill between the checkpoint's commit and the .npy write left it
  np.save(prompts / "step_2.npy", np.zeros(PROMPT_SHAPE, np.float32))  # loads, but is not step 2's prompt
  _, _, lines = _restore(tmp_path)
  for step in (1, 2, 3):
    np.testing.assert_array_equal(np.load(prompts / f"step_{step}.npy"), _tree(step)["params"]["prompt"]["prompt"])
  assert [line.split(" (")[0] for line in lines] == [f"note: rewrote {prompts}/step_{s}.npy" for s in (1, 2, 3)]
  assert "(missing)" in lines[0] and "(its values differ" in lines[1] and "(unreadable (" in lines[2]
  assert not [n for n in os.listdir(prompts) if n.startswith(".tmp-")]


def test_evaluation_restores_the_newest_good_params_and_changes_nothing(tmp_path, capsys):
  _save(tmp_path, [1, 2])
  _flip_prompt_bytes(tmp_path, 2)
  os.remove(tmp_path / "prompts" / "step_1.npy")
  before = sorted((p, os.path.getmtime(p)) for p in glob.glob(f"{tmp_path}/**", recursive=True))
  params = {"prompt": {"prompt": np.zeros(PROMPT_SHAPE, np.float32)}, "frozen": {"w": np.ones(3, np.float32)}}
  merged, step = restore_trained(str(tmp_path), params, "prompt/prompt")
  assert step == 1
  np.testing.assert_array_equal(merged["prompt"]["prompt"], _tree(1)["params"]["prompt"]["prompt"])
  assert sorted((p, os.path.getmtime(p)) for p in glob.glob(f"{tmp_path}/**", recursive=True)) == before
  err = capsys.readouterr().err.splitlines()
  assert err == [f"warning: checkpoint {tmp_path}/checkpoints/2 is corrupt: {_CORRUPT}; using step 1"]
  with pytest.raises(CheckpointError, match=r"checkpoints/2 is corrupt: .*; pass another step"):
    restore_trained(str(tmp_path), params, "prompt/prompt", step=2)


_CORRUPT = "params/prompt/prompt differs from its checksum (corrupt data)"


def test_evaluating_a_missing_model_dir_creates_nothing(tmp_path):
  params = {"prompt": {"prompt": np.zeros(PROMPT_SHAPE, np.float32)}}
  with pytest.raises(CheckpointError, match="no train checkpoint at all"):
    restore_trained(str(tmp_path / "typo"), params, "prompt/prompt")
  assert not (tmp_path / "typo").exists()


def test_manifest_records_every_leaf(tmp_path):
  _save(tmp_path, [1])
  record = json.loads((tmp_path / "checksums" / "step_1.json").read_text())
  assert sorted(record["leaves"]) == ["opt_state/0/v_row", "params/prompt/prompt", "step"]
  assert record["leaves"]["params/prompt/prompt"]["shape"] == list(PROMPT_SHAPE) and record["position"] == 10
