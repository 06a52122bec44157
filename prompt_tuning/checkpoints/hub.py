"""HuggingFace hub model ids and hub-cache folders -> a local checkpoint directory, offline.

`huggingface_hub` (and `transformers`) keep downloaded models in a cache laid
out as documented for huggingface_hub's file cache:

  <cache>/models--<org>--<name>/refs/<branch or tag>   a file holding a commit hash
  <cache>/models--<org>--<name>/snapshots/<commit>/    the files (links into blobs/)

<cache> is $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub,
else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. A snapshot
directory is an ordinary HF checkpoint directory. This module only reads that
layout (no network, no huggingface_hub import), so `google/t5-v1_1-small`,
`google/t5-v1_1-small@<revision>` or a `models--google--t5-v1_1-small` folder
work wherever a checkpoint path does, once the model has been downloaded.
"""

from __future__ import annotations

import os
import re

from prompt_tuning.checkpoints.structure import CheckpointError

# A hub id: `name` or `org/name`, optionally `@revision`; never a path that starts like one.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@(?P<revision>[\w./-]+))?$")
_REPO_FOLDER = re.compile(r"^models--.+")


def cache_dir() -> str:
  """The hub cache directory, by huggingface_hub's environment variables and defaults (its constants.py)."""
  home = os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"))
  cache = os.getenv("HF_HUB_CACHE", os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))
  return os.path.expandvars(os.path.expanduser(cache))


def repo_folder(repo_id: str) -> str:
  """'google/t5-v1_1-small' -> 'models--google--t5-v1_1-small'."""
  return "models--" + repo_id.replace("/", "--")


def snapshot(repo_dir: str, revision: str = "main") -> str:
  """The snapshot directory of `revision` (a branch, tag or commit) inside a cached repo folder.

  A repo folder without refs/main but with a single snapshot (a download of one
  pinned commit) resolves to that snapshot.
  """
  ref = os.path.join(repo_dir, "refs", revision)
  commit = revision
  if os.path.isfile(ref):
    with open(ref) as f:
      commit = f.read().strip()
  path = os.path.join(repo_dir, "snapshots", commit)
  if os.path.isdir(path):
    return path
  snapshots_dir = os.path.join(repo_dir, "snapshots")
  snapshots = sorted(os.listdir(snapshots_dir)) if os.path.isdir(snapshots_dir) else []
  if revision == "main" and len(snapshots) == 1:
    return os.path.join(snapshots_dir, snapshots[0])
  have = ", ".join(snapshots) or "none"
  raise CheckpointError(f"{repo_dir}: no snapshot for revision {revision!r} in the hub cache (snapshots: {have})")


def resolve(path: str) -> str:
  """`path` itself if it exists (or is a URL); else the cached snapshot of a hub id.

  Raises CheckpointError (one line) when `path` is neither a local path nor a
  model id found in the local hub cache.
  """
  if "://" in path or os.path.exists(path):
    if os.path.isdir(path) and _REPO_FOLDER.match(os.path.basename(os.path.normpath(path))):
      return snapshot(path)  # a cached repo folder itself: its main snapshot
    return path
  match = _HUB_ID.match(path)
  if match is None or path.startswith((".", "~")):
    raise CheckpointError(f"{path}: checkpoint path does not exist")
  repo_id, revision = match.group("repo"), match.group("revision") or "main"
  cache = cache_dir()
  repo_dir = os.path.join(cache, repo_folder(repo_id))
  if not os.path.isdir(repo_dir):
    raise CheckpointError(
      f"{path}: no such checkpoint directory, and no HuggingFace hub model {repo_id!r} in "
      f"the local hub cache {cache} (download it first, e.g. `hf download {repo_id}`, "
      f"or set HF_HUB_CACHE)"
    )
  return snapshot(repo_dir, revision)
