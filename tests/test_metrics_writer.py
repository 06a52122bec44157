"""metrics_writer: metrics.jsonl, and TensorBoard event files (tensorboardX) read back by TensorBoard."""

from __future__ import annotations

import glob
import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from tensorboard.backend.event_processing import event_accumulator

from prompt_tuning.metrics_writer import MetricsWriter


def _write_run(model_dir: str) -> MetricsWriter:
  with MetricsWriter(model_dir, process_index=0) as writer:
    writer.write(10, {"loss": 1.25, "learning_rate": 0.3})
    writer.write(20, {"loss": 0.5, "learning_rate": 0.3})
    writer.write(20, {"accuracy": 0.75}, prefix="validation")
  return writer


def test_metrics_jsonl(tmp_path):
  _write_run(str(tmp_path))
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert lines == [
    {"step": 10, "train/loss": 1.25, "train/learning_rate": pytest.approx(0.3)},
    {"step": 20, "train/loss": 0.5, "train/learning_rate": pytest.approx(0.3)},
    {"step": 20, "validation/accuracy": 0.75},
  ]


def test_metrics_accepts_numpy_and_appends(tmp_path):
  np = pytest.importorskip("numpy")
  with MetricsWriter(str(tmp_path), process_index=0) as writer:
    writer.write(np.int64(1), {"loss": np.float32(2.0), "count": np.array(3)})
  with MetricsWriter(str(tmp_path), process_index=0) as writer:
    writer.write(2, {"loss": 1.0})
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 1, "train/loss": 2.0, "train/count": 3.0}, {"step": 2, "train/loss": 1.0}]


def _event_files(model_dir, run):
  files = glob.glob(os.path.join(str(model_dir), "tensorboard", run, "events.out.tfevents.*"))
  assert len(files) == 1, files
  return files[0]


def _tensorboard_reads(path: str) -> tuple[float, dict[str, list[tuple[int, float]]], list[float]]:
  """(file version, {tag: [(step, value)]}, wall times) of an event file, as TensorBoard loads it."""
  events = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
  events.Reload()
  scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
  wall_times = [e.wall_time for tag in scalars for e in events.Scalars(tag)]
  return events.file_version, scalars, wall_times


def test_tensorboard_reads_the_event_files(tmp_path):
  _write_run(str(tmp_path))
  version, scalars, wall_times = _tensorboard_reads(_event_files(tmp_path, "train"))
  assert version == 2.0  # "brain.Event:2"
  assert scalars == {
    "loss": [(10, 1.25), (20, 0.5)],
    "learning_rate": [(10, pytest.approx(0.3)), (20, pytest.approx(0.3))],
  }
  assert all(t > 1e9 for t in wall_times)
  assert _tensorboard_reads(_event_files(tmp_path, "validation"))[1] == {"accuracy": [(20, 0.75)]}


def test_tags_are_kept_verbatim(tmp_path):
  """tensorboardX's add_scalar would rewrite these to 'f1_ _macro_'; TensorBoard shows any tag."""
  with MetricsWriter(str(tmp_path), process_index=0) as writer:
    writer.write(3, {"f1 (macro)": 0.5, "squad/em": -2.0})
  assert _tensorboard_reads(_event_files(tmp_path, "train"))[1] == {"f1 (macro)": [(3, 0.5)], "squad/em": [(3, -2.0)]}


def test_each_session_writes_a_file_of_its_own(tmp_path):
  """A resumed run (here: within the same second) adds a file; TensorBoard joins the run's files."""
  with MetricsWriter(str(tmp_path), process_index=0) as writer:
    writer.write(1, {"loss": 2.0})
  with MetricsWriter(str(tmp_path), process_index=0) as writer:
    writer.write(2, {"loss": 1.0})
  files = sorted(glob.glob(str(tmp_path / "tensorboard" / "train" / "events.out.tfevents.*")))
  assert len(files) == 2
  assert sorted(step for f in files for step, _ in _tensorboard_reads(f)[1]["loss"]) == [1, 2]
  assert _tensorboard_reads(str(tmp_path / "tensorboard" / "train"))[1] == {"loss": [(1, 2.0), (2, 1.0)]}


