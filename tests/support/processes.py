"""`prompt-tuning` commands as several local processes of one multi-host job (jax.distributed on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping

from support.gcs_emulator import free_port


def cpu_env(devices: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """This environment on the CPU backend with `devices` devices (plus `extra`); the session's own
  XLA_FLAGS (tests/conftest.py) are kept."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count=")]
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
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
