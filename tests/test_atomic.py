"""Whole-or-nothing writes (prompt_tuning/atomic.py): a failure midway leaves the old content and no
temporary file, locally and on gs:// (the GCS emulator); the run files go through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning import atomic, gin_utils


def test_write_replaces_the_content_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "run_config.json"
  atomic.write_text(path, "first")
  atomic.write_bytes(str(path), b"second")
  assert path.read_bytes() == b"second" and os.listdir(tmp_path / "sub") == ["run_config.json"]
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_a_failure_midway_leaves_the_old_file_whole(tmp_path, monkeypatch, fail_at):
  path = tmp_path / "step_3.npy"
  atomic.write_bytes(path, b"old prompt")

  def fail(*args):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, fail_at, fail)  # after the temporary file is written (in part or whole)
  with pytest.raises(OSError, match="No space left"):
    atomic.write_bytes(path, b"new prompt" * 1000)
  monkeypatch.undo()
  assert path.read_bytes() == b"old prompt" and os.listdir(tmp_path) == ["step_3.npy"]
  monkeypatch.setattr(os, fail_at, fail)
  with pytest.raises(OSError):
    atomic.write_bytes(tmp_path / "new.npy", b"x")
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ["step_3.npy"]  # a file that did not exist does not appear


def test_the_operative_config_is_written_atomically(tmp_path, monkeypatch):
  path = gin_utils.save_operative_config(str(tmp_path))
  before = open(path).read()
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
  with pytest.raises(OSError):
    gin_utils.save_operative_config(str(tmp_path))
  assert open(path).read() == before and os.listdir(tmp_path) == ["config.gin"]


# Run in a fresh process with TensorFlow blocked (as tests/support/cloud_session.py): with it,
# etils would open gs:// through tf.io.gfile, which knows no emulator.
REMOTE = r"""
import sys
for name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[name] = None
import json
import gcsfs.core
from etils import epath
from prompt_tuning import atomic
from prompt_tuning.checkpoints import lock

seen = {}
path = "gs://bucket/run/prompts/step_3.npy"
atomic.write_bytes(path, b"old")
upload = gcsfs.core.GCSFile._upload_chunk

def fail_at_the_end(self, final=False):
  if final:
    raise OSError("connection reset (injected)")
  return upload(self, final=final)

gcsfs.core.GCSFile._upload_chunk = fail_at_the_end
big = b"n" * (6 << 20)  # more than gcsfs's 5 MiB block: the first part is uploaded before the failure
try:
  atomic.write_bytes(path, big)
except OSError as e:
  seen["error"] = str(e)
gcsfs.core.GCSFile._upload_chunk = upload
seen["after_failure"] = epath.Path(path).read_bytes().decode()
atomic.write_bytes(path, big)
seen["after_success"] = epath.Path(path).read_bytes() == big
seen["listing"] = sorted(p.name for p in epath.Path("gs://bucket/run/prompts").iterdir())
with lock.hold("gs://bucket/run"):
  seen["locked"] = epath.Path("gs://bucket/run/train.lock").exists()
  try:
    with lock.hold("gs://bucket/run"):
      pass
  except lock.ModelDirInUse as e:
    seen["second"] = str(e)
seen["released"] = not epath.Path("gs://bucket/run/train.lock").exists()
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_remote_writes_are_whole_or_nothing_and_the_lock_works_on_gs(tmp_path):
  from support import gcs_emulator

  with gcs_emulator.running(["bucket"], str(tmp_path / "fake_gcs_server.log")) as url:
    env = {**os.environ, **gcs_emulator.environment(url)}
    result = subprocess.run([sys.executable, "-c", REMOTE], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  seen = json.loads(result.stdout.strip().splitlines()[-1])
  assert seen["error"] == "connection reset (injected)"
  assert seen["after_failure"] == "old" and seen["after_success"]  # the half-uploaded object never appeared
  assert seen["listing"] == ["step_3.npy"]
  assert seen["locked"] and seen["released"]
  assert seen["second"].startswith("gs://bucket/run is in use by another trainer (pid ")


def test_prompt_files_of_a_checkpoint_are_written_whole(tmp_path, monkeypatch):
  from prompt_tuning.checkpoints.train_state import TrainCheckpointer

  checkpointer = TrainCheckpointer(str(tmp_path), save_period=1, keep=None, warn=lambda m: None)
  prompt = np.arange(12, dtype=np.float32).reshape(3, 4)
  tree = {"step": np.int32(1), "params": {"prompt": {"prompt": prompt}}, "opt_state": ()}
  checkpointer.save(1, tree, 0)
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
  with pytest.raises(OSError, match="killed"):
    checkpointer._export_prompt(1, {"prompt": {"prompt": prompt + 1}})
  monkeypatch.undo()
  checkpointer.close()
  np.testing.assert_array_equal(np.load(tmp_path / "prompts" / "step_1.npy"), prompt)
  assert os.listdir(tmp_path / "prompts") == ["step_1.npy"]


def test_json_records_read_through_one_reader_each_with_its_rule(tmp_path):
  from prompt_tuning.errors import RunError
  from prompt_tuning.results import collect
  from prompt_tuning.runs import records, selection
  from prompt_tuning.runs import sweep as sweep_lib

  assert atomic.read_json(tmp_path / "absent.json") is None
  atomic.write_text(str(tmp_path / "ok.json"), '{"a": [1, 2]}')
  assert atomic.read_json(str(tmp_path / "ok.json")) == {"a": [1, 2]}
  for name in (records.STATUS_FILE, selection.BEST_FILE, sweep_lib.SWEEP_FILE):
    (tmp_path / name).write_text('{"truncated": ')
  with pytest.raises(RunError, match=r"ok-not\.json: not a readable JSON record \(") as raised:
    (tmp_path / "ok-not.json").write_text("{")
    atomic.read_json(tmp_path / "ok-not.json")
  assert "\n" not in str(raised.value)
  assert records.read_status(str(tmp_path)) is None  # a status is advisory
  with pytest.raises(RunError, match="best.json: not a readable JSON record"):
    selection.read_best(str(tmp_path))
  with pytest.raises(RunError, match="sweep.json: not a readable JSON record"):
    sweep_lib.read_record(str(tmp_path))
  with pytest.raises(RunError, match="sweep.json: not a readable JSON record"):
    collect.read_sweep(tmp_path)
  (tmp_path / selection.BEST_FILE).write_text('{"best": 3}')
  with pytest.raises(RunError, match="not a best-step record written by train"):
    selection.read_best(str(tmp_path))
