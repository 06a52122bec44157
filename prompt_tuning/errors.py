"""One-line error messages out of other libraries' exceptions.

Every user-facing error here is one line naming the problem (CheckpointError,
DataError, GinConfigError, RunError, the commands' `error:` lines). Libraries underneath
(orbax, tensorstore, gin, jax, fsspec) raise multi-line messages, so wherever
one is reported it passes through `first_line`. Imports only the standard library:
the benchmark and the core use it without loading anything else.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

# Tails that libraries append to a message's first line: tensorstore adds the whole spec as JSON
# (`[tensorstore_spec[1]=...` when it is one of several).
_TAILS = (" [tensorstore_spec=", " [tensorstore_spec[")


def first_line(error_or_text: BaseException | str, *, typed: bool = False) -> str:
  """The first non-empty line of an exception's message (or of a text), stripped.

  Args:
    error_or_text: an exception, or a message already turned into text.
    typed: prefix the exception's type name, 'ValueError: bad shape'.

  Returns:
    For an exception without a message, its type name; for an empty text, ''.
  """
  text = str(error_or_text)
  for line in text.splitlines():
    for tail in _TAILS:
      line = line.split(tail)[0]
    line = line.strip()
    if line:
      break
  else:
    line = ""
  if not isinstance(error_or_text, BaseException):
    return line
  name = type(error_or_text).__name__
  if not line:
    return name
  return f"{name}: {line}" if typed else line


class RunError(Exception):
  """A run that cannot go on because of what it was given or where it reads and writes.

  Its message is one line saying what was being done and why it failed: "cannot write
  MODEL_DIR /x: Permission denied". The commands print it as their error line.
  """


def os_error_line(error: OSError) -> str:
  """'Permission denied: /x/checkpoints' out of an OSError: the OS's words and the path, one line."""
  reason = error.strerror or first_line(error)
  return f"{reason}: {error.filename}" if error.filename else reason


@contextlib.contextmanager
def doing(action: str) -> Iterator[None]:
  """Turns an OSError raised inside into RunError('cannot <action>: <reason>: <path>').

  The phases of a run (reading the checkpoint, the data, writing MODEL_DIR) wrap their I/O in
  it, so a storage failure reads as what the user asked for, not as the library call that hit it:

    with doing(f"write MODEL_DIR {model_dir}"):
      write_run_config(model_dir, run)
  """
  try:
    yield
  except OSError as e:
    raise RunError(f"cannot {action}: {os_error_line(e)}") from e


class NotFoundError(KeyError):
  """A name or split that is not there (an unknown task, metric or split), in one line.

  A KeyError, as a lookup's error should be; its str() is the message, without the quotes
  KeyError's own str() adds.
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else type(self).__name__
