"""Approximate length histograms of SuperGLUE tasks, for `prompt-tuning bench --mode workload`.

APPROXIMATIONS, NOT MEASUREMENTS. Without the data sets (nothing can be downloaded where this was
written), each histogram is derived from two published figures and two stated assumptions. When a
task's data is at hand, `--workload_task` measures the real distribution instead.

What each histogram describes: the number of T5 SentencePiece tokens (EOS included) of the task's
T5-preprocessed input, e.g. "rte hypothesis: ... premise: ..." (tasks/super_glue.py formats them as
T5's `glue` preprocessor does), over the train split, before truncation to a feature length; and the
token count of its targets (the label names).

Method, per task:
1. Mean characters of the raw fields per example, from the HuggingFace `super_glue` dataset card
   (huggingface/datasets, datasets/super_glue/README.md, `dataset_info`): the train split's
   num_bytes / num_examples, less the Arrow bytes that are not text (4 per string offset, 4 per
   int32 field, 8 for the int64 class label). num_bytes is the split's Arrow table size, so this is
   the mean UTF-8 length of the text fields.
2. Plus the characters T5's format adds (the task name and the `key: ` prefixes, TEMPLATE_CHARS).
   MultiRC's paragraphs carry `<b>`, `</b>` and `<br>` markup that the format removes (about 11
   characters per sentence); it is not subtracted, so MultiRC's mean is a few percent high.
3. ASSUMPTION: 4.0 characters per T5 SentencePiece token, for English prose with T5's 32k
   vocabulary (not measured here; the T5 vocabulary could not be loaded). A public T5-tokenized C4
   (Birchlabs/c4-t5-ragged, its card's "~44% compression ratio" over the text, at 2 bytes a token)
   puts it between 3.6 and 4.5 depending on how that ratio is read. Then one EOS token.
4. ASSUMPTION: a log-normal shape with that mean and the SIGMA below (the spread of log length),
   chosen by the kind of text (single short sentences: small; news and Wikipedia paragraphs:
   larger); the published figures give no spread. Its mass is binned into EDGES.

Targets: the label names' token counts under T5's vocabulary, estimated by hand (e.g.
'entailment' as '▁en' 'tail' 'ment'), plus EOS, each label equally likely (ASSUMPTION: balanced
labels; BoolQ is 62% True). Targets are so short that they only matter for target tokens/s.

`HISTOGRAMS` holds the result (tests/bench/test_workload.py checks it against `derive`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

CHARS_PER_TOKEN = 4.0  # assumption 3
# Bins [EDGES[i], EDGES[i + 1]) of input tokens, EOS included.
EDGES = (1, 17, 33, 49, 65, 97, 129, 161, 193, 257, 321, 385, 449, 513, 641, 769, 1025)


@dataclasses.dataclass(frozen=True)
class Source:
  """The published figures (train split of the HF `super_glue` card) and the assumptions of one task."""

  num_bytes: int
  num_examples: int
  strings: int  # string fields (4 offset bytes each)
  int32s: int  # int32 fields (idx and the like), besides the int64 label
  template_chars: int  # what T5's format adds, e.g. len('rte ') + len('hypothesis: ') + len(' premise: ')
  sigma: float  # assumption 4
  targets: Mapping[int, float]  # {target tokens with EOS: fraction}

  def mean_tokens(self) -> float:
    chars = self.num_bytes / self.num_examples - 4 * self.strings - 4 * self.int32s - 8
    return (chars + self.template_chars) / CHARS_PER_TOKEN + 1


SOURCES = {
  "rte": Source(848745, 2490, 2, 1, 26, 0.5, {4: 0.5, 6: 0.5}),  # entailment / not_entailment
  "boolq": Source(6179206, 9427, 2, 1, 26, 0.45, {2: 1.0}),  # True / False
  "cb": Source(87218, 250, 2, 1, 25, 0.5, {4: 1 / 3, 3: 1 / 3, 2: 1 / 3}),  # entailment/contradiction/neutral
  "copa": Source(49599, 400, 4, 1, 45, 0.15, {3: 1.0}),  # choice1 / choice2
  "wic": Source(665183, 5428, 3, 5, 34, 0.3, {2: 1.0}),  # True / False
  "multirc": Source(46213579, 27243, 3, 3, 39, 0.35, {2: 1.0}),  # True / False
}


@dataclasses.dataclass(frozen=True)
class Histogram:
  """Input tokens (EOS included) as fractions over the bins [EDGES[i], EDGES[i + 1]), and targets."""

  mean_tokens: float
  inputs: tuple[float, ...]  # len(EDGES) - 1 fractions
  targets: Mapping[int, float]

  def sample(self, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(input lengths int [count], target lengths int [count]), deterministic from `seed`: a bin
    by its fraction, then a length uniform in it; a target length by its fraction."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(self.inputs) / sum(self.inputs)
    bins = rng.choice(len(weights), size=count, p=weights)
    lo, hi = np.asarray(EDGES[:-1])[bins], np.asarray(EDGES[1:])[bins]
    inputs = rng.integers(lo, hi)
    lengths, fractions = zip(*sorted(self.targets.items()))
    targets = rng.choice(np.asarray(lengths), size=count, p=np.asarray(fractions) / sum(fractions))
    return inputs.astype(np.int64), targets.astype(np.int64)


def _normal_cdf(x: float) -> float:
  return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def derive(source: Source) -> Histogram:
  """The binned log-normal of `source` (steps 1-4 of the module docstring), fractions to 4 places;
  mass below the first edge goes to the first bin, above the last to the last."""
  mean = source.mean_tokens()
  mu = math.log(mean) - source.sigma**2 / 2  # a log-normal's mean is exp(mu + sigma^2 / 2)
  cdf = [_normal_cdf((math.log(edge) - mu) / source.sigma) for edge in EDGES]
  cdf[0], cdf[-1] = 0.0, 1.0
  fractions = tuple(round(hi - lo, 4) for lo, hi in zip(cdf[:-1], cdf[1:]))
  return Histogram(round(mean, 1), fractions, dict(source.targets))


# derive(SOURCES[name]) for every task, written out (targets: the Source's). Input bins:
#  1-16 17-32 33-48 49-64 65-96 97-128 129-160 161-192 | 193-256 257-320 321-384 385-448 449-512 513-640 641-768
#  769-1024
# fmt: off
HISTOGRAMS = {
  "rte": Histogram(87.7, (
    0.0012, 0.0429, 0.1361, 0.1832, 0.3107, 0.1724, 0.082, 0.0377,
    0.0256, 0.006, 0.0016, 0.0004, 0.0001, 0.0001, 0.0, 0.0,
  ), SOURCES["rte"].targets),
  "boolq": Histogram(166.4, (
    0.0, 0.0004, 0.006, 0.0248, 0.1339, 0.2017, 0.1936, 0.1501,
    0.1727, 0.0708, 0.0276, 0.0108, 0.0043, 0.0026, 0.0005, 0.0001,
  ), SOURCES["boolq"].targets),
  "cb": Histogram(89.5, (
    0.0011, 0.0394, 0.1295, 0.1786, 0.3111, 0.1772, 0.086, 0.0402,
    0.0278, 0.0066, 0.0017, 0.0005, 0.0002, 0.0001, 0.0, 0.0,
  ), SOURCES["cb"].targets),
  "copa": Histogram(36.2, (
    0.0, 0.2908, 0.6907, 0.0185, 0.0, 0.0, 0.0, 0.0,
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
  ), SOURCES["copa"].targets),
  "wic": Histogram(30.1, (
    0.0393, 0.6352, 0.2871, 0.035, 0.0033, 0.0, 0.0, 0.0,
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
  ), SOURCES["wic"].targets),
  "multirc": Histogram(426.8, (
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0006, 0.0039, 0.0137,
    0.0831, 0.1601, 0.191, 0.173, 0.1328, 0.1512, 0.059, 0.0317,
  ), SOURCES["multirc"].targets),
}
# fmt: on
