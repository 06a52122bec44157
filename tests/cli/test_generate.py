"""The `prompt-tuning` command line (convert is covered in tests/checkpoints)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prompt_tuning.cli import generate
from prompt_tuning.cli import main as cli


def _seqio_sentencepiece() -> str | None:
  try:
    import seqio
  except ImportError:
    return None
  path = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece", "sentencepiece.model")
  return path if os.path.isfile(path) else None


def test_generate_default_is_the_tiny_random_model(capsys):
  assert cli.main(["generate", "--max_decode_length", "5"]) == 0
  out = capsys.readouterr().out
  assert "tiny and randomly initialized" in out and "--checkpoint" in out
  assert "output ids:" in out


def test_generate_text_with_a_checkpoint_and_sentencepiece_vocab(hf_checkpoints, capsys):
  vocab = _seqio_sentencepiece()
  if vocab is None:
    pytest.skip("seqio (the data extra) is not installed")
  # The HF reference models have a 96-token vocabulary: keep inputs inside it via --input_ids,
  # and check text goes through the SentencePiece model end to end with the larger built-in model.
  path = hf_checkpoints["t5_1_0"][1]
  assert (
    cli.main(
      [
        "generate",
        "--checkpoint",
        path,
        "--input_ids",
        "5 9 1",
        "--method",
        "beam",
        "--beam_size",
        "2",
        "--max_decode_length",
        "4",
      ]
    )
    == 0
  )
  assert "method: beam" in capsys.readouterr().out
  assert cli.main(["generate", "--vocab", vocab, "--input", "hello world", "--max_decode_length", "3"]) == 0
  out = capsys.readouterr().out
  assert "input:      hello world" in out


def test_detokenize_maps_t5_sentinels():
  vocab = _seqio_sentencepiece()
  if vocab is None:
    pytest.skip("seqio (the data extra) is not installed")
  import sentencepiece

  processor = sentencepiece.SentencePieceProcessor(model_file=vocab)
  size = processor.get_piece_size()
  hello = processor.encode("hello")
  text = generate.detokenize(processor, hello + [size + 99, size] + hello + [size + 100])
  assert text == "hello<extra_id_0><extra_id_99>hello<id:%d>" % (size + 100)


def test_errors_are_one_line(capsys, tmp_path):
  assert cli.main(["generate", "--checkpoint", str(tmp_path / "nope")]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "checkpoint path does not exist" in err
  assert cli.main(["generate", "--input", "text without vocab"]) == 1
  assert "needs a SentencePiece model" in capsys.readouterr().err
  assert cli.main(["frobnicate"]) == 2
  assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_help_runs_as_a_module():
  out = subprocess.run(
    [sys.executable, "-m", "prompt_tuning.cli.main", "--help"], capture_output=True, text=True, check=True
  ).stdout
  assert "convert" in out and "generate" in out
