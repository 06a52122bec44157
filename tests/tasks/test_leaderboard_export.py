"""`infer` on a mocked SuperGLUE test split writes the leaderboard submission file."""

from __future__ import annotations

import json
import os

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
seqio = pytest.importorskip("seqio")

from prompt_tuning.data import vocab as vocab_lib  # noqa: E402
from prompt_tuning.models.t5 import get_config  # noqa: E402
from prompt_tuning.runs import specs  # noqa: E402
from prompt_tuning.runs.infer import infer  # noqa: E402
from prompt_tuning.runs.train import train  # noqa: E402

SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece", "sentencepiece.model")


@pytest.fixture
def small_vocabulary():
  yield SPM
  vocab_lib.set_default_vocabulary(vocab_lib.T5_VOCABULARY_PATH)


@pytest.mark.slow
def test_infer_writes_rte_submission_file(tmp_path, small_vocabulary):
  vocab_size = vocab_lib.SentencePieceVocabulary(SPM).vocab_size
  model = specs.ModelSpec(get_config("tiny", vocab_size=vocab_size), prompt=specs.PromptSpec(length=3))
  task = specs.TaskSpec("super_glue_rte_v102", {"inputs": 32, "targets": 4}, vocabulary_path=small_vocabulary)
  model_dir = str(tmp_path / "model")
  with tfds.testing.mock_data(num_examples=6):
    train(model, task, model_dir, specs.TrainSpec(steps=2, batch_size=2, save_period=2, log_period=1), progress=False)
    out_dir = tmp_path / "submission"
    path = infer(
      model,
      task,
      model_dir,
      specs.EvaluationSpec(split="test", batch_size=4),
      leaderboard_dir=str(out_dir),
      progress=False,
    )
    from prompt_tuning.task_registry import resolve_task

    test_idx = [ex["idx"] for ex in resolve_task("super_glue_rte_v102").examples("test")]
  assert os.path.isfile(path)
  rows = [json.loads(line) for line in open(out_dir / "RTE.jsonl")]
  assert len(rows) == 6
  assert all(set(row) == {"idx", "label"} and row["label"] in ("entailment", "not_entailment") for row in rows)
  assert [row["idx"] for row in rows] == test_idx  # one row per test example, in order
