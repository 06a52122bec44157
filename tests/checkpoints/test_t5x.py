"""Tests for reading t5x checkpoints (legacy msgpack + zarr, and orbax)."""

from __future__ import annotations

import os
import shutil

import ml_dtypes
import numpy as np
import pytest
from flax import serialization

from prompt_tuning.checkpoints import t5x
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.param_tree import flatten
from support import t5x_format

ZARR_MIN_SIZE = 256


def _t5_params(seed: int, d_model: int = 16, vocab: int = 40, layers: int = 2) -> dict:
  """A small random tree shaped like a t5x T5 `target`: embeddings, kernels, scales."""
  rng = np.random.default_rng(seed)
  f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)

  def block(cross: bool) -> dict:
    out = {
      "pre_attention_layer_norm": {"scale": f32(d_model)},
      "attention": {n: {"kernel": f32(d_model, d_model)} for n in ("query", "key", "value", "out")},
      "pre_mlp_layer_norm": {"scale": f32(d_model)},
      "mlp": {
        "wi_0": {"kernel": f32(d_model, 32)},
        "wi_1": {"kernel": f32(d_model, 32)},
        "wo": {"kernel": f32(32, d_model)},
      },
    }
    if cross:
      out["encoder_decoder_attention"] = {n: {"kernel": f32(d_model, d_model)} for n in ("query", "out")}
    return out

  return {
    "token_embedder": {"embedding": f32(vocab, d_model)},
    "encoder": {
      **{f"layers_{i}": block(False) for i in range(layers)},
      "encoder_norm": {"scale": f32(d_model)},
      "relpos_bias": {"rel_embedding": f32(2, 32)},
    },
    "decoder": {
      **{f"layers_{i}": block(True) for i in range(layers)},
      "decoder_norm": {"scale": f32(d_model)},
      "logits_dense": {"kernel": f32(d_model, vocab)},
    },
  }


def _assert_same(got: dict, want: dict) -> None:
  got, want = flatten(got), flatten(want)
  assert sorted(got) == sorted(want)
  for path, array in want.items():
    assert got[path].dtype == array.dtype, path
    assert got[path].shape == array.shape, path
    np.testing.assert_array_equal(got[path].view(np.uint8), array.view(np.uint8), err_msg=path)


def _raises(match: str, path) -> str:
  with pytest.raises(CheckpointError, match=match) as info:
    t5x.load_t5x_params(str(path))
  message = str(info.value)
  assert "\n" not in message
  return message


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
  """(params, model_dir, step_dir) of one legacy checkpoint with inline and zarr arrays."""
  params = _t5_params(0)
  model_dir = tmp_path_factory.mktemp("legacy")
  step_dir = t5x_format.write_t5x_checkpoint(params, str(model_dir), 10, zarr_min_size=ZARR_MIN_SIZE)
  return params, model_dir, step_dir


@pytest.fixture
def legacy_copy(legacy, tmp_path):
  """A private copy of the legacy checkpoint's step dir, for tests that damage it."""
  params, _, step_dir = legacy
  copy = tmp_path / "checkpoint_10"
  shutil.copytree(step_dir, copy)
  return params, copy


# ----------------------------------------------------------------------------- legacy layout


def test_legacy_round_trip_is_bit_exact(legacy):
  params, _, step_dir = legacy
  _assert_same(t5x.load_t5x_params(step_dir), params)


