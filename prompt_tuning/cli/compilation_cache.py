"""JAX's persistent compilation cache, on by default for the commands that compile a model.

A short run spends most of its time in XLA compilation (the quick start's eval: most of
its wall time). JAX can keep compiled executables on disk and load them in the next
process instead; `prompt-tuning train`, `eval`, `infer` and `generate` turn that on in a
per-user directory before anything compiles:

  $PROMPT_TUNING_JAX_CACHE_DIR       when set; '' or 'off' (also 0, false, none) turns the cache off
  $XDG_CACHE_HOME/prompt_tuning/jax  otherwise, when XDG_CACHE_HOME is set
  ~/.cache/prompt_tuning/jax         otherwise

A cache directory the user set for JAX itself (JAX_COMPILATION_CACHE_DIR, or
jax.config's jax_compilation_cache_dir) is left as it is. `bench` never uses the
cache: it reports compile times. The library (`import prompt_tuning`) changes no JAX
setting: this is the command line's business.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

ENV = "PROMPT_TUNING_JAX_CACHE_DIR"
_OFF = ("", "0", "off", "false", "none")

# JAX caches only compilations that took at least 1 s by default. A run also compiles dozens
# of small programs (parameter placement, the prompt initializer, decoding per shape), each
# below that but together most of a short command's time. Measured on the quick start's
# `prompt-tuning eval` (2 CPU cores), CPU seconds of a repeated run: no cache 8.0; threshold
# 1 s 6.1 (2 entries); 0.1 s 3.8 (13); 0 s 2.8 (69 entries, 0.5 MB; 6.6 s -> 3.0 s of wall
# time). So: everything.
MIN_COMPILE_TIME_S = 0.0


def cache_dir(environ: Mapping[str, str] | None = None) -> str | None:
  """The directory the commands use, or None when the cache is off or JAX's own setting rules."""
  environ = os.environ if environ is None else environ
  if ENV in environ:
    value = environ[ENV].strip()
    return None if value.lower() in _OFF else os.path.expanduser(value)
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return None  # jax reads it itself
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "prompt_tuning", "jax")


def enable(environ: Mapping[str, str] | None = None) -> str | None:
  """Points JAX's persistent compilation cache at `cache_dir()`; returns the directory in use (or None).

  Call before the first compilation: JAX decides once per process whether it uses a cache.
  A directory that cannot be created turns the cache off with one line on stderr. Nothing is
  ever evicted (JAX needs the `filelock` package for that): delete the directory to reclaim it.
  """
  import jax

  configured = jax.config.jax_compilation_cache_dir
  if configured:  # the user's own JAX setting wins
    return configured
  path = cache_dir(environ)
  if path is None:
    return None
  if "://" not in path:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      print(
        f"prompt-tuning: compilation cache off: cannot create {path} ({e.strerror or e}); "
        f"set {ENV} to another directory or to 'off'",
        file=sys.stderr,
      )
      return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
  # Every size: the entries of a T5 are few (a train step, a decoder per shape), and -1 also keeps
  # JAX from raising the floor for some filesystems behind our back.
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return path
