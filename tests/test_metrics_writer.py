"""metrics_writer: metrics.jsonl, hand-written TensorBoard event files, CRC32C."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning import metrics_writer
from prompt_tuning.metrics_writer import MetricsWriter, crc32c, read_events


@pytest.mark.parametrize("data, expected", [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (b"\x00" * 32, 0x8A9136AA),  # RFC 3720 B.4 test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_crc32c_known_vectors(data, expected):
  assert crc32c(data) == expected


def test_crc32c_can_continue():
  assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


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


def test_event_files_decode_with_own_reader(tmp_path):
  _write_run(str(tmp_path))
  events = read_events(_event_files(tmp_path, "train"))
  assert events[0]["file_version"] == "brain.Event:2"
  assert [(e["step"], e["scalars"]) for e in events[1:]] == [
      (10, {"loss": 1.25, "learning_rate": pytest.approx(0.3)}),
      (20, {"loss": 0.5, "learning_rate": pytest.approx(0.3)}),
  ]
  assert all(e["wall_time"] > 1e9 for e in events)
  validation = read_events(_event_files(tmp_path, "validation"))
  assert [(e["step"], e["scalars"]) for e in validation[1:]] == [(20, {"accuracy": 0.75})]


def test_corruption_is_detected(tmp_path):
  _write_run(str(tmp_path))
  path = _event_files(tmp_path, "train")
  data = bytearray(open(path, "rb").read())
  data[-6] ^= 0xFF  # inside the last record's payload
  with open(path, "wb") as f:
    f.write(bytes(data))
  with pytest.raises(ValueError, match="bad data CRC"):
    read_events(path)


def test_event_encoding_round_trip_negative_step():
  record = metrics_writer.encode_event(123.5, -7, scalars={"a/b": -1.5})
  assert metrics_writer.decode_event(record) == {
      "wall_time": 123.5, "step": -7, "file_version": None, "scalars": {"a/b": -1.5}}


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

  start = time.perf_counter()
  with MetricsWriter(str(tmp_path), process_index=0) as writer:
    for step in range(2000):
      writer.write(step, {"loss": 1.0 / (step + 1), "accuracy": 0.5})
  assert time.perf_counter() - start < 10
  assert len(read_events(_event_files(tmp_path, "train"))) == 2001


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_tensorflow_reads_the_event_files(tmp_path):
  """TF's own reader (which checks both CRCs) sees the same tags, steps and values."""
  _write_run(str(tmp_path))
  script = textwrap.dedent(f"""
      import json, sys
      import tensorflow as tf
      out = []
      for run in ("train", "validation"):
        path = tf.io.gfile.glob({str(tmp_path)!r} + "/tensorboard/" + run + "/events.out.tfevents.*")[0]
        for event in tf.compat.v1.train.summary_iterator(path):
          out.append([run, event.step, event.file_version,
                      {{v.tag: v.simple_value for v in event.summary.value}}])
      print(json.dumps(out))
  """)
  # A subprocess keeps TensorFlow out of this process (the core must not need it).
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})
  assert result.returncode == 0, result.stderr[-2000:]
  events = json.loads(result.stdout.strip().splitlines()[-1])
  assert events == [
      ["train", 0, "brain.Event:2", {}],
      ["train", 10, "", {"loss": 1.25, "learning_rate": pytest.approx(0.3)}],
      ["train", 20, "", {"loss": 0.5, "learning_rate": pytest.approx(0.3)}],
      ["validation", 0, "brain.Event:2", {}],
      ["validation", 20, "", {"accuracy": 0.75}],
  ]
