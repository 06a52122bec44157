"""One-line error messages out of other libraries' exceptions.

Every user-facing error here is one line naming the problem (CheckpointError,
DataError, GinConfigError, the commands' `error:` lines). Libraries underneath
(orbax, tensorstore, gin, jax, fsspec) raise multi-line messages, so wherever
one is reported it passes through `first_line`. Imports nothing: the benchmark
and the core use it without loading anything else.
"""

from __future__ import annotations

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
