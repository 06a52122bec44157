"""Every checkpoint format loads to the same model: HF, t5x (msgpack+zarr and orbax), native."""

from __future__ import annotations

import os
import shutil

import ml_dtypes
import numpy as np
import pytest

import prompt_tuning
from prompt_tuning.checkpoints import hf, loader, native, t5x_gin
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.cli import main as cli
from prompt_tuning.param_tree import flatten
from support import t5x_format


@pytest.fixture(scope="module")
def reference(hf_checkpoints):
  """(config, params, HF dir) of the T5 1.1 reference model."""
  path = hf_checkpoints["t5_1_1"][1]
  config, params = hf.load_hf(path)
  return config, params, path


def test_t5x_legacy_layout_with_inline_and_zarr_arrays(reference, padded_batch, tmp_path):
  config, params, hf_dir = reference
  enc, dec_in, _ = padded_batch
  step_dir = t5x_format.write_t5x_checkpoint(params, str(tmp_path), 1100000, zarr_min_size=1024)
  zarr_dirs = [d for d in os.listdir(step_dir) if d.startswith("target.")]
  inline = [n for n, a in flatten(params).items() if a.size < 1024]
  assert "target.encoder.layers_0.attention.query.kernel" in zarr_dirs and inline  # both kinds present
  want = prompt_tuning.load_pretrained(hf_dir).logits(enc, dec_in)
  for path in (step_dir, str(tmp_path)):  # the step directory, or the model directory (latest step)
    got = prompt_tuning.load_pretrained(path, config=config).logits(enc, dec_in)
    np.testing.assert_array_equal(got, want)


def test_t5x_orbax_layout(reference, padded_batch, tmp_path):
  config, params, hf_dir = reference
  enc, dec_in, _ = padded_batch
  step_dir = t5x_format.write_orbax_t5x_checkpoint(params, str(tmp_path), 7)
  assert os.path.isdir(os.path.join(step_dir, "state"))
  got = prompt_tuning.load_pretrained(step_dir, config=config).logits(enc, dec_in)
  np.testing.assert_array_equal(got, prompt_tuning.load_pretrained(hf_dir).logits(enc, dec_in))


def test_t5x_bfloat16_checkpoint_loads_in_float32_and_bfloat16(reference, padded_batch, tmp_path):
  config, params, hf_dir = reference
  enc, dec_in, _ = padded_batch
  step_dir = t5x_format.write_t5x_checkpoint(params, str(tmp_path), 3, zarr_min_size=1024, dtype=ml_dtypes.bfloat16)
  f32 = prompt_tuning.load_pretrained(step_dir, config=config)
  assert f32.params["decoder"]["logits_dense"]["kernel"].dtype == np.float32
  want = prompt_tuning.load_pretrained(hf_dir).logits(enc, dec_in)
  assert np.abs(f32.logits(enc, dec_in) - want).max() < 0.05 * np.abs(want).max()
  bf16 = prompt_tuning.load_pretrained(step_dir, config=config, dtype="bfloat16")
  assert bf16.params["decoder"]["logits_dense"]["kernel"].dtype == ml_dtypes.bfloat16
  assert bf16.logits(enc, dec_in).dtype == np.float32


def test_t5x_needs_a_config_and_checks_it_against_the_arrays(reference, tmp_path):
  config, params, _ = reference
  step_dir = t5x_format.write_t5x_checkpoint(params, str(tmp_path), 1, zarr_min_size=1024)
  with pytest.raises(
    CheckpointError,
    match=r"carries no model config \(no config.gin beside it\); name it: "
    r"MODEL_CONFIG='t5_1_1_base' \(gin\), --config t5_1_1_base",
  ):
    prompt_tuning.load_pretrained(step_dir)
  with pytest.raises(
    CheckpointError, match=r"decoder/decoder_norm/scale has shape \(32,\), the config expects \(512,\)"
  ):
    prompt_tuning.load_pretrained(step_dir, config="t5_1_1_small")
  # A T5 1.0 config for T5 1.1 arrays: the first unknown parameter is named.
  with pytest.raises(CheckpointError, match="missing parameter|unexpected parameter"):
    prompt_tuning.load_pretrained(step_dir, config=config.replace(mlp_activations=("relu",)))


def test_convert_command_writes_native_checkpoint_that_loads_identically(reference, padded_batch, tmp_path, capsys):
  config, params, hf_dir = reference
  enc, dec_in, _ = padded_batch
  want = prompt_tuning.load_pretrained(hf_dir).logits(enc, dec_in)
  native_from_hf = str(tmp_path / "native_hf")
  assert cli.main(["convert", hf_dir, native_from_hf]) == 0
  assert "wrote native checkpoint" in capsys.readouterr().out
  assert loader.detect_format(native_from_hf) == "native"
  loaded = prompt_tuning.load_pretrained(native_from_hf)
  assert loaded.config == config
  np.testing.assert_array_equal(loaded.logits(enc, dec_in), want)

  step_dir = t5x_format.write_t5x_checkpoint(params, str(tmp_path / "t5x"), 5, zarr_min_size=1024)
  native_from_t5x = str(tmp_path / "native_t5x")
  assert cli.main(["convert", step_dir, native_from_t5x, "--config", "tiny"]) == 1  # tiny has other dimensions
  assert "the config expects" in capsys.readouterr().err
  assert not os.path.exists(native_from_t5x)  # nothing half-written
  # Existing destinations are never overwritten.
  assert cli.main(["convert", hf_dir, native_from_hf]) == 1
  assert "already exists" in capsys.readouterr().err


