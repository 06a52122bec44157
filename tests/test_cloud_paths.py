"""gs:// without TensorFlow, against a GCS emulator: checkpoints, vocabulary, MODEL_DIR, metrics.jsonl.

Without TensorFlow, etils opens gs:// through fsspec (gcsfs), and tensorstore
(t5x zarr arrays, orbax checkpoints) uses its own GCS client. Both are pointed
at fake-gcs-server (tests/support/gcs_emulator.py says how and why that one).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest

from prompt_tuning.cli import main as cli

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
# seqio's small SentencePiece model, found without importing seqio (which would import TensorFlow).
SENTENCEPIECE_MODEL = os.path.join(
  importlib.util.find_spec("seqio").submodule_search_locations[0], "test_data/sentencepiece/sentencepiece.model"
)


def test_fsspec_missing_implementation_is_one_line():
  import fsspec

  with pytest.raises(ImportError) as info:
    fsspec.get_filesystem_class("s3")  # s3fs is not installed: fsspec's own error
  assert cli.missing_filesystem(info.value) == (
    "s3://, s3a:// paths without TensorFlow need the s3fs package, which is not installed: pip install s3fs"
  )
  # gin appends the configurable's name on further lines; the first line still identifies it.
  gin_wrapped = ImportError(f"{info.value}\n  In call to configurable 'train' (<function train>)")
  assert cli.missing_filesystem(gin_wrapped).endswith("pip install s3fs")
  assert cli.missing_filesystem(ImportError("No module named 'flax'")) is None


@pytest.fixture
def gcs_emulator(tmp_path):
  """The URL of a fresh fake-gcs-server holding an empty bucket `bucket`; stopped after the test."""
  from support import gcs_emulator

  with gcs_emulator.running(["bucket"], str(tmp_path / "fake_gcs_server.log")) as url:
    yield url


@pytest.mark.slow
def test_gs_checkpoint_vocabulary_and_model_dir_without_tensorflow(gcs_emulator, tmp_path):
  # os.environ carries the session's JAX compilation cache (conftest.py): the three
  # sessions compile the same programs once.
  from support import gcs_emulator as emulator

  env = {**os.environ, **emulator.environment(gcs_emulator)}
  result = subprocess.run(
    [sys.executable, os.path.join(SUPPORT, "cloud_session.py"), SENTENCEPIECE_MODEL, str(tmp_path)],
    capture_output=True,
    text=True,
    env=env,
    timeout=400,
  )
  # gcsfs warns on every call that the emulator cannot tell it the bucket's storage layout (a gRPC API).
  stderr = "\n".join(line for line in result.stderr.splitlines() if "Could not determine bucket type" not in line)
  assert result.returncode == 0, stderr[-3000:]
  seen = json.loads(result.stdout.strip().splitlines()[-1])

  status, stderr = seen["missing_gcsfs"]
  assert status == 1 and stderr.count("\n") == 1, stderr
  assert stderr.startswith("prompt-tuning convert: error: ") and stderr.strip().endswith("pip install gcsfs")

  (remote_size, remote_ids), (local_size, local_ids) = seen["vocab"]
  assert (remote_size, remote_ids) == (local_size, local_ids) and remote_ids
  assert seen["t5x"] == []  # every parameter read back from gs:// bit for bit

  # Session 1 trains to step 2, session 2 resumes from the gs:// checkpoint and trains
  # to 4, session 3 evaluates: metrics.jsonl keeps every line of all three.
  assert seen["sessions"] == [2, 4]
  assert seen["metrics"] == [
    [1, ["train"]],
    [2, ["train"]],
    [2, ["eval"]],
    [3, ["train"]],
    [4, ["train"]],
    [4, ["eval"]],
    [4, ["eval"]],
  ]
  assert seen["prompt"] == ["gs://bucket/run/prompts/step_4.npy", True]
  assert [json.loads(line) for line in seen["writer_lines"]] == [{"step": i, "train/loss": float(i)} for i in range(3)]


def test_commands_show_each_gcsfs_warning_once(caplog):
  assert cli.main(["--help"]) == 0  # any command installs the filter
  gcsfs_logger = logging.getLogger("gcsfs")
  for _ in range(3):
    gcsfs_logger.warning("Could not determine bucket type for bucket name b: no credentials")
  gcsfs_logger.warning("another message")
  assert [r.getMessage() for r in caplog.records if r.name == "gcsfs"] == [
    "Could not determine bucket type for bucket name b: no credentials",
    "another message",
  ]