@pytest.fixture
def fake_gcs(monkeypatch):
  """gs:// as etils.epath reaches it without TensorFlow (through fsspec), kept in memory.

  tensorboardX's own gs:// writer (google-cloud-storage) would go to the real
  GCS: event files can only get here through our epath sink.
  """
  from etils.epath import backend
  from fsspec.implementations.memory import MemoryFileSystem

  class FakeGCS(MemoryFileSystem):
    store, pseudo_dirs, protocol = {}, [""], ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
      return super()._strip_protocol(str(path).replace("gs://", "/", 1).replace("gcs://", "/", 1))

  from etils.epath import gpath

  monkeypatch.setenv("EPATH_USE_TF", "false")  # epath would otherwise choose tf.io.gfile for gs://
  monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "gcs", FakeGCS)
  # epath caches both its TensorFlow check and the filesystem per protocol.
  caches = (gpath._is_tf_installed, backend.fsspec_backend._get_filesystem)
  for cache in caches:
    cache.cache_clear()
  yield FakeGCS()
  for cache in caches:
    cache.cache_clear()


def test_event_files_on_a_remote_model_dir(fake_gcs, tmp_path):
  with MetricsWriter("gs://bucket/run", process_index=0) as writer:
    writer.write(10, {"loss": 1.25})
    path = writer.event_file()
    assert path.startswith("gs://bucket/run/tensorboard/train/events.out.tfevents.")
    local = tmp_path / "copy.tfevents"
    local.write_bytes(fake_gcs.cat_file(path))  # flushed after each write: visible before close
    assert _tensorboard_reads(str(local))[1] == {"loss": [(10, 1.25)]}
    writer.write(20, {"loss": 0.5})
  local.write_bytes(fake_gcs.cat_file(path))
  assert _tensorboard_reads(str(local))[1] == {"loss": [(10, 1.25), (20, 0.5)]}


def test_remote_metrics_jsonl_keeps_every_session(fake_gcs):
  # A bucket object can't be appended to: each session (train, resume, eval) must
  # add to what is there, not replace it.
  for session in range(3):
    with MetricsWriter("gs://bucket/run", process_index=0) as writer:
      writer.write(session, {"loss": float(session)})
      writer.write(session, {"accuracy": 0.5}, prefix="eval")
  lines = [json.loads(line) for line in fake_gcs.cat_file("gs://bucket/run/metrics.jsonl").splitlines()]
  assert lines == [
    record
    for step in range(3)
    for record in ({"step": step, "train/loss": float(step)}, {"step": step, "eval/accuracy": 0.5})
  ]


def test_event_files_without_tensorflow_tensorboard_or_torch(tmp_path):
  """The accelerator-host install: writing needs tensorboardX alone."""
  script = textwrap.dedent(f"""
      import sys
      for name in ("tensorflow", "tensorboard", "torch"):
        sys.modules[name] = None  # any import of these now raises ImportError
      from prompt_tuning.metrics_writer import MetricsWriter
      with MetricsWriter({str(tmp_path)!r}, process_index=0) as writer:
        writer.write(7, {{"loss": 0.25}})
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert _tensorboard_reads(_event_files(tmp_path, "train"))[1] == {"loss": [(7, 0.25)]}


def test_writing_does_not_import_torch_and_leaves_it_importable(tmp_path):
  """tensorboardX would import torch (seconds, in every `train` process) when it is installed."""
  script = textwrap.dedent(f"""
      import sys
      from prompt_tuning.metrics_writer import MetricsWriter
      with MetricsWriter({str(tmp_path)!r}, process_index=0) as writer:
        writer.write(7, {{"loss": 0.25}})
      assert "torch" not in sys.modules, "writing event files imported torch"
      import torch  # still there for whoever needs it
      print(torch.__name__)
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and result.stdout.split() == ["torch"], result.stderr[-2000:]


def test_only_process_zero_writes(tmp_path):
  with MetricsWriter(str(tmp_path / "p1"), process_index=1) as writer:
    writer.write(1, {"loss": 1.0})
  with MetricsWriter(str(tmp_path / "off"), enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
  assert not os.path.exists(tmp_path / "p1") and not os.path.exists(tmp_path / "off")


def test_default_process_index_writes(tmp_path):
  with MetricsWriter(str(tmp_path)) as writer:  # single process: jax.process_index() == 0
    writer.write(1, {"loss": 1.0})
  assert os.path.exists(tmp_path / "metrics.jsonl")


def test_many_scalars_are_fast(tmp_path):
  import time

  # Each write is flushed and fsync'ed (as TensorFlow's writer does): ~2.5 ms on a loaded 2-core VM.
  start = time.perf_counter()
  with MetricsWriter(str(tmp_path), process_index=0) as writer:
    for step in range(500):
      writer.write(step, {"loss": 1.0 / (step + 1), "accuracy": 0.5})
  assert time.perf_counter() - start < 10
  assert len(_tensorboard_reads(_event_files(tmp_path, "train"))[1]["loss"]) == 500
