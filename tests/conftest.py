"""Shared fixtures: tiny HF reference models saved to disk once per session."""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest

# Helpers live in tests/support; tests/ itself holds no package code, so this shadows nothing.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
  """One persistent JAX compilation cache for the whole session, this process and every subprocess.

  Most tests compile the same few tiny programs (the quick start's step, decoding loops), many of
  them in fresh CLI subprocesses: from the cache a quick-start run takes 3.5 CPU-seconds instead of
  11. Entries are keyed by the program, its flags and the devices, so a hit is the same executable.
  PROMPT_TUNING_TEST_CACHE_DIR keeps one across sessions (e.g. for repeated local runs).
  """
  cache_dir = os.environ.get("PROMPT_TUNING_TEST_CACHE_DIR") or tempfile.mkdtemp(prefix="pt_jax_cache_")
  settings = {
    # pytest-xdist's workers start after this ran in the controller and inherit its environment:
    # one cache for all of them, so a program compiled by one worker is a hit in the other.
    "PROMPT_TUNING_TEST_CACHE_DIR": cache_dir,
    "JAX_COMPILATION_CACHE_DIR": cache_dir,
    # Tiny test programs compile in well under the 1 s default threshold; cache them all.
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  # Tiny programs spend most of their time in XLA's CPU compiler, not running: its LLVM backend
  # at -O0 compiles the suite's programs in about half the CPU time (tests/train/test_step.py:
  # 77 -> 41 CPU-s). HLO-level fusion and layout are unchanged; every comparison a test makes is
  # between programs built the same way (or against torch with tolerances).
  flags = os.environ.get("XLA_FLAGS", "")
  if "--xla_backend_optimization_level" not in flags:
    settings["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
  os.environ.update(settings)  # inherited by the CLI subprocesses (tests/support/processes.cpu_env keeps XLA_FLAGS)
  import jax

  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker per core, at most 4.

  Each worker imports JAX, TensorFlow and torch and builds the session fixtures once (about 2 GB and
  a minute of CPU); past 4 workers that costs more than the spread saves on this suite.
  PYTEST_XDIST_AUTO_NUM_WORKERS still overrides it.
  """
  if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
    return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
  return max(1, min(len(os.sched_getaffinity(0)), 4))


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
