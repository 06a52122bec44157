"""`prompt-tuning COMMAND ...`: dispatches to one module per command."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("prompt_tuning.cli.train", "train a prompt (gin-configured, t5x style)"),
    "eval": ("prompt_tuning.cli.eval", "evaluate the trained prompt in MODEL_DIR"),
    "infer": ("prompt_tuning.cli.infer", "write predictions of the trained prompt as JSONL"),
    "convert": ("prompt_tuning.cli.convert", "convert an HF or t5x checkpoint to the native format"),
    "generate": ("prompt_tuning.cli.generate", "decode inputs with a checkpoint (default: built-in tiny model)"),
    "tasks": ("prompt_tuning.cli.tasks", "list registered tasks and mixtures (with splits and metrics)"),
    "bench": ("prompt_tuning.cli.bench", "time one prompt-tuning step: ours vs HF PEFT, same config"),
}


def _usage() -> str:
  lines = ["usage: prompt-tuning COMMAND [flags]   (prompt-tuning COMMAND --help for its flags)",
           "       prompt-tuning --version", "", "commands:"]
  lines += [f"  {name:10s} {help_text}" for name, (_, help_text) in COMMANDS.items()]
  return "\n".join(lines)


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
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  if argv[0] in ("--version", "-V", "version"):
    print(version_line())
    return 0
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"prompt-tuning: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  module = importlib.import_module(COMMANDS[command][0])
  return module.main(rest)


if __name__ == "__main__":
  sys.exit(main())
