"""The built-in `quickstart_sentiment` task: toy keyword sentiment, shipped as package data.

Files (generated once by make_data.py): train.jsonl (600), validation.jsonl
(100), sentencepiece.model (BPE, 256 pieces, T5 ids: pad 0, eos 1, unk 2;
each label is one piece). The vocabulary has no extra ids: vocab_size = 256.
Importing this module registers the task.
"""

from __future__ import annotations

import os

from prompt_tuning.data.task import TextTask, register_task
from prompt_tuning.data.vocab import SentencePieceVocabulary

NAME = "quickstart_sentiment"
LABELS = ("negative", "positive")
DATA_DIR = os.path.dirname(os.path.abspath(__file__))


def data_path(filename: str) -> str:
  """Path of a quickstart data file inside the installed package."""
  return os.path.join(DATA_DIR, filename)


def vocabulary() -> SentencePieceVocabulary:
  return SentencePieceVocabulary(data_path("sentencepiece.model"), extra_ids=0)


TASK = register_task(
  TextTask(
    name=NAME,
    vocabulary=vocabulary(),
    splits={"train": data_path("train.jsonl"), "validation": data_path("validation.jsonl")},
    input_template="sentence: {sentence}",
    target_field="label",
    labels=LABELS,
    metrics=("accuracy",),
  ),
  overwrite=True,
)  # overwrite: survive importlib.reload
