"""Generates the quickstart text corpus for LM adaptation demos and tests (run once; outputs committed).

  python prompt_tuning/data/quickstart/make_corpus.py [--out_dir DIR]

Writes corpus_train.txt (400 documents) and corpus_validation.txt (50), one document a line:
a short review of two to four sentences from make_data.py's generator, all of one polarity, so
a language model can learn that a review's continuation keeps its opening's tone. Text of our
own, in the quickstart vocabulary's alphabet; validation documents never occur in train.
Deterministic (a fixed seed).
"""

from __future__ import annotations

import argparse
import os
import random

try:  # run as a script from its folder, or imported from the package
  from prompt_tuning.data.quickstart.make_data import LABELS, make_sentence
except ImportError:  # pragma: no cover
  from make_data import LABELS, make_sentence

SEED = 20210419
NUM_TRAIN, NUM_VALIDATION = 400, 50


def make_document(rng: random.Random) -> str:
  label = rng.choice(LABELS)
  return ". ".join(make_sentence(rng, label) for _ in range(rng.randint(2, 4))) + "."


def main(out_dir: str):
  rng = random.Random(SEED)
  seen: set[str] = set()
  splits = {}
  for name, size in (("train", NUM_TRAIN), ("validation", NUM_VALIDATION)):
    docs = []
    while len(docs) < size:
      doc = make_document(rng)
      if doc not in seen:
        seen.add(doc)
        docs.append(doc)
    splits[name] = docs
  for name, docs in splits.items():
    with open(os.path.join(out_dir, f"corpus_{name}.txt"), "w") as f:
      f.writelines(doc + "\n" for doc in docs)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
  main(parser.parse_args().out_dir)
