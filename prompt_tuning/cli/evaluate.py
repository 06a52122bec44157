"""`prompt-tuning evaluate`: score the trained prompt in MODEL_DIR with the task's metrics.

prompt-tuning evaluate --gin_file=quickstart.gin --gin_file=runs/evaluate.gin --gin.MODEL_DIR="'/tmp/quickstart'"
"""

from __future__ import annotations

import sys

from prompt_tuning.cli import gin_runner


def _describe(metrics) -> None:
  which = f"step {metrics['step']}" if "step" in metrics else "PROMPT_BUNDLES"  # bundles have no step
  print(f"evaluated {which} {gin_runner.describe_evaluation(metrics)}")
  print("\n".join(gin_runner.metric_lines({k: v for k, v in metrics.items() if k != "step"})))


def main(argv: list[str]) -> int:
  return gin_runner.run(argv, "evaluate", _describe, __doc__)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
