"""`bench --profile`: the kernel table read from a trace's device planes, and the flag's checks.

The GPU's trace layout is written here as an XSpace text proto (what `jax.profiler` records on a
GPU: one plane per device, a line of kernel events per CUDA stream, derived lines beside them);
the CPU backend records no device kernels, which the train-mode run in test_bench.py covers.
"""

from __future__ import annotations

import jax
import pytest

from prompt_tuning.bench import profile
from prompt_tuning.cli import main as cli


def _event(metadata_id: int, offset_us: float, duration_us: float, hlo_op: str | None = None) -> str:
  stat = f' stats {{ metadata_id: 100 str_value: "{hlo_op}" }}' if hlo_op else ""
  return f"events {{ metadata_id: {metadata_id} offset_ps: {int(offset_us * 1e6)} duration_ps: {int(duration_us * 1e6)}{stat} }}"


def _plane(plane_id: int, name: str, lines: dict[str, list[str]], kernels: list[str]) -> str:
  body = "".join(
    f'lines {{ id: {i} display_id: {i} name: "{line}" timestamp_ns: 1000 {" ".join(events)} }}\n'
    for i, (line, events) in enumerate(lines.items(), 1)
  )
  metadata = "".join(
    f'event_metadata {{ key: {i} value {{ id: {i} name: "{k}" }} }}\n' for i, k in enumerate(kernels, 1)
  )
  stats = 'stat_metadata { key: 100 value { id: 100 name: "hlo_op" } }'
  return f'planes {{ id: {plane_id} name: "{name}"\n{body}{metadata}{stats} }}\n'


def test_kernels_are_summed_by_name_over_device_streams_per_call():
  """Two calls on two streams of one GPU: per-call times and launches, longest first, HLO ops by
  count; the host plane and a GPU's derived 'XLA Modules' line (the whole program) are not kernels."""
  gpu = _plane(
    1,
    "/device:GPU:0",
    {
      "Stream #14(Compute)": [_event(1, 0, 60, "fusion.3"), _event(2, 70, 10), _event(1, 90, 60, "fusion.9")],
      "Stream #15(MemcpyD2H,Compute)": [_event(2, 0, 12), _event(1, 20, 40, "fusion.3")],
      "XLA Modules": [_event(3, 0, 500)],
    },
    ["gemm", "loop_add_fusion", "jit_train_step"],
  )
  host = _plane(2, "/host:CPU", {"python3": [_event(1, 0, 900)]}, ["PjitFunction(step)"])
  data = jax.profiler.ProfileData.from_text_proto(gpu + host)
  kernels = profile.device_kernels(data, calls=2)
  assert [k.name for k in kernels] == ["gemm", "loop_add_fusion"]
  gemm, add = kernels
  assert gemm.us_per_call == pytest.approx(80) and gemm.launches_per_call == 1.5
  assert gemm.hlo_ops == ("fusion.3", "fusion.9")
  assert add.us_per_call == pytest.approx(11) and add.launches_per_call == 1 and add.hlo_ops == ()
  table = profile.format_profile("ours", profile.Profile("/traces/ours", 2, kernels))
  assert "device kernels: 0.091 ms a call" in table
  gemm_line = next(line for line in table.splitlines() if " gemm" in line)
  assert gemm_line.split()[:3] == ["80.0", "87.9%", "1.5"] and gemm_line.endswith("[fusion.3, fusion.9]")


def test_a_tpu_plane_is_read_from_its_xla_ops_line():
  tpu = _plane(
    1,
    "/device:TPU:0",
    {"XLA Ops": [_event(1, 0, 30), _event(2, 40, 20)], "XLA Modules": [_event(3, 0, 70)], "Steps": [_event(3, 0, 70)]},
    ["fusion.1", "convolution.2", "jit_step"],
  )
  kernels = profile.device_kernels(jax.profiler.ProfileData.from_text_proto(tpu), calls=1)
  assert [(k.name, k.us_per_call) for k in kernels] == [
    ("fusion.1", pytest.approx(30)),
    ("convolution.2", pytest.approx(20)),
  ]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--mode", "infer"], "--profile traces --mode train or decode rows, not --mode infer"),
    (["--profile_calls", "0"], "--profile_calls must be >= 1, got 0"),
  ],
)
def test_bad_profile_flags_are_one_line_errors(tmp_path, flags, message, capsys):
  argv = ["bench", "--model", "tiny", "--input_length", "24", "--prompt_length", "4", "--peft", "none"]
  assert cli.main([*argv, "--profile", str(tmp_path), *flags]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1
  assert not any(tmp_path.iterdir())  # nothing ran
