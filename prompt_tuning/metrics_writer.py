"""Metrics to `MODEL_DIR/metrics.jsonl` and TensorBoard event files, without TensorFlow.

TensorBoard reads TFRecord files of `Event` protobufs. Scalars need only a tiny
part of that format, so it is written here by hand:

  record = uint64 LE length | uint32 LE masked_crc32c(length) | data | uint32 LE masked_crc32c(data)
  Event   {1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary}
  Summary {1: repeated value Value}
  Value   {1: tag string, 2: simple_value float}

`read_events` decodes such files again (and checks the CRCs), for tests and tools.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any, Iterator, Mapping

from prompt_tuning import protowire

# --- CRC32C (Castagnoli), table-driven -----------------------------------------

_CRC32C_POLY = 0x82F63B78  # reflected 0x1EDC6F41


def _make_table() -> list[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
  """CRC32C of `data` (continuing from `crc`); crc32c(b'123456789') == 0xE3069283."""
  table = _CRC_TABLE
  crc ^= 0xFFFFFFFF
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The rotated-and-offset CRC that TFRecord stores."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """`data` framed as one TFRecord."""
  length = struct.pack("<Q", len(data))
  return b"".join((length, struct.pack("<I", masked_crc32c(length)), data,
                   struct.pack("<I", masked_crc32c(data))))


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
  """Serialized `Event` proto with a file version or a summary of simple scalar values."""
  out = [protowire.key(1, protowire.FIXED64), struct.pack("<d", wall_time),
         protowire.key(2, protowire.VARINT), protowire.varint(int(step))]
  if file_version is not None:
    out.append(protowire.len_field(3, file_version.encode()))
  if scalars:
    values = b"".join(
        protowire.len_field(1, protowire.len_field(1, tag.encode()) + protowire.key(2, protowire.FIXED32)
                            + struct.pack("<f", float(value)))
        for tag, value in scalars.items())
    out.append(protowire.len_field(5, values))
  return b"".join(out)


def decode_event(data: bytes) -> dict[str, Any]:
  """{'wall_time', 'step', 'file_version' (or None), 'scalars': {tag: value}} of an Event."""
  event = {"wall_time": 0.0, "step": 0, "file_version": None, "scalars": {}}
  for field, value in protowire.fields(data):
    if field == 1:
      event["wall_time"] = struct.unpack("<d", value)[0]
    elif field == 2:
      event["step"] = value - (1 << 64) if value >= 1 << 63 else value
    elif field == 3:
      event["file_version"] = value.decode()
    elif field == 5:
      for f, summary_value in protowire.fields(value):
        if f != 1:
          continue
        parts = dict(protowire.fields(summary_value))
        if 1 in parts and 2 in parts:
          event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
  return event


def read_records(path: str) -> Iterator[bytes]:
  """The payloads of a TFRecord file; raises ValueError on a bad CRC or truncation."""
  from etils import epath

  buf = epath.Path(path).read_bytes()
  pos = 0
  while pos < len(buf):
    if pos + 12 > len(buf):
      raise ValueError(f"{path}: truncated record header at byte {pos}")
    header, (length_crc,) = buf[pos:pos + 8], struct.unpack("<I", buf[pos + 8:pos + 12])
    if masked_crc32c(header) != length_crc:
      raise ValueError(f"{path}: bad length CRC at byte {pos}")
    (length,) = struct.unpack("<Q", header)
    data = buf[pos + 12:pos + 12 + length]
    end = pos + 12 + length + 4
    if end > len(buf):
      raise ValueError(f"{path}: truncated record at byte {pos}")
    if masked_crc32c(data) != struct.unpack("<I", buf[end - 4:end])[0]:
      raise ValueError(f"{path}: bad data CRC at byte {pos}")
    yield data
    pos = end


def read_events(path: str) -> list[dict[str, Any]]:
  """All events of a TensorBoard event file, decoded with `decode_event`."""
  return [decode_event(record) for record in read_records(path)]


# --- writer ----------------------------------------------------------------------


class _AppendFile:
  """Append-only binary file: a real append locally; remote objects (gs://) can't
  be appended to, so their content is kept and rewritten on each flush."""

  def __init__(self, path: str):
    self._path = path
    self._remote = "://" in path
    self._buffer = bytearray()
    self._file = None
    if not self._remote:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      self._file = open(path, "ab")

  def write(self, data: bytes) -> None:
    if self._file is not None:
      self._file.write(data)
    else:
      self._buffer += data

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    else:
      from etils import epath

      epath.Path(self._path).write_bytes(bytes(self._buffer))

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


class EventFileWriter:
  """Writes scalar summaries to one new TensorBoard event file in `log_dir`."""

  def __init__(self, log_dir: str, *, clock=time.time):
    self._clock = clock
    if "://" not in log_dir:
      os.makedirs(log_dir, exist_ok=True)
    name = f"events.out.tfevents.{int(clock())}.{socket.gethostname()}"
    path = _join(log_dir, name)
    if "://" not in log_dir and os.path.exists(path):  # a restart within the same second
      path = f"{path}.{os.getpid()}"
    self.path = path
    self._file = _AppendFile(path)
    self._file.write(tfrecord(encode_event(clock(), 0, file_version="brain.Event:2")))
    self._file.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._file.write(tfrecord(encode_event(self._clock(), step, scalars=scalars)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


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
