"""Where our rows' time goes: a `jax.profiler` trace of a few more calls, and its kernels by time.

`prompt-tuning bench --profile DIR` (train and decode modes) runs each of our rows' compiled call
`--profile_calls` more times after timing it, under `jax.profiler.trace(DIR/<row>)`, then reads the
trace back and prints the device kernels by total time per call: the table BENCHMARKS.md's profiles
come from. The directory is what TensorBoard's profile plugin and Perfetto open for the timeline.

Kernels are read from the device planes of the trace (XSpace): on GPUs each CUDA stream is a line of
kernel events, on TPUs the 'XLA Ops' line. Kernels XLA deduplicated share one name (an identical
fusion in 24 layers is one row with 24 launches a call); `hlo_ops` lists the HLO instructions the
trace attributes them to, where it does (inside XLA command buffers it names the buffer). On the
CPU backend there are no device planes: the table is empty and says so.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
from typing import Any, Callable

import jax

TOP = 30  # kernels printed; the JSON keeps up to JSON_TOP
JSON_TOP = 100


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel name's time in the traced calls, per call."""

  name: str
  us_per_call: float
  launches_per_call: float
  hlo_ops: tuple[str, ...] = ()  # the HLO instructions that launched it, most frequent first (up to 4)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Profile:
  """The kernel table of `calls` traced calls, and where the trace lies."""

  trace_dir: str
  calls: int
  kernels: tuple[Kernel, ...]

  @property
  def device_us_per_call(self) -> float:
    return sum(k.us_per_call for k in self.kernels)

  def to_dict(self) -> dict[str, Any]:
    return {
      "trace_dir": self.trace_dir,
      "calls": self.calls,
      "device_ms_per_call": self.device_us_per_call / 1e3,
      "kernels": [k.to_dict() for k in self.kernels[:JSON_TOP]],
    }


@dataclasses.dataclass(frozen=True)
class Profiler:
  """`bench --profile DIR --profile_calls N`: traces each of our rows into DIR/<row name>."""

  directory: str
  calls: int = 5

  def __post_init__(self):
    if self.calls < 1:
      raise ValueError(f"--profile_calls must be >= 1, got {self.calls}")

  def profile(self, row_name: str, call: Callable[[], Any]) -> Profile:
    """Traces `calls` calls of `call` (which blocks until its outputs are ready) and reads them back."""
    trace_dir = os.path.join(self.directory, re.sub(r"[^A-Za-z0-9_.-]+", "_", row_name.strip()))
    with jax.profiler.trace(trace_dir):
      for _ in range(self.calls):
        call()
    return Profile(trace_dir, self.calls, device_kernels(read_trace(trace_dir), self.calls))

  def row_extra(self, row_name: str, call: Callable[[], Any]) -> dict[str, Any]:
    """Profiles `call`, prints its table, and returns what the row keeps: {'profile': ...}."""
    profiled = self.profile(row_name, call)
    print(format_profile(row_name, profiled), flush=True)
    return {"profile": profiled.to_dict()}


def read_trace(trace_dir: str) -> Any:
  """The newest XSpace (`*.xplane.pb`) under `trace_dir`, as jax.profiler.ProfileData."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}: the profiler wrote no trace")
  return jax.profiler.ProfileData.from_file(max(paths, key=os.path.getmtime))


def _kernel_lines(plane: Any) -> list[Any]:
  """A device plane's lines of kernel events: 'XLA Ops' where there is one (TPU), else the streams (GPU)."""
  lines = list(plane.lines)
  ops = [line for line in lines if line.name == "XLA Ops"]
  return ops or [line for line in lines if line.name.startswith("Stream")]


def device_kernels(data: Any, calls: int) -> tuple[Kernel, ...]:
  """Every device plane's kernels, summed by name, longest total first; times per call."""
  total_ns = collections.Counter()
  launches = collections.Counter()
  ops = collections.defaultdict(collections.Counter)
  for plane in data.planes:
    if not plane.name.startswith("/device:"):
      continue
    for line in _kernel_lines(plane):
      for event in line.events:
        total_ns[event.name] += event.duration_ns
        launches[event.name] += 1
        op = dict(event.stats).get("hlo_op")
        if op:
          ops[event.name][str(op)] += 1
  return tuple(
    Kernel(name, ns / 1e3 / calls, launches[name] / calls, tuple(op for op, _ in ops[name].most_common(4)))
    for name, ns in total_ns.most_common()
  )


def format_profile(row_name: str, profile: Profile, top: int = TOP) -> str:
  """The printed table: per call, the kernels' total and each kernel's time, launches and HLO ops."""
  head = f"profile of '{row_name}': {profile.calls} calls traced into {profile.trace_dir}"
  if not profile.kernels:
    return f"{head}\n  no device kernels in the trace (the CPU backend records none)"
  lines = [
    f"{head}\n  device kernels: {profile.device_us_per_call / 1e3:.3f} ms a call; the {min(top, len(profile.kernels))} "
    f"longest of {len(profile.kernels)} names:",
    f"  {'us/call':>10}  {'share':>6}  {'launches':>8}  kernel  [HLO ops]",
  ]
  for k in profile.kernels[:top]:
    share = k.us_per_call / profile.device_us_per_call
    ops = f"  [{', '.join(k.hlo_ops)}]" if k.hlo_ops else ""
    lines.append(f"  {k.us_per_call:10.1f}  {share:6.1%}  {k.launches_per_call:>8g}  {k.name[:100]}{ops}")
  return "\n".join(lines)
