"""`prompt-tuning COMMAND ...`: dispatches to one module per command."""

from __future__ import annotations

import importlib
import logging
import sys

from prompt_tuning.errors import first_line

COMMANDS = {
  "train": ("prompt_tuning.cli.train", "train a prompt (gin-configured, t5x style)"),
  "evaluate": ("prompt_tuning.cli.evaluate", "score the trained prompt in MODEL_DIR with the task's metrics"),
  "infer": ("prompt_tuning.cli.infer", "write predictions of the trained prompt as JSONL"),
  "sweep": ("prompt_tuning.cli.sweep", "train every run of an experiment grid (gin axes), or print their commands"),
  "convert": ("prompt_tuning.cli.convert", "convert an HF or t5x checkpoint to the native format"),
  "export": ("prompt_tuning.cli.export", "write a trained prompt as a HuggingFace PEFT adapter"),
  "inspect": ("prompt_tuning.cli.inspect_prompt", "nearest vocabulary tokens to each prompt vector, and its norms"),
  "serve": ("prompt_tuning.cli.serve", "serve trained prompts of one frozen model over HTTP (batched)"),
  "generate": ("prompt_tuning.cli.generate", "decode inputs with a checkpoint (default: built-in tiny model)"),
  "tasks": ("prompt_tuning.cli.tasks", "list registered tasks and mixtures (with splits and metrics)"),
  "bench": ("prompt_tuning.cli.bench", "time one prompt-tuning step: ours vs HF PEFT, same config"),
  "results": ("prompt_tuning.cli.results", "gather every run under a directory into one table, draw the figures"),
}


# Earlier names still accepted (not listed): `eval` became `evaluate`, the word gin and the code use.
_ALIASES = {"eval": "evaluate"}


def _usage() -> str:
  lines = [
    "usage: prompt-tuning COMMAND [flags]   (prompt-tuning COMMAND --help for its flags)",
    "       prompt-tuning --version",
    "",
    "commands:",
  ]
  lines += [f"  {name:10s} {help_text}" for name, (_, help_text) in COMMANDS.items()]
  return "\n".join(lines)


def missing_filesystem(error: ImportError) -> str | None:
  """One line naming what to install when `error` is fsspec's "install X to access Y".

  Without TensorFlow, etils opens gs:// (and s3://, az://) paths through fsspec,
  whose implementations are separate packages; fsspec's error surfaces from deep
  inside orbax or etils, so every command turns it into one line here.
  """
  from fsspec.registry import known_implementations

  message = first_line(str(error))  # gin appends "In call to configurable ..."
  protocols = sorted(p for p, impl in known_implementations.items() if impl.get("err") == message)
  if not protocols:
    return None
  package = known_implementations[protocols[0]]["class"].split(".")[0]
  schemes = ", ".join(f"{p}://" for p in protocols)
  return f"{schemes} paths without TensorFlow need the {package} package, which is not installed: pip install {package}"


class _OncePerMessage(logging.Filter):
  """Lets each distinct message through once.

  gcsfs asks for a bucket's storage layout before each call and, when it cannot
  get it (no credentials, no permission for that API, an emulator), warns and
  falls back to the plain GCS API, which works: hundreds of identical lines a run.
  """

  def __init__(self):
    super().__init__()
    self._seen: set[str] = set()

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if message in self._seen:
      return False
    self._seen.add(message)
    return True


def _quiet_repeated_gcsfs_warnings() -> None:
  gcsfs_logger = logging.getLogger("gcsfs")
  if not any(isinstance(f, _OncePerMessage) for f in gcsfs_logger.filters):
    gcsfs_logger.addFilter(_OncePerMessage())


def version_line() -> str:
  """'prompt-tuning 0.1.0 (jax 0.10.2, flax 0.12.1)': ours, and the versions a bug report needs.

  Read from the package metadata, without importing jax (which takes a second or two).
  """
  from importlib import metadata

  import prompt_tuning

  def installed(name: str) -> str:
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return "not installed"

  return f"prompt-tuning {prompt_tuning.__version__} (jax {installed('jax')}, flax {installed('flax')})"


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  _quiet_repeated_gcsfs_warnings()
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  if argv[0] in ("--version", "-V", "version"):
    print(version_line())
    return 0
  command, rest = _ALIASES.get(argv[0], argv[0]), argv[1:]
  if command not in COMMANDS:
    print(f"prompt-tuning: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(COMMANDS[command][0])
  try:
    return module.main(rest)
  except ImportError as e:
    line = missing_filesystem(e)
    if line is None:
      raise
    print(f"prompt-tuning {command}: error: {line}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
