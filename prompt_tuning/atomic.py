"""Whole-or-nothing file writes, local or remote (gs://, through etils.epath), and the reader of
the JSON records written so (`read_json`).

A run killed while writing a file (a prompt .npy, run_config.json, config.gin, a
checksum manifest, metrics.jsonl's remote copy) must leave the old content or the
new one, never a truncated mix that a resumed run or another tool then trusts.

Locally the bytes go to a temporary name in the same directory, are flushed to
disk, and are renamed over the target (`os.replace` is atomic on POSIX within a
filesystem). In an object store there is nothing to rename: gcsfs's `mv` is a copy
and a delete, so "write a temporary object, then move it" would upload the bytes
twice and, killed in between, leave a stray temporary object. Object stores give
the guarantee on their own instead: an object appears only once its upload
completes, whole (GCS, S3), so the bytes are built in memory first and uploaded
in one write. tests/test_atomic.py checks both against a failure midway, the
remote one on the GCS emulator.

Imports nothing heavy: metrics_writer and gin_utils use it before jax is loaded.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Union

PathLike = Union[str, os.PathLike]

# Temporary names start with this, so a listing (or a test) can tell them apart.
TEMP_PREFIX = ".tmp-"


def is_remote(path: PathLike) -> bool:
  return "://" in os.fspath(path)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Replaces `path`'s content with `data` as a whole (creating the file and its parent directories).

  Raises whatever the filesystem raises (OSError locally); on any failure the old
  content (or no file) is left, and no temporary file.
  """
  path = os.fspath(path)
  if is_remote(path):
    from etils import epath

    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))  # one upload: the object is replaced whole or not at all
    return
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  temporary = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
  # 0o666 through the umask, as open(path, 'w') would create it (mkstemp's 0o600 would not).
  fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # the data is on disk before the name points at it
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise
  _sync_directory(directory)


def write_text(path: PathLike, text: str) -> None:
  """`write_bytes` of `text` in UTF-8."""
  write_bytes(path, text.encode("utf-8"))


def read_json(path: PathLike) -> object | None:
  """The JSON record at `path` (local or remote), or None when there is none: the one reader of the
  records runs write whole (run_status.json, best.json, sweep.json). Each caller keeps its own rule
  for a record it cannot use; an unreadable or malformed file raises one RunError line here."""
  import json

  from etils import epath

  from prompt_tuning.errors import RunError, first_line

  target = epath.Path(path)
  try:
    if not target.exists():
      return None
    return json.loads(target.read_text())
  except (OSError, ValueError) as e:
    raise RunError(f"{path}: not a readable JSON record ({first_line(e)})") from None


def _sync_directory(directory: str) -> None:
  """Makes the rename itself durable (a power loss after it keeps the new name); best effort."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # some filesystems (and Windows) do not sync directories
  finally:
    os.close(fd)
