"""`prompt-tuning` commands as several local processes of one multi-host job (jax.distributed on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping

from support.gcs_emulator import free_port


def xla_flags(optimized: bool = False) -> str:
  """The session's XLA_FLAGS (tests/conftest.py), without any host device count; without its -O0
  when `optimized` (XLA's default level)."""
  dropped = ("--xla_force_host_platform_device_count=", *(("--xla_backend_optimization_level=",) if optimized else ()))
  return " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(dropped))


def cpu_env(devices: int, extra: Mapping[str, str] | None = None, optimized: bool = False) -> dict[str, str]:
  """This environment on the CPU backend with `devices` devices (plus `extra`), keeping the session's
  XLA_FLAGS. `optimized`: XLA's default level instead of the suite's -O0, for a comparison of
  float32 results within 1e-5 between differently partitioned programs, which holds there (LLVM
  contracts multiply-adds alike in both) and not always at -O0."""
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"{xla_flags(optimized)} --xla_force_host_platform_device_count={devices}".strip(),
    **(extra or {}),
  }


def run_processes(
  cwd, args, *, processes: int = 2, devices: int = 2, env: Mapping[str, str] | None = None, timeout: float = 300
) -> list[str]:
  """Runs `prompt-tuning ARGS` as processes 0..processes-1 of one job (`devices` CPU devices each).

  Returns their stdouts; fails with the stderr of the first process that failed.
  """
  port = free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "prompt_tuning.cli.main",
        *args,
        f"--coordinator_address=localhost:{port}",
        f"--process_count={processes}",
        f"--process_index={i}",
      ],
      cwd=cwd,
      env=cpu_env(devices, env),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(processes)
  ]
  outs = []
  try:
    for i, proc in enumerate(procs):
      out, err = proc.communicate(timeout=timeout)
      assert proc.returncode == 0, f"process {i}: {err[-3000:]}"
      outs.append(out)
  finally:
    for proc in procs:  # one failed: the others would wait for it until jax's timeout
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return outs