def test_native_checkpoint_with_missing_or_damaged_params(reference, tmp_path):
  config, params, hf_dir = reference
  path = str(tmp_path / "native")
  assert cli.main(["convert", hf_dir, path]) == 0
  broken = str(tmp_path / "broken")
  shutil.copytree(path, broken)
  shutil.rmtree(os.path.join(broken, "params"))
  with pytest.raises(CheckpointError, match="no params/ directory"):
    prompt_tuning.load_pretrained(broken)
  with pytest.raises(
    CheckpointError, match=r"decoder/decoder_norm/scale has shape \(32,\), the config expects \(48,\)"
  ):
    prompt_tuning.load_pretrained(path, config=config.replace(emb_dim=48))
  damaged = str(tmp_path / "damaged")
  shutil.copytree(path, damaged)
  for dirpath, _, files in os.walk(os.path.join(damaged, "params", "d")):
    for name in files:
      with open(os.path.join(dirpath, name), "r+b") as f:
        f.truncate(8)
  with pytest.raises(
    CheckpointError, match=r"damaged/params: (orbax metadata is missing or incomplete|cannot restore parameters)"
  ):
    prompt_tuning.load_pretrained(damaged)
  with open(os.path.join(broken, "t5_config.json"), "w") as f:
    f.write('{"d_model": 3}')
  with pytest.raises(CheckpointError, match=r"unknown T5Config field\(s\) \['d_model'\]"):
    prompt_tuning.load_pretrained(broken)


def test_t5x_relative_attention_comes_from_the_runs_config_gin(hf_checkpoints, tmp_path, capsys):
  """The arrays do not pin max_distance: a wrong one loads silently unless the run's config.gin sets it.
  (With the HF model's own config, the loaded model is the one tests/reference checks against transformers.)"""
  config, params = hf.load_hf(hf_checkpoints["uneven"][1])  # 8 buckets, max distance 12
  model_dir = tmp_path / "run"
  step_dir = t5x_format.write_t5x_checkpoint(params, str(model_dir), 10, zarr_min_size=1024)
  wrong = config.replace(relative_attention_max_distance=128)
  assert loader.load_checkpoint(step_dir, wrong)[0] == wrong  # the hazard: nothing in the arrays objects
  assert "max distance 128 (relative attention as configured; no config.gin" in capsys.readouterr().err
  (model_dir / "config.gin").write_text(
    "relative_position_biases.RelativePositionBiases.max_distance = 12\n"
    "relative_position_biases.RelativePositionBiases.num_buckets = 8\n"
  )
  assert loader.load_checkpoint(step_dir, wrong)[0] == config
  err = capsys.readouterr().err
  assert f"t5x checkpoint {step_dir}: 3+1 layers, emb_dim 32" in err
  assert f"8 buckets max distance 12 (relative attention from {model_dir / 'config.gin'})" in err


def test_t5x_sizes_come_from_the_runs_config_gin(reference, tmp_path):
  """A t5x.examples.t5 run saves network.T5Config: then the checkpoint carries its config."""
  config, params, _ = reference
  model_dir = tmp_path / "run"
  step_dir = t5x_format.write_t5x_checkpoint(params, str(model_dir), 2, zarr_min_size=1024)
  (model_dir / "config.gin").write_text(
    "DROPOUT_RATE = 0.1\nnetwork.T5Config:\n"
    + "".join(f"  {field} = {getattr(config, field)!r}\n" for field in t5x_gin.ARCH_FIELDS)
    + "  dtype = 'bfloat16'\n  dropout_rate = %DROPOUT_RATE\n"
  )
  loaded, _ = loader.load_checkpoint(step_dir)
  assert loaded == config.replace(dropout_rate=0.0)  # dtype and dropout are the run's, not the model's
  with pytest.raises(CheckpointError, match=r"the config says emb_dim=48 but the run's \S+config.gin says 32$"):
    loader.load_checkpoint(step_dir, config.replace(emb_dim=48))


def test_convert_and_generate_take_a_config_file(reference, tmp_path, capsys):
  """Non-standard sizes from the command line: --config names a JSON file (HF config.json, t5_config.json)."""
  config, params, hf_dir = reference
  step_dir = t5x_format.write_t5x_checkpoint(params, str(tmp_path / "t5x"), 5, zarr_min_size=1024)
  native_dir = str(tmp_path / "native")
  assert cli.main(["convert", step_dir, native_dir, "--config", os.path.join(hf_dir, "config.json")]) == 0
  assert native.read_native_config(native_dir) == config
  capsys.readouterr()
  assert (
    cli.main(
      [
        "generate",
        "--checkpoint",
        step_dir,
        "--config",
        os.path.join(native_dir, "t5_config.json"),
        "--input_ids",
        "5 9 1",
        "--max_decode_length",
        "3",
      ]
    )
    == 0
  )
  assert f"model: {step_dir} (2+2 layers, emb_dim 32, vocab 96)" in capsys.readouterr().out
  assert cli.main(["generate", "--config", "t5_1_1_bogus"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "unknown model config 't5_1_1_bogus'" in err and "t5_config.json" in err
