"""Generates the quickstart sentiment data and its SentencePiece model (run once; outputs are committed).

  python prompt_tuning/data/quickstart/make_data.py [--out_dir DIR]

Writes train.jsonl (600 examples), validation.jsonl (100) and
sentencepiece.model next to this file. Records are
{"idx": int, "sentence": str, "label": "negative" | "positive"}, balanced per
split. Each sentence carries one or two adjectives of a single polarity among
neutral subjects and fillers, so the label is decided by which keyword appears
(no negations). Validation sentences never occur in train. Deterministic: a
fixed seed, and single-threaded, unshuffled SentencePiece training.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import string

SEED = 20210418
NUM_TRAIN, NUM_VALIDATION = 600, 100
LABELS = ("negative", "positive")
VOCAB_SIZE = 256

ADJECTIVES = {
  "positive": [
    "wonderful",
    "moving",
    "brilliant",
    "delightful",
    "charming",
    "superb",
    "excellent",
    "beautiful",
    "funny",
    "touching",
    "gripping",
    "clever",
    "inspiring",
    "enjoyable",
    "lovely",
    "fantastic",
  ],
  "negative": [
    "terrible",
    "boring",
    "awful",
    "dull",
    "clumsy",
    "tedious",
    "dreadful",
    "bland",
    "messy",
    "painful",
    "weak",
    "forgettable",
    "lifeless",
    "poor",
    "annoying",
    "predictable",
  ],
}
SUBJECTS = [
  "the film",
  "the movie",
  "the story",
  "the acting",
  "the plot",
  "the ending",
  "the soundtrack",
  "the script",
  "the cast",
  "the dialogue",
  "the show",
  "the direction",
  "the pacing",
  "the finale",
]
FILLERS = [
  "honestly",
  "overall",
  "to me",
  "from start to finish",
  "in the second half",
  "at times",
  "for most of the running time",
  "in my opinion",
  "this time",
  "on the whole",
]
TEMPLATES = [
  "{subject} was {adj}",
  "{subject} was {adj} and {adj2}",
  "{filler}, {subject} felt {adj}",
  "i thought {subject} was {adj} {filler}",
  "{subject} is {adj}, {filler}",
  "{filler} {subject} seemed {adj} and {adj2}",
  "what a {adj} experience, {subject} was {adj2}",
]


def make_sentence(rng: random.Random, label: str) -> str:
  adj, adj2 = rng.sample(ADJECTIVES[label], 2)
  return rng.choice(TEMPLATES).format(subject=rng.choice(SUBJECTS), filler=rng.choice(FILLERS), adj=adj, adj2=adj2)


def make_split(rng: random.Random, size: int, exclude: set[str]) -> list[dict]:
  """`size` unique sentences not in `exclude`, half of each label, shuffled."""
  records = []
  for label in LABELS:
    seen = set()
    while len(seen) < size // 2:
      sentence = make_sentence(rng, label)
      if sentence not in exclude and sentence not in seen:
        seen.add(sentence)
        records.append({"sentence": sentence, "label": label})
  rng.shuffle(records)
  return [{"idx": i, **r} for i, r in enumerate(records)]


def train_sentencepiece(texts: list[str], path: str):
  """BPE model (VOCAB_SIZE pieces) with T5's special ids: pad 0, eos 1, unk 2, no bos.

  BPE keeps frequent words (the labels, "sentence", "the") whole on this tiny
  corpus, where unigram fragments them; every ASCII letter, digit and punctuation
  mark is a piece, so any plain-ASCII text encodes without unk.
  Sentences come from an iterator and the model goes to a buffer, so no temp
  path is recorded in the model and reruns give identical bytes.
  """
  import sentencepiece

  buffer = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(texts),
    model_writer=buffer,
    vocab_size=VOCAB_SIZE,
    model_type="bpe",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    num_threads=1,
    shuffle_input_sentence=False,
    normalization_rule_name="identity",
    required_chars=string.ascii_letters + string.digits + string.punctuation,
    minloglevel=2,
  )
  with open(path, "wb") as f:
    f.write(buffer.getvalue())


def main(out_dir: str):
  rng = random.Random(SEED)
  train = make_split(rng, NUM_TRAIN, exclude=set())
  validation = make_split(rng, NUM_VALIDATION, exclude={r["sentence"] for r in train})
  for name, records in (("train", train), ("validation", validation)):
    with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
  # The model sees "sentence: ..." inputs and label targets; train on exactly those.
  texts = [f"sentence: {r['sentence']}" for r in train] + [r["label"] for r in train]
  train_sentencepiece(texts, os.path.join(out_dir, "sentencepiece.model"))


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
  main(parser.parse_args().out_dir)
