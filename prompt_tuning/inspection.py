"""Interpreting a learned prompt (Lester et al. 2021, section 7): what each prompt vector is close to.

For each prompt position, the vocabulary tokens whose input embeddings (rows of the frozen model's
`token_embedder/embedding` [vocab, embed]) are nearest by cosine similarity, as the paper reports
them; and the prompt's L2 norms beside the embedding table's, since a prompt that drifted far from
the scale of real token embeddings reads differently from one that stayed near them.

  report = inspect_prompt(prompt, embedding, top_k=5, piece=vocabulary.tokenizer.IdToPiece)
  print("\\n".join(report.lines()))          # or json.dumps(report.to_json())

`prompt-tuning inspect` (cli/inspect_prompt.py) is this on a bundle, a .npy or a MODEL_DIR.
Pure numpy: no JAX computation, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

# A zero vector has no direction: its cosine with anything is taken as 0, not NaN.
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Neighbor:
  """A vocabulary token near a prompt vector: its id, its piece (None without a vocabulary) and the cosine."""

  id: int
  piece: str | None
  cosine: float


@dataclasses.dataclass(frozen=True)
class NormStats:
  """L2 norms of a set of vectors: mean, min, max and standard deviation."""

  mean: float
  min: float
  max: float
  std: float

  @classmethod
  def of(cls, norms: np.ndarray) -> "NormStats":
    norms = np.asarray(norms, np.float64)
    return cls(float(norms.mean()), float(norms.min()), float(norms.max()), float(norms.std()))


@dataclasses.dataclass(frozen=True)
class PromptReport:
  """Per position: its L2 norm and nearest tokens; overall: the prompt's and the embedding table's norms.

  norms: [p] the prompt's per-position L2 norms. nearest: p lists of top_k Neighbors, best first.
  searched_rows: how many embedding rows were candidates (those the vocabulary has pieces for).
  """

  norms: np.ndarray
  nearest: list[list[Neighbor]]
  prompt_norms: NormStats
  embedding_norms: NormStats
  searched_rows: int

  @property
  def norm_ratio(self) -> float:
    """The prompt's mean norm over the embedding table's."""
    return self.prompt_norms.mean / max(self.embedding_norms.mean, _EPS)

  def to_json(self) -> dict[str, Any]:
    return {
      "norms": {
        "prompt": dataclasses.asdict(self.prompt_norms),
        "embedding": dataclasses.asdict(self.embedding_norms),
        "prompt_over_embedding_mean": self.norm_ratio,
      },
      "searched_rows": self.searched_rows,
      "positions": [
        {"position": i, "norm": float(n), "nearest": [dataclasses.asdict(x) for x in near]}
        for i, (n, near) in enumerate(zip(self.norms, self.nearest))
      ],
    }

  def lines(self) -> list[str]:
    """The report as text: the norm summary, then one line per position."""

    def stats(s: NormStats) -> str:
      return f"mean {s.mean:.4g}, min {s.min:.4g}, max {s.max:.4g}, std {s.std:.3g}"

    out = [
      f"L2 norms: prompt {stats(self.prompt_norms)}",
      f"          embedding table ({self.searched_rows} rows searched) {stats(self.embedding_norms)}",
      f"          prompt mean / embedding mean = {self.norm_ratio:.3g}",
      f"{'position':>8}  {'norm':>8}  nearest tokens (cosine similarity)",
    ]
    for i, (norm, near) in enumerate(zip(self.norms, self.nearest)):
      tokens = "  ".join(f"{_show(x)} ({x.cosine:.3f})" for x in near)
      out.append(f"{i:>8}  {float(norm):>8.4g}  {tokens}")
    return out


def _show(neighbor: Neighbor) -> str:
  return repr(neighbor.piece)[1:-1] if neighbor.piece is not None else f"#{neighbor.id}"


def nearest_tokens(prompt: np.ndarray, embedding: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
  """The `top_k` rows of `embedding` [V, d] nearest to each row of `prompt` [p, d] by cosine similarity.

  Returns (ids [p, k] int64, cosines [p, k] float32), best first; equal cosines in id order.
  """
  prompt, embedding = np.asarray(prompt, np.float32), np.asarray(embedding, np.float32)
  if prompt.ndim != 2 or embedding.ndim != 2 or prompt.shape[1] != embedding.shape[1]:
    raise ValueError(f"the prompt {prompt.shape} and the embedding table {embedding.shape} must be [p, d] and [V, d]")
  k = min(int(top_k), embedding.shape[0])
  unit_prompt = prompt / np.maximum(np.linalg.norm(prompt, axis=1, keepdims=True), _EPS)
  unit_rows = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), _EPS)
  cosines = unit_prompt @ unit_rows.T  # [p, V]
  # The k best of each row (any order), then sorted: by cosine descending, ties by id.
  best = np.argpartition(-cosines, k - 1, axis=1)[:, :k]
  picked = np.take_along_axis(cosines, best, axis=1)
  order = np.lexsort((best, -picked), axis=1)
  ids = np.take_along_axis(best, order, axis=1).astype(np.int64)
  return ids, np.take_along_axis(cosines, ids, axis=1)


def inspect_prompt(
  prompt: np.ndarray,
  embedding: np.ndarray,
  top_k: int = 5,
  piece: Callable[[int], str] | None = None,
  num_rows: int | None = None,
) -> PromptReport:
  """A PromptReport of `prompt` [p, d] against the frozen `embedding` table [V, d].

  piece: token id -> its text piece (e.g. SentencePieceProcessor.IdToPiece); None: ids only.
  num_rows: search only the first `num_rows` rows (the ids a vocabulary has: T5's table has 28 rows
    past its 32100 pieces); None: all of them. The embedding norms are over the same rows.
  """
  if top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  table = np.asarray(embedding, np.float32)
  if num_rows is not None:
    table = table[: max(1, min(int(num_rows), table.shape[0]))]
  prompt = np.asarray(prompt, np.float32)
  ids, cosines = nearest_tokens(prompt, table, top_k)
  nearest = [
    [Neighbor(int(i), piece(int(i)) if piece else None, float(c)) for i, c in zip(row_ids, row_cos)]
    for row_ids, row_cos in zip(ids, cosines)
  ]
  norms = np.linalg.norm(prompt, axis=1)
  return PromptReport(
    norms=norms,
    nearest=nearest,
    prompt_norms=NormStats.of(norms),
    embedding_norms=NormStats.of(np.linalg.norm(table, axis=1)),
    searched_rows=int(table.shape[0]),
  )
