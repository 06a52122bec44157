"""`python -m prompt_tuning.train`: the same as `prompt-tuning train` (t5x users know it as t5x.train)."""

import sys

from prompt_tuning.cli.train import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
