"""The commands' JAX persistent compilation cache: where it goes, how it is turned off, and that a
second process really loads what the first compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from prompt_tuning.cli import compilation_cache as cache


def test_directory_by_environment():
  home = os.path.expanduser("~")
  assert cache.cache_dir({}) == os.path.join(home, ".cache", "prompt_tuning", "jax")
  assert cache.cache_dir({"XDG_CACHE_HOME": "/xdg"}) == "/xdg/prompt_tuning/jax"
  assert cache.cache_dir({cache.ENV: "~/jaxc", "XDG_CACHE_HOME": "/xdg"}) == os.path.join(home, "jaxc")
  for off in ("off", "OFF", "", "0", "false", "none"):
    assert cache.cache_dir({cache.ENV: off}) is None, off
  assert cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/mine"}) is None  # JAX's own setting: left alone
  assert cache.cache_dir({"JAX_COMPILATION_CACHE_DIR": "/mine", cache.ENV: "/ours"}) == "/ours"


# Run in fresh processes: JAX decides once per process whether it uses a cache.
_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from prompt_tuning.cli import compilation_cache
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
    path = compilation_cache.enable()
    jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0)(jnp.ones(7)).block_until_ready()  # compiles in milliseconds
    print(json.dumps({"path": path, "hits": len(hits), "dir": jax.config.jax_compilation_cache_dir}))
""")


def _run(env_changes: dict) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in (cache.ENV, "JAX_COMPILATION_CACHE_DIR")}
  env.update(env_changes)
  result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_a_second_process_loads_even_a_tiny_program_from_the_cache(tmp_path):
  directory = str(tmp_path / "xdg" / "prompt_tuning" / "jax")
  first, _ = _run({"XDG_CACHE_HOME": str(tmp_path / "xdg")})
  assert first == {"path": directory, "hits": 0, "dir": directory} and os.listdir(directory)
  second, _ = _run({"XDG_CACHE_HOME": str(tmp_path / "xdg")})
  assert second["hits"] >= 1  # the threshold keeps sub-second compilations too
  off, _ = _run({cache.ENV: "off", "XDG_CACHE_HOME": str(tmp_path / "xdg")})
  assert off == {"path": None, "hits": 0, "dir": None}
  blocked = tmp_path / "file"
  blocked.write_text("")
  result, err = _run({cache.ENV: str(blocked / "sub")})  # cannot be created: off, with one line
  assert result["dir"] is None and err.count("\n") == 1 and "compilation cache off: cannot create" in err
