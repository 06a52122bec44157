"""`prompt-tuning evaluate`: score the trained prompt in MODEL_DIR with the task's metrics.

prompt-tuning evaluate --gin_file=quickstart.gin --gin_file=runs/evaluate.gin --gin.MODEL_DIR="'/tmp/quickstart'"
"""

from __future__ import annotations

import sys

from prompt_tuning.cli import gin_runner


def _describe(metrics) -> None:
  if "step" in metrics:
    which = f"step {metrics['step']}"
  elif gin_runner.binding("evaluate.design") is not None:  # prompt design: the frozen model alone
    which = "prompt design on the frozen model (no prompt)"
  else:  # bundles have no step
    which = "PROMPT_BUNDLES"
  print(f"evaluated {which} {gin_runner.describe_evaluation(metrics)}")
  print("\n".join(gin_runner.metric_lines({k: v for k, v in metrics.items() if k != "step"})))


def main(argv: list[str]) -> int:
  return gin_runner.run(argv, "evaluate", _describe, __doc__)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
