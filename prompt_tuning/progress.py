"""A one-line training progress bar that also behaves in CI logs.

On a terminal the line is redrawn in place (carriage return), at most every
`min_interval_s`:

  step 120/300 [====>     ] 40% loss 1.234 | 512.3 ex/s | ETA 0:01:10

When the stream is not a TTY (a log file, CI), plain lines are printed instead:
one per ~10% of progress, and one at log steps (when `loss` or `examples_per_s`
is given), the latter at most every `min_interval_s`.

`say` (and `ProgressBar.note`) print one line before a phase that is otherwise
silent for a while (loading a model, compiling, evaluating), so a user never
stares at a quiet terminal wondering whether anything happens.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Callable, TextIO

_BAR_WIDTH = 10


def say(message: str, stream: TextIO | None = None) -> None:
  """Prints `message` as one line on `stream` (default stderr, where the bar goes), flushed at once."""
  stream = sys.stderr if stream is None else stream
  stream.write(message + "\n")
  stream.flush()


def format_duration(seconds: float) -> str:
  """`H:MM:SS`, e.g. 70 -> '0:01:10'."""
  return str(datetime.timedelta(seconds=max(0, int(round(seconds)))))


class ProgressBar:
  """Progress of steps `start_step`..`total_steps`, with loss, throughput and ETA.

  Args:
    total_steps: the last step.
    start_step: the step training (re)starts from; the rate counts from here.
    stream: where to write (default stderr).
    enabled: False makes every method a no-op (e.g. on processes other than 0).
    min_interval_s: least time between two redraws (TTY) or two log-step lines.
    clock: monotonic time in seconds; injectable for tests.
  """

  def __init__(
    self,
    total_steps: int,
    start_step: int = 0,
    *,
    stream: TextIO | None = None,
    enabled: bool = True,
    min_interval_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.total_steps = max(int(total_steps), 0)
    self.start_step = int(start_step)
    self.stream = sys.stderr if stream is None else stream
    self.enabled = enabled
    self.min_interval_s = min_interval_s
    self._clock = clock
    self._start_time = clock()
    isatty = getattr(self.stream, "isatty", None)
    self._tty = bool(isatty and isatty())
    self._step = self.start_step
    self._loss: float | None = None
    self._examples_per_s: float | None = None
    self._last_draw: float | None = None  # time of the last output
    self._drawn_step: int | None = None  # step of the last output
    self._last_decile = self._decile(self.start_step)
    self._line_len = 0  # length of the line on a TTY, to blank leftovers
    self._closed = False

  # --- rendering ---------------------------------------------------------------

  def _fraction(self, step: int) -> float:
    return min(max(step / self.total_steps, 0.0), 1.0) if self.total_steps else 1.0

  def _decile(self, step: int) -> int:
    return int(self._fraction(step) * 10)

  def eta_seconds(self, now: float | None = None) -> float | None:
    """Seconds left at the rate measured since start (or `restart_clock`), or None before any progress."""
    now = self._clock() if now is None else now
    done, elapsed = self._step - self.start_step, now - self._start_time
    remaining = max(self.total_steps - self._step, 0)
    if not remaining:
      return 0.0
    if done <= 0 or elapsed <= 0:
      return None
    return remaining * elapsed / done

  def render(self, now: float | None = None) -> str:
    """The current status line (without line ending)."""
    fraction = self._fraction(self._step)
    filled = int(fraction * _BAR_WIDTH)
    bar = "=" * _BAR_WIDTH if filled >= _BAR_WIDTH else ("=" * filled + ">").ljust(_BAR_WIDTH)
    line = f"step {self._step}/{self.total_steps} [{bar}] {int(fraction * 100)}%"
    if self._loss is not None:
      line += f" loss {self._loss:.4g}"
    extras = []
    if self._examples_per_s is not None:
      extras.append(f"{self._examples_per_s:.1f} ex/s")
    eta = self.eta_seconds(now)
    extras.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA ?")
    return line + "".join(f" | {extra}" for extra in extras)

  def _draw(self, now: float) -> None:
    line = self.render(now)
    if self._tty:
      pad = " " * max(self._line_len - len(line), 0)  # blank the rest of a longer old line
      self.stream.write("\r" + line + pad)
      self._line_len = len(line)
    else:
      self.stream.write(line + "\n")
    self.stream.flush()
    self._last_draw, self._drawn_step = now, self._step

  # --- API -----------------------------------------------------------------------

  def restart_clock(self, step: int) -> None:
    """Measures the rate from now and `step` on.

    The trainer calls it once the first step has run: that step includes XLA's
    compilation, which would otherwise inflate the first ETAs many times over.
    """
    self._step = self.start_step = int(step)
    self._start_time = self._clock()

  def note(self, message: str) -> None:
    """Prints a line of its own (e.g. before evaluating), first ending a bar line drawn in place."""
    if not self.enabled:
      return
    if self._tty and self._line_len:
      self.stream.write("\n")
      self._line_len = 0
    say(message, self.stream)

  def update(self, step: int, loss: float | None = None, examples_per_s: float | None = None) -> None:
    """Records `step` (and any values given) and redraws if due."""
    if not self.enabled or self._closed:
      return
    self._step = int(step)
    has_values = loss is not None or examples_per_s is not None
    if loss is not None:
      self._loss = float(loss)
    if examples_per_s is not None:
      self._examples_per_s = float(examples_per_s)
    now = self._clock()
    throttled = self._last_draw is not None and now - self._last_draw < self.min_interval_s
    last = self._step >= self.total_steps
    if self._tty:
      due = not throttled or last
    else:
      decile = self._decile(self._step)
      due = decile > self._last_decile or last or (has_values and not throttled)
      if due:
        self._last_decile = max(decile, self._last_decile)
    if due and (self._drawn_step != self._step or has_values):
      self._draw(now)

  def close(self) -> None:
    """Draws the final state if not shown yet and ends the line."""
    if not self.enabled or self._closed:
      return
    self._closed = True
    if self._drawn_step != self._step:
      self._draw(self._clock())
    if self._tty and self._line_len:
      self.stream.write("\n")
      self.stream.flush()
      self._line_len = 0

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
