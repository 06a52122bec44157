"""Metrics to `MODEL_DIR/metrics.jsonl` and TensorBoard event files, without TensorFlow.

Event files are written through tensorboardX (TFRecord framing, CRC32C and the
`Event`/`Summary` protos): one new file per run and session, one `Event` per
`write` holding every scalar of that step as a `simple_value`, flushed at once.
Remote log dirs (gs://, s3://, ...) go through etils.epath, as checkpoints and
`metrics.jsonl` do, rather than tensorboardX's own google-cloud-storage/boto3
writers: one filesystem layer and one set of credentials for all of MODEL_DIR.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, Mapping

# --- writer ----------------------------------------------------------------------


class _AppendFile:
  """Append-only binary file: a real append locally. Remote objects (gs://) can't be
  appended to, so each flush reads the object as it is now, adds the pending bytes
  and writes it back: what earlier sessions wrote (a resumed run, an eval) is kept."""

  def __init__(self, path: str):
    self._path = path
    self._remote = "://" in path
    self._pending = bytearray()
    self._file = None
    if not self._remote:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      self._file = open(path, "ab")

  def write(self, data: bytes) -> None:
    if self._file is not None:
      self._file.write(data)
    else:
      self._pending += data

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    elif self._pending:
      from etils import epath

      from prompt_tuning import atomic

      remote = epath.Path(self._path)
      # Read at every flush, not once: another session may have appended meanwhile.
      earlier = remote.read_bytes() if remote.exists() else b""
      atomic.write_bytes(self._path, earlier + bytes(self._pending))  # a kill keeps the old copy whole
      self._pending.clear()

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None


def _join(*parts: str) -> str:
  return "/".join(p.rstrip("/") for p in parts) if "://" in parts[0] else os.path.join(*parts)


def _process_index() -> int:
  try:
    import jax  # deferred: keep this module importable and cheap without jax

    return jax.process_index()
  except Exception:
    return 0


class _RemoteRecordFile:
  """A tensorboardX record sink for a remote object (gs://, s3://, ...).

  Objects in a bucket can't be appended to, so the file's bytes are kept and the
  whole object is rewritten on each flush, as tensorboardX's own GCS writer does.
  Each EventFileWriter has a file of its own, so there is no earlier content to keep.
  """

  def __init__(self, path: str):
    self._path = path
    self._buffer = bytearray()
    self._uploaded = -1  # bytes in the object; -1: not created yet

  def write(self, data: bytes) -> None:
    self._buffer += data

  def flush(self) -> None:
    if self._uploaded == len(self._buffer):  # close() after a flush: nothing new to upload
      return
    from etils import epath

    epath.Path(self._path).write_bytes(bytes(self._buffer))
    self._uploaded = len(self._buffer)

  def close(self) -> None:
    self.flush()


class _RemoteRecordFiles:
  """tensorboardX writer factory (`record_writer.register_writer_factory`) for a URI scheme."""

  def open(self, path: str) -> _RemoteRecordFile:
    return _RemoteRecordFile(path)

  def directory_check(self, path: str) -> None:
    del path  # buckets have no directories to create


def _tensorboardx():
  """tensorboardX's record writer and protos, imported without torch.

  tensorboardX's package __init__ imports its SummaryWriter, which imports torch when it is
  installed (1.5-2 CPU-seconds, in every `train` process) only to accept torch tensors; the record
  writer needs none of it. torch is hidden while tensorboardX loads (its import is guarded) unless
  this process already has it, and visible again afterwards.
  """
  hide = "torch" not in sys.modules and "tensorboardX" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import RecordWriter, record_writer
    from tensorboardX.proto import event_pb2, summary_pb2
  finally:
    if hide:
      del sys.modules["torch"]
  return RecordWriter, record_writer, event_pb2, summary_pb2


class EventFileWriter:
  """Writes scalar summaries to one new TensorBoard event file in `log_dir`."""

  def __init__(self, log_dir: str):
    RecordWriter, record_writer, event_pb2, summary_pb2 = _tensorboardx()

    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}"
    path = _join(log_dir, name)
    if "://" in log_dir:
      # RecordWriter picks its sink by the text before the first ':'.
      record_writer.register_writer_factory(log_dir.split("://", 1)[0], _RemoteRecordFiles())
    else:
      os.makedirs(log_dir, exist_ok=True)
      if os.path.exists(path):  # a restart within the same second
        path = f"{path}.{os.getpid()}"
    self.path = path
    self._records = RecordWriter(path)
    self._write(event_pb2.Event(wall_time=now, step=0, file_version="brain.Event:2"))
    self.flush()

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One Event at `step` with a `simple_value` per tag (tags as given, not cleaned)."""
    Summary = self._summary_pb2.Summary
    values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()  # a local file, or a remote one's last upload


def _to_float(value: Any) -> float:
  """float() of python/numpy/jax scalars (0-d or size-1 arrays too)."""
  if hasattr(value, "item"):
    value = value.item()
  return float(value)


class MetricsWriter:
  """Appends metrics to `model_dir/metrics.jsonl` and `model_dir/tensorboard/<prefix>/`.

  Only process 0 (jax.process_index() == 0) writes; on other processes, or with
  `enabled=False`, every method is a no-op.

    with MetricsWriter(model_dir) as writer:
      writer.write(step, {"loss": 1.23, "learning_rate": 0.3})               # train
      writer.write(step, {"accuracy": 0.9}, prefix="validation")
  """

  def __init__(self, model_dir: str, *, enabled: bool = True, process_index: int | None = None):
    index = _process_index() if process_index is None else process_index
    self.enabled = enabled and index == 0
    self.model_dir = model_dir
    self._jsonl: _AppendFile | None = None
    self._events: dict[str, EventFileWriter] = {}

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> None:
    """Writes `metrics` for `step`: one JSON line (keys `prefix/name`, default
    prefix 'train') and TensorBoard scalars tagged `name` in run `prefix`."""
    if not self.enabled or not metrics:
      return
    run = prefix.strip("/") or "train"
    scalars = {name: _to_float(value) for name, value in metrics.items()}
    record = {"step": int(step), **{f"{run}/{name}": value for name, value in scalars.items()}}
    if self._jsonl is None:
      self._jsonl = _AppendFile(_join(self.model_dir, "metrics.jsonl"))
    self._jsonl.write((json.dumps(record) + "\n").encode())
    self._jsonl.flush()
    if run not in self._events:
      self._events[run] = EventFileWriter(_join(self.model_dir, "tensorboard", run))
    self._events[run].write_scalars(int(step), scalars)
    self._events[run].flush()

  def event_file(self, prefix: str = "") -> str | None:
    """Path of the event file of run `prefix` ('' = 'train'), once something was written."""
    writer = self._events.get(prefix.strip("/") or "train")
    return writer.path if writer else None

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    for writer in self._events.values():
      writer.close()
    self._events.clear()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
