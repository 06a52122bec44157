"""Soft prompt tuning of frozen T5-family models in JAX/Flax.

  prompt_tuning.train_prompt(...)    train a prompt from Python, no gin (prompt_tuning.runs.train.train),
                                     given ModelSpec, TaskSpec, ... (prompt_tuning.runs.specs, also here)
  prompt_tuning.load_pretrained(...) a T5 checkpoint, optionally with a trained prompt taking text

Both are imported on first use: `import prompt_tuning` itself loads neither JAX nor anything else.
"""

import os as _os

__version__ = "0.2.0"

# Installs map the top-level tasks/ folder to `prompt_tuning.tasks` (setup.py). Run from a source
# checkout (python -m ... in the repo root), this package is the checkout's, so look beside it too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (
  not _os.path.isdir(_os.path.join(__path__[0], "tasks"))
  and _os.path.isfile(_os.path.join(_checkout, "tasks", "__init__.py"))
  and _os.path.isfile(_os.path.join(_checkout, "setup.py"))
):
  __path__.append(_checkout)

# name -> (module, attribute). Not `train`: that name is the prompt_tuning.train package
# (`python -m prompt_tuning.train`), which importing any of its modules sets as this attribute.
_LAZY = {
  "load_pretrained": ("prompt_tuning.pretrained", "load_pretrained"),
  "train_prompt": ("prompt_tuning.runs.train", "train"),
  **{
    name: ("prompt_tuning.runs.specs", name)
    for name in ("ModelSpec", "PromptSpec", "TaskSpec", "TrainSpec", "EvaluationSpec", "MeshSpec")
  },
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):  # PEP 562: the heavy modules load on first use
  if name not in _LAZY:
    raise AttributeError(f"module 'prompt_tuning' has no attribute {name!r}")
  import importlib

  module, attribute = _LAZY[name]
  value = getattr(importlib.import_module(module), attribute)
  globals()[name] = value  # once
  return value


def __dir__():
  return sorted({*globals(), *_LAZY})