def test_legacy_layout_mixes_inline_and_relative_zarr_specs(legacy):
  params, _, step_dir = legacy
  with open(os.path.join(step_dir, "checkpoint"), "rb") as f:
    state = serialization.msgpack_restore(f.read())
  assert state["version"] == 3 and int(state["optimizer"]["state"]["step"]) == 10
  stored = flatten(state["optimizer"]["target"])
  query = state["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  assert query["kvstore"] == {"driver": "file", "path": "target.encoder.layers_0.attention.query.kernel"}
  assert os.path.isdir(os.path.join(step_dir, "target.encoder.layers_0.attention.query.kernel"))
  assert isinstance(stored["encoder/encoder_norm/scale"], np.ndarray)  # small: inline
  n_zarr = sum(name.startswith("target.") for name in os.listdir(step_dir))
  assert n_zarr == sum(a.size >= ZARR_MIN_SIZE for a in flatten(params).values())
  assert 0 < n_zarr < len(flatten(params))


def test_parent_dir_picks_highest_step(legacy, tmp_path):
  params, _, _ = legacy
  older = _t5_params(1)
  t5x_format.write_t5x_checkpoint(older, str(tmp_path), 9, zarr_min_size=ZARR_MIN_SIZE)
  t5x_format.write_t5x_checkpoint(params, str(tmp_path), 10, zarr_min_size=ZARR_MIN_SIZE)
  t5x_format.write_t5x_checkpoint(older, str(tmp_path), 2, zarr_min_size=ZARR_MIN_SIZE)
  (tmp_path / "checkpoint_99.tmp-1700000000").mkdir()  # an unfinished save is no step
  (tmp_path / "train").mkdir()
  _assert_same(t5x.load_t5x_params(str(tmp_path)), params)
  _assert_same(t5x.load_t5x_params(str(tmp_path / "checkpoint_9")), older)
  _assert_same(t5x.load_t5x_params(str(tmp_path / "checkpoint_9" / "checkpoint")), older)


def test_bfloat16_zarr_comes_back_as_stored(tmp_path):
  params = _t5_params(2)
  step_dir = t5x_format.write_t5x_checkpoint(params, str(tmp_path), 3, zarr_min_size=ZARR_MIN_SIZE, dtype="bfloat16")
  loaded = t5x.load_t5x_params(step_dir)
  want = {p: a.astype(ml_dtypes.bfloat16) for p, a in flatten(params).items()}
  _assert_same(loaded, t5x.unflatten(want))


# ----------------------------------------------------------------------------- orbax layout


@pytest.mark.parametrize("under_optimizer,as_jax", [(False, False), (True, True)])
def test_orbax_round_trip(tmp_path, under_optimizer, as_jax):
  params = _t5_params(3)
  step_dir = t5x_format.write_orbax_t5x_checkpoint(
    params, str(tmp_path), 4, under_optimizer=under_optimizer, as_jax=as_jax
  )
  assert os.path.isfile(os.path.join(step_dir, "state", "_METADATA"))
  loaded = t5x.load_t5x_params(str(tmp_path))
  assert all(type(a) is np.ndarray for a in flatten(loaded).values())
  _assert_same(loaded, params)


def test_orbax_reads_no_optimizer_state(tmp_path):
  params = _t5_params(4)
  step_dir = t5x_format.write_orbax_t5x_checkpoint(params, str(tmp_path), 4, use_ocdbt=False, param_states=True)
  state_dir = os.path.join(step_dir, "state")
  # Without OCDBT every array has its own directory; drop all optimizer state.
  dropped = [d for d in os.listdir(state_dir) if d.startswith("state.")]
  assert "state.param_states.encoder.layers_0.mlp.wo.kernel.v_row" in dropped
  for name in dropped:
    shutil.rmtree(os.path.join(state_dir, name))
  _assert_same(t5x.load_t5x_params(step_dir), params)
  shutil.rmtree(os.path.join(state_dir, "target.decoder.layers_0.attention.key.kernel"))
  msg = _raises("cannot restore orbax checkpoint parameters", step_dir)
  assert "target.decoder.layers_0.attention.key.kernel" in msg


def test_orbax_missing_metadata(tmp_path):
  step_dir = t5x_format.write_orbax_t5x_checkpoint(_t5_params(5), str(tmp_path), 4)
  os.remove(os.path.join(step_dir, "state", "_METADATA"))
  _raises("orbax checkpoint", step_dir)


def test_orbax_without_target(tmp_path):
  import orbax.checkpoint as ocp

  ocp.PyTreeCheckpointer().save(str(tmp_path / "checkpoint_1" / "state"), {"params": {"w": np.ones(3)}})
  msg = _raises("no 'optimizer/target' or 'target'", tmp_path)
  assert "params" in msg


# ----------------------------------------------------------------------------- spec resolution


def test_resolve_spec_gcs_kvstore_path_form():
  spec = {
    "driver": "zarr",
    "dtype": "float32",
    "metadata": {"shape": [4]},
    "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket", "path": "target.encoder.x.kernel"},
  }
  got = t5x.resolve_ts_spec(spec, "gs://bucket/dir/checkpoint_5")
  assert got["kvstore"] == {"driver": "gcs", "bucket": "bucket", "path": "dir/checkpoint_5/target.encoder.x.kernel"}
  assert got["metadata"] == {"shape": [4]} and "path" not in got
  assert spec["kvstore"]["bucket"] == "t5x-dummy-bucket"  # input untouched


def test_resolve_spec_old_top_level_path_form():
  spec = {
    "driver": "zarr",
    "dtype": "bfloat16",
    "path": "target.decoder.logits_dense.kernel",
    "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"},
    "metadata": {},
  }
  got = t5x.resolve_ts_spec(spec, "gs://bucket/dir/checkpoint_5/")
  assert got["kvstore"] == {
    "driver": "gcs",
    "bucket": "bucket",
    "path": "dir/checkpoint_5/target.decoder.logits_dense.kernel",
  }
  assert "path" not in got and got["dtype"] == "bfloat16"


