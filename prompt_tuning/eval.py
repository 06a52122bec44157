"""`python -m prompt_tuning.eval`: the same as `prompt-tuning eval`."""

import sys

from prompt_tuning.cli.eval import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
