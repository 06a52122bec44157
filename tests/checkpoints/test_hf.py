"""HuggingFace checkpoint import: file layouts, config mapping, and clear errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import prompt_tuning
from prompt_tuning.checkpoints import hf
from prompt_tuning.checkpoints.structure import CheckpointError


def _copy(src: str, dst) -> str:
  dst = str(dst)
  shutil.copytree(src, dst)
  return dst


def _edit_config(path: str, **changes) -> None:
  file = os.path.join(path, "config.json")
  with open(file) as f:
    config = json.load(f)
  for key, value in changes.items():
    if value is None:
      config.pop(key, None)
    else:
      config[key] = value
  with open(file, "w") as f:
    json.dump(config, f)


def test_config_mapping_of_both_families(hf_checkpoints):
  v10, _ = hf.load_hf(hf_checkpoints["t5_1_0"][1])
  v11, params = hf.load_hf(hf_checkpoints["t5_1_1"][1])
  uneven, _ = hf.load_hf(hf_checkpoints["uneven"][1])
  assert v10.mlp_activations == ("relu",) and v10.logits_via_embedding
  assert v11.mlp_activations == ("gelu", "linear") and not v11.logits_via_embedding
  assert "logits_dense" in params["decoder"]
  assert (uneven.num_encoder_layers, uneven.num_decoder_layers) == (3, 1)
  assert (uneven.relative_attention_num_buckets, uneven.relative_attention_max_distance) == (8, 12)


def test_dropout_rate_is_read_into_the_trained_network(hf_checkpoints, tmp_path):
  """config.json's dropout_rate becomes T5Config.dropout_rate of the network that training runs (with a
  dropout rng on every step; tests/models/test_network.py checks the network drops out only then)."""
  from prompt_tuning.runs import setup, specs

  path = _copy(hf_checkpoints["t5_1_1"][1], tmp_path / "dropout")
  _edit_config(path, dropout_rate=0.3)  # the tiny models are saved with 0.0
  config, _ = setup.frozen_model(specs.ModelSpec(checkpoint=path))  # the config every run's network is built from
  assert config.dropout_rate == 0.3
  _edit_config(path, dropout_rate=None)  # absent: transformers' default
  assert hf.load_hf(path)[0].dropout_rate == 0.1


@pytest.mark.parametrize(
  "trainable_params, trains_bias",
  [
    (r"prompt/prompt", False),  # prompt tuning
    (r".*", True),  # model tuning
    (r"encoder/relpos_bias/rel_embedding", True),
    (r"decoder/layers_0/.*", False),
  ],
)
def test_a_run_network_takes_the_position_bias_gradient_only_where_it_trains(
  hf_checkpoints, trainable_params, trains_bias
):
  from prompt_tuning.runs import setup, specs

  spec = specs.ModelSpec(checkpoint=hf_checkpoints["t5_1_1"][1], trainable_params=trainable_params)
  assert setup.frozen_model(spec)[0].position_bias_gradient is trains_bias


def test_old_transformers_config_with_tie_word_embeddings_false(hf_checkpoints, padded_batch, tmp_path):
  """Hub checkpoints saved before transformers 5 say tie_word_embeddings=false and have no
  scale_decoder_outputs; they must load as the untied, unscaled T5 1.1 head."""
  _, src = hf_checkpoints["t5_1_1"]
  path = _copy(src, tmp_path / "old")
  _edit_config(path, tie_word_embeddings=False, scale_decoder_outputs=None)
  enc, dec_in, _ = padded_batch
  old = prompt_tuning.load_pretrained(path)
  assert not old.config.logits_via_embedding
  np.testing.assert_allclose(old.logits(enc, dec_in), prompt_tuning.load_pretrained(src).logits(enc, dec_in), atol=1e-6)


def test_sharded_safetensors_and_pytorch_bin_load_the_same(hf_checkpoints, padded_batch, tmp_path):
  model, src = hf_checkpoints["t5_1_1"]
  enc, dec_in, _ = padded_batch
  want = prompt_tuning.load_pretrained(src).logits(enc, dec_in)
  sharded = str(tmp_path / "sharded")
  model.save_pretrained(sharded, max_shard_size="20KB")
  assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 1
  np.testing.assert_array_equal(prompt_tuning.load_pretrained(sharded).logits(enc, dec_in), want)

  torch_dir = _copy(src, tmp_path / "bin")
  os.remove(os.path.join(torch_dir, "model.safetensors"))
  state = {k: v.clone() for k, v in model.state_dict().items()}
  torch.save(state, os.path.join(torch_dir, "pytorch_model.bin"))
  np.testing.assert_array_equal(prompt_tuning.load_pretrained(torch_dir).logits(enc, dec_in), want)


def test_mismatches_name_the_parameter_and_shapes(hf_checkpoints, tmp_path):
  _, src = hf_checkpoints["t5_1_1"]
  # A config with a different width than the arrays: the shapes, then the field and the fix.
  with pytest.raises(
    CheckpointError,
    match=r"decoder/decoder_norm/scale has shape \(32,\), "
    r"the config expects \(64,\); the config passed in says emb_dim=64 "
    r"\(the checkpoint's: 32\): leave MODEL_CONFIG / --config / config= "
    r"unset to use the checkpoint's own$",
  ):
    prompt_tuning.load_pretrained(
      src, config=hf.config_from_hf({**json.load(open(os.path.join(src, "config.json"))), "d_model": 64})
    )
  # config.json says more layers than the weights hold.
  path = _copy(src, tmp_path / "deeper")
  _edit_config(path, num_layers=3)
  with pytest.raises(CheckpointError, match=r"missing tensor encoder\.block\.2\.layer\.0\.layer_norm\.weight"):
    prompt_tuning.load_pretrained(path)
  # config.json says fewer layers: the leftover tensor is named.
  path = _copy(src, tmp_path / "shallower")
  _edit_config(path, num_decoder_layers=1)
  with pytest.raises(CheckpointError, match=r"unexpected tensor decoder\.block\.1\.\S+"):
    prompt_tuning.load_pretrained(path)


def test_unknown_architecture_and_corrupt_files(hf_checkpoints, tmp_path):
  _, src = hf_checkpoints["t5_1_0"]
  path = _copy(src, tmp_path / "bart")
  _edit_config(path, model_type="bart")
  with pytest.raises(CheckpointError, match="unsupported architecture model_type='bart'"):
    prompt_tuning.load_pretrained(path)

  path = _copy(src, tmp_path / "truncated")
  weights = os.path.join(path, "model.safetensors")
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file"):
    prompt_tuning.load_pretrained(path)

  path = _copy(src, tmp_path / "badjson")
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
    prompt_tuning.load_pretrained(path)

  path = _copy(src, tmp_path / "noweights")
  os.remove(os.path.join(path, "model.safetensors"))
  with pytest.raises(CheckpointError, match="no model.safetensors, model.safetensors.index.json or pytorch_model.bin"):
    prompt_tuning.load_pretrained(path)


def test_nan_weights_are_reported(hf_checkpoints, tmp_path):
  from safetensors.numpy import load_file, save_file

  path = _copy(hf_checkpoints["t5_1_0"][1], tmp_path / "nan")
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  tensors["encoder.final_layer_norm.weight"][3] = np.nan
  save_file(tensors, file, metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match="encoder/encoder_norm/scale holds NaN"):
    prompt_tuning.load_pretrained(path)


def test_missing_path():
  with pytest.raises(CheckpointError, match="/no/such/dir: checkpoint path does not exist"):
    prompt_tuning.load_pretrained("/no/such/dir")
