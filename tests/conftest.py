"""Shared fixtures: tiny HF reference models saved to disk once per session."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# Helpers live in tests/support; tests/ itself holds no package code, so this shadows nothing.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
  """{kind: (torch model, directory)} for every kind in tests.hf_models.KINDS."""
  from support import hf_models

  out = {}
  for kind in hf_models.KINDS:
    path = str(tmp_path_factory.mktemp(f"hf_{kind}"))
    out[kind] = (hf_models.save_hf_t5(kind, path), path)
  return out


@pytest.fixture
def padded_batch():
  """Encoder inputs and seqio-style decoder inputs/targets with padding, vocab < 96."""
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 96, size=(3, 9)).astype(np.int32)
  enc[1, 5:] = 0
  enc[2, 2:] = 0
  targets = rng.randint(2, 96, size=(3, 6)).astype(np.int32)
  targets[0, -1] = 1
  targets[1, 3] = 1
  targets[1, 4:] = 0
  dec_in = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  return enc, dec_in, targets
