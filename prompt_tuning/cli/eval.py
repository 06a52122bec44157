"""`prompt-tuning eval`: score the trained prompt in MODEL_DIR with the task's metrics.

  prompt-tuning eval --gin_file=quickstart.gin --gin_file=runs/eval.gin --gin.MODEL_DIR="'/tmp/quickstart'"
"""

from __future__ import annotations

import sys

from prompt_tuning.cli import gin_runner


def _describe(metrics) -> None:
  print(f"evaluated step {int(metrics['step'])}")
  for name, value in sorted(metrics.items()):
    if name != "step":
      print(f"  {name}: {value:.4f}")


def main(argv: list[str]) -> int:
  return gin_runner.run(argv, "evaluate", _describe, __doc__)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
