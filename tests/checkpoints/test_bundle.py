"""Prompt bundles: a prompt with the record of its frozen model, refused on any other."""

from __future__ import annotations

import json
import os
import struct

import jax
import numpy as np
import pytest

from prompt_tuning import param_tree
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.models.t5 import get_config, network

CONFIG = get_config("tiny", vocab_size=64)


@pytest.fixture(scope="module")
def frozen():
  """Two tiny T5s' weights (host numpy): the bundle's own, and another of the same architecture."""
  own = jax.tree.map(np.asarray, network.init_params(CONFIG, jax.random.PRNGKey(0)))
  other = jax.tree.map(np.asarray, network.init_params(CONFIG, jax.random.PRNGKey(1)))
  return own, other


def _bundle(frozen, **changes):
  prompt = np.random.RandomState(0).randn(3, CONFIG.emb_dim).astype(np.float32)
  fields = dict(
    prompt=prompt,
    config=bundle_lib.architecture(CONFIG),
    fingerprint=param_tree.fingerprint(frozen[0]),
    placement="suffix",
    task="quickstart_sentiment",
    feature_lengths={"inputs": 32, "targets": 4},
    step=300,
    metrics={"decode/accuracy": 81.0},
  )
  return bundle_lib.PromptBundle(**{**fields, **changes})


def test_round_trip_keeps_the_prompt_bits_and_the_record(frozen, tmp_path):
  written = _bundle(frozen)
  path = bundle_lib.write_bundle(str(tmp_path / "prompts" / "step_300.safetensors"), written)
  assert os.listdir(tmp_path / "prompts") == ["step_300.safetensors"]  # the temporary name is gone
  read = bundle_lib.read_bundle(path)
  np.testing.assert_array_equal(read.prompt, written.prompt)
  assert read.record() == written.record()
  # The header is plain JSON: any tool reads the record without us.
  data = open(path, "rb").read()
  (size,) = struct.unpack("<Q", data[:8])
  record = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["prompt_tuning"])
  assert record["task"] == "quickstart_sentiment" and record["model"]["config"]["emb_dim"] == CONFIG.emb_dim
  import safetensors.numpy

  np.testing.assert_array_equal(safetensors.numpy.load_file(path)["prompt"], written.prompt)


def test_fingerprint_names_the_weights_not_their_dtype(frozen):
  own, other = frozen
  as_bf16 = jax.tree.map(lambda a: a.astype(jax.numpy.bfloat16), own)
  assert param_tree.fingerprint(own) == param_tree.fingerprint(as_bf16)
  assert param_tree.fingerprint(own) != param_tree.fingerprint(other)
  assert param_tree.fingerprint(own) == param_tree.fingerprint({**own, "prompt": {"prompt": np.ones((2, 2))}})
  flat = param_tree.flatten(own)
  nudged = param_tree.unflatten({**flat, "decoder/decoder_norm/scale": flat["decoder/decoder_norm/scale"] + 0.5})
  assert param_tree.fingerprint(own) != param_tree.fingerprint(nudged)


def test_fits_its_own_model_and_refuses_others_in_one_line(frozen):
  own, other = frozen
  bundle = _bundle(frozen)
  bundle_lib.check_fits(bundle, CONFIG, param_tree.fingerprint(own), "b")  # its own: fine
  bundle_lib.check_fits(bundle, CONFIG.replace(dtype="bfloat16", dropout_rate=0.1), "", "b")  # runtime fields
  cases = [
    ((CONFIG, param_tree.fingerprint(other)), "trained on frozen weights"),
    ((CONFIG.replace(emb_dim=64), ""), "the prompt is 32 wide"),
    ((CONFIG.replace(num_encoder_layers=3), ""), "num_encoder_layers=2; this frozen model has num_encoder_layers=3"),
  ]
  for (config, fingerprint), message in cases:
    with pytest.raises(CheckpointError) as error:
      bundle_lib.check_fits(bundle, config, fingerprint, "b.safetensors")
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_what_is_not_a_bundle_is_one_line(frozen, tmp_path):
  import safetensors.numpy

  plain = tmp_path / "plain.safetensors"
  safetensors.numpy.save_file({"prompt": np.ones((2, 4), np.float32)}, str(plain))
  truncated = tmp_path / "cut.safetensors"
  truncated.write_bytes(_bundle(frozen).to_bytes()[:-7])
  for path, message in [
    (tmp_path / "missing.safetensors", "no such prompt bundle"),
    (plain, "not a prompt bundle"),
    (truncated, "unreadable prompt bundle"),
  ]:
    with pytest.raises(CheckpointError) as error:
      bundle_lib.read_bundle(str(path))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_training_checkpoints_write_bundles_and_resume_rewrites_a_lost_one(frozen, tmp_path):
  from prompt_tuning.checkpoints.train_state import TrainCheckpointer

  record = _bundle(frozen, step=None, metrics={})
  tree = {"step": np.asarray(1, np.int32), "params": {"prompt": {"prompt": record.prompt}}, "opt_state": ()}
  checkpointer = TrainCheckpointer(str(tmp_path), save_period=1, keep=None, warn=lambda m: None, bundle=record)
  checkpointer.save(1, tree, 0, metrics={"decode/accuracy": 50.0})
  checkpointer.close()
  path = tmp_path / "prompts" / "step_1.safetensors"
  written = bundle_lib.read_bundle(str(path))
  assert (written.step, written.metrics, written.task) == (1, {"decode/accuracy": 50.0}, "quickstart_sentiment")
  np.testing.assert_array_equal(written.prompt, record.prompt)
  path.unlink()  # a kill between the checkpoint's commit and its bundle
  notes = []
  checkpointer = TrainCheckpointer(str(tmp_path), save_period=1, keep=None, warn=notes.append, bundle=record)
  checkpointer.restore(tree)
  checkpointer.close()
  np.testing.assert_array_equal(bundle_lib.read_bundle(str(path)).prompt, record.prompt)
  assert len(notes) == 1 and "its bundle is missing" in notes[0], notes
