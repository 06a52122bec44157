"""`prompt-tuning inspect`: a bundle, a MODEL_DIR or a .npy against a frozen model's embedding table."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from prompt_tuning import param_tree, pretrained
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.native import save_native
from prompt_tuning.checkpoints.train_state import RunConfig, write_run_config
from prompt_tuning.cli import main
from prompt_tuning.data import quickstart
from prompt_tuning.models.t5 import get_config

ROWS = [7, 31, 32, 200]  # 31 and 32: the quick start's 'negative' and 'positive' pieces
CONFIG = get_config("tiny", vocab_size=256, emb_dim=128, head_dim=32, mlp_dim=256)


@pytest.fixture(scope="module")
def frozen():
  """quickstart.gin's frozen model: the tiny T5, random weights of seed 0."""
  return pretrained.load_pretrained(None, CONFIG, seed=0)


def _prompt(frozen) -> np.ndarray:
  embedding = np.asarray(frozen.params["token_embedder"]["embedding"], np.float32)
  noise = np.random.default_rng(1).normal(size=(len(ROWS), CONFIG.emb_dim)).astype(np.float32)
  return embedding[ROWS] * 1.5 + 0.02 * noise


def _model_dir(tmp_path, frozen, fingerprint: str | None = None) -> str:
  """A MODEL_DIR as train() leaves it, of a random-weights run: run_config.json and a bundle of step 7."""
  model_dir = str(tmp_path / "run")
  os.makedirs(model_dir)
  write_run_config(
    model_dir,
    RunConfig(
      prompt_length=len(ROWS),
      prompt_placement="prefix",
      trainable_params="prompt/prompt",
      task=quickstart.NAME,
      mixture_or_task_module=None,
      vocabulary_path=None,
      task_feature_lengths={"inputs": 32, "targets": 4},
      initial_checkpoint_path="",
      model_config=CONFIG,
      seed=0,
    ),
  )
  bundle = bundle_lib.PromptBundle(
    prompt=_prompt(frozen),
    config=bundle_lib.architecture(CONFIG),
    fingerprint=fingerprint or param_tree.fingerprint(frozen.params),
    task=quickstart.NAME,
    vocabulary_path=quickstart.data_path("sentencepiece.model"),
    step=7,
  )
  bundle_lib.write_bundle(os.path.join(model_dir, "prompts", "step_7.safetensors"), bundle)
  return model_dir


def test_a_model_dir_names_its_frozen_model_and_vocabulary(tmp_path, frozen, capsys):
  model_dir = _model_dir(tmp_path, frozen)
  assert main.main(["inspect", model_dir, "--top_k", "3", "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  vocab = quickstart.vocabulary()
  assert report["source"].endswith("step_7.safetensors") and (report["step"], report["shape"]) == (7, [4, 128])
  assert [p["nearest"][0]["id"] for p in report["positions"]] == ROWS
  assert [p["nearest"][0]["piece"] for p in report["positions"]] == [vocab.tokenizer.IdToPiece(i) for i in ROWS]
  assert all(p["nearest"][0]["cosine"] > 0.99 for p in report["positions"]) and report["searched_rows"] == 256
  norms = np.linalg.norm(_prompt(frozen), axis=1)
  np.testing.assert_allclose([p["norm"] for p in report["positions"]], norms, rtol=1e-5)
  assert report["norms"]["prompt"]["max"] == pytest.approx(float(norms.max()))
  assert main.main(["inspect", model_dir]) == 0
  text = capsys.readouterr().out.splitlines()
  assert text[0] == f"prompt {report['source']}: 4 positions x 128 (step 7, task quickstart_sentiment)"
  assert text[1].startswith("frozen model: random weights of ") and "(embedding table 256 x 128)" in text[1]
  assert any(line.split()[:3] == ["2", f"{norms[2]:.4g}", vocab.tokenizer.IdToPiece(32)] for line in text), text


def test_a_npy_against_a_checkpoint(tmp_path, frozen, capsys):
  checkpoint = str(tmp_path / "native")
  save_native(checkpoint, frozen.config, frozen.params)
  np.save(tmp_path / "prompt.npy", _prompt(frozen))
  argv = ["inspect", str(tmp_path / "prompt.npy"), "--checkpoint", checkpoint, "--json", "--top_k", "1"]
  assert main.main(argv) == 0
  report = json.loads(capsys.readouterr().out)
  assert [p["nearest"][0]["id"] for p in report["positions"]] == ROWS
  assert report["vocabulary"] is None and report["positions"][0]["nearest"][0]["piece"] is None  # ids only
  vocabulary = quickstart.data_path("sentencepiece.model")
  assert main.main([*argv, "--vocabulary", vocabulary]) == 0
  piece = quickstart.vocabulary().tokenizer.IdToPiece(200)
  assert json.loads(capsys.readouterr().out)["positions"][3]["nearest"][0]["piece"] == piece


def test_bad_input_is_one_line(tmp_path, frozen, capsys):
  other = _model_dir(tmp_path, frozen, fingerprint="0123456789abcdef")
  np.save(tmp_path / "table.npy", np.zeros((2, 4, 128), np.float32))
  cases = [
    ([other], "trained on frozen weights 0123456789abcdef, this frozen model's are"),
    ([str(tmp_path / "table.npy")], "a prompt is [p, d], this array is (2, 4, 128)"),
    ([str(tmp_path / "missing")], "no such prompt bundle, MODEL_DIR or .npy file"),
  ]
  np.save(tmp_path / "alone.npy", np.zeros((2, 128), np.float32))
  cases.append(([str(tmp_path / "alone.npy")], "does not say which frozen model it belongs to"))
  for argv, message in cases:
    assert main.main(["inspect", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("prompt-tuning inspect: error: ") and message in err and "\n" not in err, err
