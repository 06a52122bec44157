"""Task registrations, installed as `prompt_tuning.tasks` (no TensorFlow at import time).

  super_glue  SuperGLUE as in T5 (plus taskless variants), leaderboard export
  glue        GLUE, and the QQP <-> MRPC zero-shot transfer pairs
  mrqa        SQuAD training and the MRQA out-of-domain evaluation sets
  mixtures    the SuperGLUE mixture (examples-proportional)
  byod        bring-your-own JSONL/TSV/CSV data, configured from gin
  lm          text corpora (files, C4) for LM adaptation and span corruption, configured from gin

`prompt-tuning tasks` (or `python -m prompt_tuning.tasks`) lists them all.
"""

from prompt_tuning.tasks import byod, glue, lm, mixtures, mrqa, super_glue  # noqa: F401  (registration)
