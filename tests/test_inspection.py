"""Prompt interpretation (prompt_tuning/inspection.py): nearest tokens by cosine similarity, and norms."""

from __future__ import annotations

import json

import numpy as np

from prompt_tuning.inspection import inspect_prompt, nearest_tokens

ROWS = [5, 17, 42, 299]


def _table_and_prompt() -> tuple[np.ndarray, np.ndarray]:
  """A random embedding table [300, 64] and a prompt made of its rows 5, 17, 42 and 299, rescaled (cosine
  ignores the scale) and slightly perturbed."""
  rng = np.random.default_rng(0)
  embedding = rng.normal(size=(300, 64)).astype(np.float32)
  scales = np.array([[0.5], [1.0], [2.0], [3.0]], np.float32)
  prompt = embedding[ROWS] * scales + 0.05 * rng.normal(size=(len(ROWS), 64)).astype(np.float32)
  return embedding, prompt


def test_a_prompt_made_of_embedding_rows_is_nearest_to_them():
  embedding, prompt = _table_and_prompt()
  report = inspect_prompt(prompt, embedding, top_k=3, piece=lambda i: f"tok{i}")
  assert [near[0].id for near in report.nearest] == ROWS
  assert [near[0].piece for near in report.nearest] == [f"tok{i}" for i in ROWS]
  # The whole top 3, by hand: cosine of every row, sorted.
  unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
  for position, near in enumerate(report.nearest):
    cosines = unit @ (prompt[position] / np.linalg.norm(prompt[position]))
    assert [x.id for x in near] == list(np.argsort(-cosines)[:3])
    np.testing.assert_allclose([x.cosine for x in near], np.sort(cosines)[::-1][:3], rtol=1e-5)
    assert near[0].cosine > 0.99 > near[1].cosine
  np.testing.assert_allclose(report.norms, np.linalg.norm(prompt, axis=1), rtol=1e-6)
  table_norms = np.linalg.norm(embedding, axis=1)
  assert report.prompt_norms.min == float(np.min(report.norms)) and report.prompt_norms.max == float(
    np.max(report.norms)
  )
  np.testing.assert_allclose(
    [report.embedding_norms.mean, report.embedding_norms.min, report.embedding_norms.max],
    [table_norms.mean(), table_norms.min(), table_norms.max()],
    rtol=1e-5,
  )
  assert report.norm_ratio == report.prompt_norms.mean / report.embedding_norms.mean
  as_json = json.loads(json.dumps(report.to_json()))
  assert [p["nearest"][0]["id"] for p in as_json["positions"]] == ROWS and as_json["searched_rows"] == 300
  lines = report.lines()
  assert (
    lines[0].startswith("L2 norms: prompt mean ") and f"tok42 ({report.nearest[2][0].cosine:.3f})  tok" in lines[4 + 2]
  )


def test_num_rows_limits_the_search_to_the_vocabulary():
  embedding, prompt = _table_and_prompt()
  report = inspect_prompt(prompt, embedding, top_k=2, num_rows=100)
  assert [near[0].id for near in report.nearest][:3] == ROWS[:3]
  assert all(x.id < 100 and x.piece is None for near in report.nearest for x in near)
  assert report.searched_rows == 100


def test_zero_vectors_and_a_large_k_are_handled():
  embedding = np.eye(3, 4, dtype=np.float32)
  ids, cosines = nearest_tokens(np.zeros((1, 4), np.float32), embedding, top_k=10)
  assert ids.tolist() == [[0, 1, 2]] and cosines.tolist() == [[0.0, 0.0, 0.0]]  # no NaN; ties in id order
