"""HF hub model ids and hub-cache folders, resolved offline from a cache laid out as huggingface_hub does."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from prompt_tuning.checkpoints import hub, loader
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.cli import main as cli
from prompt_tuning.param_tree import flatten

REPO_ID = "google/t5-tiny-test"
COMMITS = ("1f0e3d2c1b0a", "9a8b7c6d5e4f")  # an older snapshot, then the one refs/main names


def _lay_out_cache(src: str, cache) -> str:
  """<cache>/models--google--t5-tiny-test with blobs/, two snapshots of symlinks and refs/main."""
  repo = cache / hub.repo_folder(REPO_ID)
  (repo / "blobs").mkdir(parents=True)
  for commit in COMMITS:
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in os.listdir(src):
      blob = repo / "blobs" / f"{commit}-{name}"  # huggingface_hub names blobs by content hash
      shutil.copyfile(os.path.join(src, name), blob)
      os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(COMMITS[1])
  (repo / "refs" / "v0").write_text(COMMITS[0])
  return str(repo)


@pytest.fixture
def hub_cache(hf_checkpoints, tmp_path, monkeypatch):
  src = hf_checkpoints["t5_1_0"][1]
  cache = tmp_path / "hub"
  repo = _lay_out_cache(src, cache)
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  return src, str(cache), repo


def test_model_id_and_cache_folders_resolve_like_huggingface_hub(hub_cache):
  from huggingface_hub import try_to_load_from_cache

  src, cache, repo = hub_cache
  main = os.path.join(repo, "snapshots", COMMITS[1])
  assert hub.resolve(REPO_ID) == main
  # huggingface_hub's own offline lookup finds the same snapshot.
  assert os.path.dirname(try_to_load_from_cache(REPO_ID, "config.json", cache_dir=cache)) == main
  assert (
    hub.resolve(f"{REPO_ID}@v0")
    == hub.resolve(f"{REPO_ID}@{COMMITS[0]}")
    == os.path.join(repo, "snapshots", COMMITS[0])
  )
  assert hub.resolve(repo) == main  # the repo folder itself
  assert hub.resolve(main) == main  # a snapshot is a plain directory
  assert hub.resolve("gs://bucket/t5x/checkpoint_1") == "gs://bucket/t5x/checkpoint_1"
  # Loaded through the id: the same arrays as the directory it was copied from.
  config, params = loader.load_checkpoint(REPO_ID)
  want_config, want = loader.load_checkpoint(src)
  assert config == want_config
  for name, value in flatten(want).items():
    np.testing.assert_array_equal(flatten(params)[name], value)


def test_cache_location_follows_huggingface_hub(monkeypatch, tmp_path):
  for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert hub.cache_dir() == os.path.join(str(tmp_path), ".cache", "huggingface", "hub")
  monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
  assert hub.cache_dir() == "/xdg/huggingface/hub"
  monkeypatch.setenv("HF_HOME", "/hf_home")
  assert hub.cache_dir() == "/hf_home/hub"
  monkeypatch.setenv("HF_HUB_CACHE", "/hub_cache")
  assert hub.cache_dir() == "/hub_cache"


def test_absent_model_or_revision_is_one_line(hub_cache, capsys):
  _, cache, repo = hub_cache
  with pytest.raises(
    CheckpointError,
    match=rf"^google/t5-v1_1-small: no such checkpoint directory, and no "
    rf"HuggingFace hub model 'google/t5-v1_1-small' in the local hub cache "
    rf"{cache} \(download it first",
  ):
    loader.load_checkpoint("google/t5-v1_1-small")
  with pytest.raises(
    CheckpointError,
    match=rf"no snapshot for revision 'v9' in the hub cache \(snapshots: "
    rf"{COMMITS[0]}, {COMMITS[1]}\)",
  ):
    hub.resolve(f"{REPO_ID}@v9")
  with pytest.raises(CheckpointError, match=r"^\./missing: checkpoint path does not exist$"):
    hub.resolve("./missing")
  assert cli.main(["generate", "--checkpoint", "google/t5-v1_1-small"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "no HuggingFace hub model 'google/t5-v1_1-small'" in err
