"""`prompt-tuning infer`: write predictions of the trained prompt in MODEL_DIR as JSONL.

prompt-tuning infer --gin_file=quickstart.gin --gin_file=runs/infer.gin --gin.MODEL_DIR="'/tmp/quickstart'"
"""

from __future__ import annotations

import sys

from prompt_tuning.cli import gin_runner


def main(argv: list[str]) -> int:
  return gin_runner.run(argv, "infer", lambda path: print(f"predictions: {path}"), __doc__)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
