"""Soft prompt tuning of frozen T5-family models in JAX/Flax."""

import os as _os

__version__ = "0.1.0"

# Installs map the top-level tasks/ folder to `prompt_tuning.tasks` (setup.py). Run from a source
# checkout (python -m ... in the repo root), this package is the checkout's, so look beside it too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (not _os.path.isdir(_os.path.join(__path__[0], "tasks"))
    and _os.path.isfile(_os.path.join(_checkout, "tasks", "__init__.py"))
    and _os.path.isfile(_os.path.join(_checkout, "setup.py"))):
  __path__.append(_checkout)


def load_pretrained(path, config=None, dtype="float32", seed=0):
  """Loads an HF, t5x or native T5 checkpoint, or (path=None) a random `config`.

  See `prompt_tuning.pretrained.load_pretrained`.
  """
  from prompt_tuning import pretrained  # deferred: keep `import prompt_tuning` light

  return pretrained.load_pretrained(path, config=config, dtype=dtype, seed=seed)
