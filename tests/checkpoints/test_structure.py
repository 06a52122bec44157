"""checkpoints.structure: the '/'-joined parameter paths every importer, split and error message uses."""

from __future__ import annotations

import numpy as np
import pytest
from flax.core import FrozenDict

from prompt_tuning.checkpoints.structure import CheckpointError, check_params
from prompt_tuning.param_tree import flatten, unflatten

TREE = {
  "encoder": {"layers_0": {"attention": {"query": {"kernel": np.zeros((2, 3))}}}, "empty": {}},
  "prompt": {"prompt": np.ones((4, 2))},
}


def test_flatten_joins_keys_with_slashes_and_drops_empty_dicts():
  flat = flatten(TREE)
  assert list(flat) == ["encoder/layers_0/attention/query/kernel", "prompt/prompt"]
  assert flat["prompt/prompt"] is TREE["prompt"]["prompt"]


def test_unflatten_inverts_flatten():
  tree = unflatten(flatten(TREE))
  assert tree.keys() == {"encoder", "prompt"} and "empty" not in tree["encoder"]
  assert (
    tree["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    is TREE["encoder"]["layers_0"]["attention"]["query"]["kernel"]
  )
  assert flatten(tree) == flatten(TREE)


def test_flatten_descends_into_frozen_dicts():
  assert list(flatten(FrozenDict({"a": {"b": 1}, "c": FrozenDict({"d": 2})}))) == ["a/b", "c/d"]


def test_is_leaf_keeps_a_dict_whole():
  spec = {"driver": "zarr", "kvstore": {"path": "x"}}
  flat = flatten({"a": {"kernel": spec, "bias": None}}, is_leaf=lambda node: "driver" in node)
  assert flat == {"a/kernel": spec, "a/bias": None}


def test_check_params_names_the_first_path_and_both_shapes():
  expected = {"a": {"kernel": np.zeros((2, 3))}, "b": np.zeros(4)}
  with pytest.raises(
    CheckpointError, match=r"^ckpt: parameter a/kernel has shape \(3, 2\), the config expects \(2, 3\)$"
  ):
    check_params({"a": {"kernel": np.zeros((3, 2))}, "b": np.zeros(4)}, expected, "ckpt")
  with pytest.raises(CheckpointError, match=r"^ckpt: missing parameter b \(expected shape \(4,\)\)$"):
    check_params({"a": {"kernel": np.zeros((2, 3))}}, expected, "ckpt")
  with pytest.raises(CheckpointError, match=r"^ckpt: unexpected parameter c/d \(shape \(\)\)"):
    check_params({**expected, "c": {"d": np.float32(0)}}, expected, "ckpt")
