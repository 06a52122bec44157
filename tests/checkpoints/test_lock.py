"""One trainer per MODEL_DIR (checkpoints/lock.py): a second one stops with one line and touches
nothing; a stale lock of a dead trainer on this host is taken over; another host's is not."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest

from prompt_tuning.checkpoints import lock
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.runs import specs
from prompt_tuning.runs.train import train


def _snapshot(directory) -> dict[str, bytes]:
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = open(path, "rb").read()
  return out


def _dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def _write_lock(model_dir, **fields) -> None:
  holder = dataclasses.replace(lock.Holder.me(), **fields)
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, lock.LOCK_FILE), "w") as f:
    json.dump(dataclasses.asdict(holder), f)


def test_a_second_trainer_stops_with_one_line_and_leaves_the_directory_untouched(tmp_path):
  model_dir = tmp_path / "run"
  (model_dir / "checkpoints").mkdir(parents=True)
  (model_dir / "metrics.jsonl").write_text('{"step": 1}\n')
  with lock.hold(str(model_dir)):
    before = _snapshot(model_dir)
    holder = json.loads((model_dir / lock.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(lock.ModelDirInUse) as info:
      # The real entry point: it stops before building anything.
      train(
        specs.ModelSpec(config="tiny"),
        specs.TaskSpec("quickstart_sentiment", {"inputs": 8, "targets": 4}),
        str(model_dir),
      )
    assert _snapshot(model_dir) == before
  message = str(info.value)
  assert message.startswith(f"{model_dir} is in use by another trainer (pid {os.getpid()} on host ")
  assert message.endswith("wait for it to finish, stop it, or train into another MODEL_DIR") and "\n" not in message
  assert isinstance(info.value, CheckpointError)  # the CLI prints it as its one error line
  assert _snapshot(model_dir) == {k: v for k, v in before.items() if k != lock.LOCK_FILE}  # released


def test_a_stale_lock_on_this_host_is_taken_over_with_one_warning(tmp_path):
  _write_lock(tmp_path, pid=_dead_pid())
  lines = []
  with lock.hold(str(tmp_path), warn=lines.append):
    assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  assert len(lines) == 1 and lines[0].startswith(f"warning: taking over the stale lock {tmp_path / lock.LOCK_FILE} ")
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
  # The pid runs (this process) but started at another time than the lock's holder did.
  _write_lock(tmp_path, process_start=lock._process_start(os.getpid()) - 1)
  lines = []
  with lock.hold(str(tmp_path), warn=lines.append):
    pass
  assert len(lines) == 1 and "stale lock" in lines[0]


def test_another_hosts_lock_is_refused_with_how_to_remove_it(tmp_path):
  _write_lock(tmp_path, host="other-host", pid=_dead_pid())
  before = _snapshot(tmp_path)
  with pytest.raises(lock.ModelDirInUse) as info:
    with lock.hold(str(tmp_path)):
      pass
  assert str(info.value).endswith(f"if it is no longer running, delete {tmp_path / lock.LOCK_FILE} and start again")
  assert "host other-host" in str(info.value) and _snapshot(tmp_path) == before


def test_the_lock_is_released_on_an_exception_and_a_new_directory_removed(tmp_path):
  def failing_train(model_dir: str) -> None:
    with lock.hold(model_dir):
      assert os.path.exists(os.path.join(model_dir, lock.LOCK_FILE))
      raise ValueError("bad input")

  with pytest.raises(ValueError, match="bad input"):
    failing_train(str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()  # created for the lock alone: gone again
  with pytest.raises(ValueError):
    failing_train(model_dir=str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_an_unusable_model_dir_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(CheckpointError, match=r"file: cannot take the trainer lock \(FileExistsError: "):
    with lock.hold(str(tmp_path / "file")):
      pass
