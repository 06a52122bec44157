"""Multi-host flags of the gin-driven commands, named as in t5x.

  prompt-tuning train ... --coordinator_address=10.0.0.1:1234 --process_count=4 --process_index=2
  prompt-tuning train ... --multiprocess          # TPU pod / SLURM / Open MPI: detected

Any of them makes the command call `jax.distributed.initialize` before anything
touches a JAX backend. Each process then sees every host's devices (one
'data' x 'model' mesh over all of them) and feeds its own rows of each batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

# host:port, host a name, an IPv4 address or a bracketed IPv6 address.
_ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):(\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
  multiprocess: bool = False
  coordinator_address: str | None = None
  process_count: int | None = None
  process_index: int | None = None

  @property
  def enabled(self) -> bool:
    return self.multiprocess or any(
      v is not None for v in (self.coordinator_address, self.process_count, self.process_index)
    )


def add_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds --multiprocess (alias --multiprocess_gpu), --coordinator_address, --process_count, --process_index."""
  group = parser.add_argument_group(
    "multi-host",
    "One process per host (or per GPU), all in one device mesh; each feeds its own rows\n"
    "of every batch. Give the last three flags together, or --multiprocess alone where jax\n"
    "detects them (TPU pods, SLURM, Open MPI). MODEL_DIR must be shared by all hosts.",
  )
  group.add_argument(
    "--multiprocess",
    "--multiprocess_gpu",
    dest="multiprocess",
    action="store_true",
    help="call jax.distributed.initialize() (t5x: --multiprocess_gpu).",
  )
  group.add_argument(
    "--coordinator_address",
    metavar="HOST:PORT",
    help="address of process 0, which runs the coordinator (same on every process).",
  )
  group.add_argument("--process_count", type=int, metavar="N", help="number of processes.")
  group.add_argument("--process_index", type=int, metavar="I", help="this process, in [0, N).")
  return parser


def options_from_args(args: argparse.Namespace) -> DistributedOptions:
  return DistributedOptions(args.multiprocess, args.coordinator_address, args.process_count, args.process_index)


def validate(options: DistributedOptions) -> str | None:
  """A one-line description of what is wrong with the flags, or None."""
  address, count, index = options.coordinator_address, options.process_count, options.process_index
  given = {"--coordinator_address": address, "--process_count": count, "--process_index": index}
  missing = [name for name, value in given.items() if value is None]
  if len(missing) not in (0, 3):
    present = [name for name, value in given.items() if value is not None]
    return (
      f"{' and '.join(present)} also need{'s' if len(present) == 1 else ''} {' and '.join(missing)} "
      f"(or pass --multiprocess alone where jax detects them: TPU pods, SLURM, Open MPI)"
    )
  if address is not None:
    match = _ADDRESS_RE.match(address)
    if not match or not 0 < int(match.group(2)) < 65536:
      return f"--coordinator_address={address!r} is not HOST:PORT (e.g. 10.0.0.1:1234, port 1-65535)"
  if count is not None and count < 1:
    return f"--process_count={count} must be >= 1"
  if index is not None and not 0 <= index < count:
    return f"--process_index={index} is not in [0, {count}) (--process_count={count})"
  return None


def initialize(options: DistributedOptions) -> None:
  """Calls jax.distributed.initialize for valid `options` (a no-op when none is given).

  Multi-process CPU runs need cross-process collectives: gloo is chosen unless
  the user picked one (`jax_cpu_collectives_implementation`). It only affects
  the CPU backend.
  """
  if not options.enabled:
    return
  import jax

  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if options.coordinator_address is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(
      options.coordinator_address, num_processes=options.process_count, process_id=options.process_index
    )
