"""Soft prompt tuning of frozen T5-family models in JAX/Flax."""

__version__ = "0.1.0"


def load_pretrained(path, config=None, dtype="float32", seed=0):
  """Loads an HF, t5x or native T5 checkpoint, or (path=None) a random `config`.

  See `prompt_tuning.pretrained.load_pretrained`.
  """
  from prompt_tuning import pretrained  # deferred: keep `import prompt_tuning` light

  return pretrained.load_pretrained(path, config=config, dtype=dtype, seed=seed)
