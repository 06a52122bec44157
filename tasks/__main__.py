"""`python -m prompt_tuning.tasks`: list registered tasks and mixtures (as `prompt-tuning tasks`).

python -m prompt_tuning.tasks [PATTERN] [--json] [--module MODULE]
"""

from __future__ import annotations

import sys

from prompt_tuning.cli import tasks

if __name__ == "__main__":
  sys.exit(tasks.main(sys.argv[1:]))
