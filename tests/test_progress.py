"""progress.ProgressBar on a plain stream (CI logs) and on a terminal, with an injected clock."""

from __future__ import annotations

import io

from prompt_tuning.progress import ProgressBar, format_duration


class FakeClock:
  """Time that only moves when told to."""

  def __init__(self, now: float = 1000.0):
    self.now = now

  def __call__(self) -> float:
    return self.now


class FakeTTY(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_format_duration():
  assert format_duration(70) == "0:01:10"
  assert format_duration(3725.4) == "1:02:05"
  assert format_duration(-3) == "0:00:00"


def test_render_matches_documented_line():
  clock = FakeClock()
  bar = ProgressBar(300, stream=io.StringIO(), clock=clock)
  clock.now += 70 * 120 / 180  # 120 steps done, 180 left at the same rate: 70 s
  bar.update(120, loss=1.2341, examples_per_s=512.34)
  assert bar.render() == "step 120/300 [====>     ] 40% loss 1.234 | 512.3 ex/s | ETA 0:01:10"


def test_bar_shapes():
  bar = ProgressBar(10, stream=io.StringIO(), clock=FakeClock())
  assert bar.render() == "step 0/10 [>         ] 0% | ETA ?"
  bar.update(10)
  assert bar.render().startswith("step 10/10 [==========] 100% | ETA 0:00:00")


def test_non_tty_prints_plain_lines_per_decile_and_log_steps():
  stream, clock = io.StringIO(), FakeClock()
  bar = ProgressBar(100, stream=stream, clock=clock)
  for step in range(1, 101):
    clock.now += 1.0
    bar.update(step, loss=0.5 if step == 55 else None)
  bar.close()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  steps = [int(line.split()[1].split("/")[0]) for line in lines]
  assert steps == [10, 20, 30, 40, 50, 55, 60, 70, 80, 90, 100]
  assert lines[5] == "step 55/100 [=====>    ] 55% loss 0.5 | ETA 0:00:45"
  assert lines[-1] == "step 100/100 [==========] 100% loss 0.5 | ETA 0:00:00"


def test_non_tty_throttles_log_steps_and_resumes_from_start_step():
  stream, clock = io.StringIO(), FakeClock()
  bar = ProgressBar(1000, start_step=500, stream=stream, clock=clock, min_interval_s=5.0)
  for step in range(501, 511):  # a loss every step, 1 s apart: printed every 5 s only
    clock.now += 1.0
    bar.update(step, loss=1.0)
  lines = stream.getvalue().splitlines()
  assert [line.split()[1] for line in lines] == ["501/1000", "506/1000"]
  # 5 steps in 5 s since the restart at 500 -> 494 steps left take 494 s.
  assert lines[1].endswith("ETA 0:08:14")
  bar.close()
  assert stream.getvalue().splitlines()[-1].startswith("step 510/1000")


def test_tty_redraws_in_place_and_close_ends_line():
  stream, clock = FakeTTY(), FakeClock()
  bar = ProgressBar(4, stream=stream, clock=clock, min_interval_s=0.5)
  clock.now += 1.0
  bar.update(1, loss=2.0, examples_per_s=100.0)
  clock.now += 0.1
  bar.update(2, loss=1.5)  # throttled: less than 0.5 s since the last draw
  clock.now += 1.0
  bar.update(3)
  clock.now += 0.1
  bar.update(4)  # the last step is always drawn
  out = stream.getvalue()
  assert "\n" not in out
  frames = out.split("\r")[1:]
  assert [frame.split()[1] for frame in frames] == ["1/4", "3/4", "4/4"]
  assert frames[0] == "step 1/4 [==>       ] 25% loss 2 | 100.0 ex/s | ETA 0:00:03"
  assert frames[1].startswith("step 3/4 [=======>  ] 75% loss 1.5 | 100.0 ex/s | ETA 0:00:01")
  bar.close()
  assert stream.getvalue().endswith("4/4 [==========] 100% loss 1.5 | 100.0 ex/s | ETA 0:00:00\n")


def test_tty_blanks_leftovers_of_a_longer_line():
  stream, clock = FakeTTY(), FakeClock()
  bar = ProgressBar(10, stream=stream, clock=clock, min_interval_s=0.0)
  clock.now += 1.0
  bar.update(1, loss=123.456789)
  long_len = len(stream.getvalue()) - 1
  clock.now += 1.0
  bar.update(2, loss=1.0)  # 'loss 1' is shorter than 'loss 123.5'
  last = stream.getvalue().split("\r")[-1]
  assert len(last) == long_len and last.rstrip() == bar.render()


def test_disabled_is_silent():
  stream = FakeTTY()
  with ProgressBar(10, stream=stream, enabled=False) as bar:
    bar.update(5, loss=1.0)
  assert stream.getvalue() == ""


def test_restart_clock_leaves_the_compiling_first_step_out_of_the_eta():
  stream, clock = io.StringIO(), FakeClock()
  bar = ProgressBar(101, stream=stream, clock=clock, min_interval_s=0.0)
  clock.now += 60.0  # step 1 compiles for a minute
  bar.restart_clock(1)
  bar.update(1, loss=1.0)
  assert bar.render().endswith("ETA ?")  # no rate yet, rather than a minute per step
  clock.now += 10.0  # then 10 steps in 10 s
  bar.update(11, loss=1.0)
  assert bar.eta_seconds() == 90.0
  assert stream.getvalue().splitlines()[-1].endswith("ETA 0:01:30")


def test_note_prints_its_own_line_and_ends_a_bar_drawn_in_place():
  stream, clock = FakeTTY(), FakeClock()
  bar = ProgressBar(4, stream=stream, clock=clock, min_interval_s=0.0)
  bar.note("loading")
  clock.now += 1.0
  bar.update(2, loss=1.0)
  bar.note("evaluating")
  clock.now += 1.0
  bar.update(4)
  bar.close()
  bar.note("done")  # after close too (e.g. the final evaluation)
  lines = stream.getvalue().split("\n")
  assert lines[0] == "loading" and lines[1].startswith("\rstep 2/4") and lines[2] == "evaluating"
  assert lines[3].startswith("\rstep 4/4") and lines[4] == "done" and lines[5] == ""
  silent = FakeTTY()
  ProgressBar(4, stream=silent, enabled=False).note("x")
  assert silent.getvalue() == ""