@pytest.mark.parametrize("driver", ["file", "gfile", "gcs"])
def test_resolve_spec_any_known_driver_follows_the_checkpoint(driver):
  spec = {"driver": "zarr", "kvstore": {"driver": driver, "path": "target.a.kernel"}}
  assert t5x.resolve_ts_spec(spec, "gs://b/checkpoint_5")["kvstore"] == {
    "driver": "gcs",
    "bucket": "b",
    "path": "checkpoint_5/target.a.kernel",
  }
  assert t5x.resolve_ts_spec(spec, "/ckpt/checkpoint_5")["kvstore"] == {
    "driver": "file",
    "path": "/ckpt/checkpoint_5/target.a.kernel",
  }


def test_resolve_spec_absolute_path_is_reanchored():
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": "/elsewhere/checkpoint_5/target.a.kernel"}}
  assert t5x.resolve_ts_spec(spec, "/here/checkpoint_5")["kvstore"]["path"] == "/here/checkpoint_5/target.a.kernel"


def test_resolve_spec_without_kvstore():
  with pytest.raises(CheckpointError, match="tensorstore spec without a kvstore"):
    t5x.resolve_ts_spec({"driver": "zarr", "path": "target.a.kernel"}, "/ckpt/checkpoint_5")


def test_resolve_spec_unknown_driver():
  spec = {"driver": "zarr", "kvstore": {"driver": "s3", "path": "target.a.kernel"}}
  with pytest.raises(CheckpointError, match="unknown tensorstore kvstore driver 's3'"):
    t5x.resolve_ts_spec(spec, "/ckpt/checkpoint_5")


# ----------------------------------------------------------------------------- errors


def test_error_missing_path(tmp_path):
  _raises("does not exist", tmp_path / "nope")


def test_error_no_steps(tmp_path):
  (tmp_path / "checkpoint_x").mkdir()
  (tmp_path / "checkpoint_3.tmp-1").mkdir()
  _raises("no checkpoint_<step> directory found", tmp_path)


def test_error_empty_step_dir(tmp_path):
  (tmp_path / "checkpoint_3").mkdir()
  _raises("neither a 'checkpoint' msgpack file nor an orbax 'state/' directory", tmp_path)


def test_error_truncated_msgpack(legacy_copy):
  _, step_dir = legacy_copy
  data = (step_dir / "checkpoint").read_bytes()
  (step_dir / "checkpoint").write_bytes(data[: len(data) // 2])
  _raises("unreadable t5x msgpack checkpoint", step_dir)


def test_error_deleted_zarr_names_parameter(legacy_copy):
  _, step_dir = legacy_copy
  shutil.rmtree(step_dir / "target.decoder.layers_1.mlp.wo.kernel")
  msg = _raises("cannot read parameter decoder/layers_1/mlp/wo/kernel", step_dir)
  assert "target.decoder.layers_1.mlp.wo.kernel" in msg


def test_error_corrupt_zarr_chunk_names_parameter(legacy_copy):
  _, step_dir = legacy_copy
  (step_dir / "target.token_embedder.embedding" / "0.0").write_bytes(b"not gzip")
  _raises("cannot read parameter token_embedder/embedding", step_dir)


def test_error_missing_target(tmp_path):
  step_dir = tmp_path / "checkpoint_1"
  step_dir.mkdir()
  state = {"optimizer": {"state": {"step": np.int32(1)}}, "version": 3}
  (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
  msg = _raises("no 'optimizer/target' or 'target'", step_dir)
  assert "optimizer" in msg


def test_top_level_target_accepted(tmp_path):
  step_dir = tmp_path / "checkpoint_1"
  step_dir.mkdir()
  params = {"encoder": {"encoder_norm": {"scale": np.arange(4, dtype=np.float32)}}}
  (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize({"target": params, "state": {}}))
  _assert_same(t5x.load_t5x_params(str(step_dir)), params)


def test_error_unknown_kvstore_driver_in_checkpoint(tmp_path):
  step_dir = tmp_path / "checkpoint_1"
  step_dir.mkdir()
  spec = {"driver": "zarr", "kvstore": {"driver": "memory", "path": "target.a.kernel"}, "metadata": {}}
  (step_dir / "checkpoint").write_bytes(serialization.msgpack_serialize({"target": {"a": {"kernel": spec}}}))
  _raises("unknown tensorstore kvstore driver 'memory'", step_dir)
