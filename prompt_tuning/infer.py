"""`python -m prompt_tuning.infer`: the same as `prompt-tuning infer`."""

import sys

from prompt_tuning.cli.infer import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
