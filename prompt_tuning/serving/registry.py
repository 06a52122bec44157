"""The prompts one server holds: a [capacity, p_max, embed] table on the device, rows added and
removed at run time.

Every shape the compiled programs see is fixed when the server starts: the table's capacity
(--max_prompts spare rows), its prompt width p_max (the longest prompt at start, or
--max_prompt_length) and the encoder width (the longest inputs feature length). Each prompt
uses the first p_t rows of its slot and tells the model so per example (prompt_lengths, data not
shape), so adding or removing a prompt writes one slot and recompiles nothing. A prompt longer
than p_max, for another frozen model, another placement or another vocabulary is refused with
one line (PromptError, an HTTP 4xx).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any, Mapping

import jax
import numpy as np

from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.checkpoints.train_state import PROMPTS_DIR
from prompt_tuning.data.vocab import read_bytes
from prompt_tuning.models.t5.config import T5Config


class PromptError(ValueError):
  """A request the server refuses; `status` is its HTTP status, the message one line."""

  def __init__(self, message: str, status: int = 422):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class ServedPrompt:
  """One task's prompt in the table.

  slot: its row of the table; generation: a count that changes whenever the slot is refilled, so
    a request queued for a removed prompt is refused rather than run with its successor.
  feature_lengths: {'inputs': n, 'targets': m}, as it was trained (the bundle's record).
  """

  name: str
  slot: int
  generation: int
  length: int
  source: str
  feature_lengths: Mapping[str, int]
  step: int | None = None
  metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def describe(self) -> dict[str, Any]:
    return {
      "task": self.name,
      "prompt_length": self.length,
      "source": self.source,
      "feature_lengths": dict(self.feature_lengths),
      "step": self.step,
      "metrics": dict(self.metrics),
    }


@dataclasses.dataclass(frozen=True)
class Limits:
  """The shapes fixed at start. capacity: table rows; prompt_length: p_max; inputs_length /
  targets_length: the longest inputs and targets any prompt may declare."""

  capacity: int
  prompt_length: int
  inputs_length: int
  targets_length: int
  placement: str


def read_source(source: str, task: str | None = None) -> bundle_lib.PromptBundle:
  """The bundle of `source`: a bundle file, a MODEL_DIR (its latest bundle; of a multi-task run, task
  `task`'s) or a PEFT adapter folder."""
  return bundle_lib.read_bundle(bundle_lib.latest_bundle(source, PROMPTS_DIR, task))


def _digest(path: str) -> str:
  return hashlib.sha256(read_bytes(path)).hexdigest()


class PromptRegistry:
  """The served prompts; thread-safe (requests read it, POST/DELETE /prompts change it).

  Args:
    config / fingerprint: the frozen model every prompt must have been trained on.
    vocabulary_path: the server's vocabulary; a bundle recording another one is refused.
    limits: the fixed shapes (see Limits).
    default_feature_lengths: for bundles that record none (a PEFT adapter from elsewhere).
  """

  def __init__(
    self,
    config: T5Config,
    fingerprint: str,
    vocabulary_path: str,
    limits: Limits,
    default_feature_lengths: Mapping[str, int],
  ):
    self.config, self.fingerprint, self.limits = config, fingerprint, limits
    self.vocabulary_path = vocabulary_path
    self._vocabulary_digests = {vocabulary_path: None}  # path -> sha256, read when first compared
    self.default_feature_lengths = dict(default_feature_lengths)
    self._lock = threading.Lock()
    self._host = np.zeros((limits.capacity, limits.prompt_length, config.emb_dim), np.float32)
    self._table = jax.device_put(self._host)
    self._prompts: dict[str, ServedPrompt] = {}
    self._generations = [0] * limits.capacity

  # ---------------------------------------------------------------- reading

  def get(self, name: Any) -> ServedPrompt:
    """The prompt of task `name`; PromptError 404 naming the tasks served when there is none."""
    with self._lock:
      prompt = self._prompts.get(name) if isinstance(name, str) else None
      if prompt is None:
        raise PromptError(f"no prompt for task {name!r} (tasks: {', '.join(sorted(self._prompts)) or 'none'})", 404)
      return prompt

  def current(self, prompt: ServedPrompt) -> bool:
    """Whether `prompt` still holds its slot (not removed since a request was queued for it)."""
    with self._lock:
      return self._prompts.get(prompt.name) == prompt

  @property
  def table(self) -> jax.Array:
    """The device table [capacity, p_max, embed], float32; replaced (never written in place) on a change."""
    with self._lock:
      return self._table

  def tasks(self) -> list[ServedPrompt]:
    with self._lock:
      return sorted(self._prompts.values(), key=lambda p: p.name)

  # ---------------------------------------------------------------- changing

  def add(self, name: Any, source: Any, bundle: bundle_lib.PromptBundle | None = None) -> ServedPrompt:
    """Reads `source` (unless `bundle` is given), checks it fits this server, and fills a free slot.

    Raises PromptError: 400 for a malformed name or source, 409 for a task already served or a
    full table, 422 for a bundle that cannot run here (another model, too long, ...)."""
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name:
      raise PromptError(f"task must be a non-empty name without '/' or surrounding spaces, got {name!r}", 400)
    if not isinstance(source, str) or not source:
      raise PromptError(f"source must be a bundle path, a MODEL_DIR or a PEFT folder, got {source!r}", 400)
    with self._lock:
      if name in self._prompts:
        raise PromptError(f"task {name} is served already (from {self._prompts[name].source}); DELETE it first", 409)
    if bundle is None:
      try:
        bundle = read_source(source, str(name))
      except CheckpointError as e:
        raise PromptError(str(e)) from None
    lengths = self._check(bundle, f"the prompt bundle of task {name} ({source})")
    prompt_length = int(bundle.prompt.shape[0])
    with self._lock:
      if name in self._prompts:  # added while this one was being read
        raise PromptError(f"task {name} is served already (from {self._prompts[name].source})", 409)
      used = {p.slot for p in self._prompts.values()}
      free = [slot for slot in range(self.limits.capacity) if slot not in used]
      if not free:
        raise PromptError(f"the prompt table is full ({self.limits.capacity} prompts; --max_prompts sets it)", 409)
      slot = free[0]
      self._generations[slot] += 1
      host = self._host.copy()  # a new array: batches in flight keep the table they started with
      host[slot] = 0.0
      host[slot, :prompt_length] = bundle.prompt
      self._host, self._table = host, jax.device_put(host)
      served = ServedPrompt(
        name, slot, self._generations[slot], prompt_length, source, lengths, bundle.step, dict(bundle.metrics)
      )
      self._prompts[name] = served
      return served

  def remove(self, name: str) -> ServedPrompt:
    """Frees task `name`'s slot; PromptError 404 when it is not served."""
    self.get(name)
    with self._lock:
      served = self._prompts.pop(name, None)
      if served is None:
        raise PromptError(f"no prompt for task {name!r}", 404)
      return served

  def _check(self, bundle: bundle_lib.PromptBundle, what: str) -> dict[str, int]:
    """The bundle's feature lengths, once it is known to fit; PromptError 422 (one line) if not."""
    limits = self.limits
    try:
      bundle_lib.check_fits(bundle, self.config, self.fingerprint, what)
    except CheckpointError as e:
      raise PromptError(str(e)) from None
    if bundle.placement != limits.placement:
      raise PromptError(f"{what}: placement {bundle.placement!r}, this server's prompts are {limits.placement!r}")
    length = int(bundle.prompt.shape[0])
    if length > limits.prompt_length:
      raise PromptError(
        f"{what}: {length} prompt vectors, more than this server's {limits.prompt_length} "
        "(fixed at start: --max_prompt_length)"
      )
    if bundle.vocabulary_path and not self._same_vocabulary(bundle.vocabulary_path):
      raise PromptError(f"{what}: vocabulary {bundle.vocabulary_path}, this server's is {self.vocabulary_path}")
    lengths = dict(self.default_feature_lengths)
    lengths.update({k: int(v) for k, v in (bundle.feature_lengths or {}).items() if k in ("inputs", "targets")})
    for feature, most in (("inputs", limits.inputs_length), ("targets", limits.targets_length)):
      if lengths[feature] > most:
        raise PromptError(
          f"{what}: {feature} length {lengths[feature]}, more than this server's {most} "
          f"(fixed at start: --max_{feature}_length)"
        )
    return lengths

  def _same_vocabulary(self, path: str) -> bool:
    """The same path, or a file with the same bytes (a vocabulary copied elsewhere)."""
    if path == self.vocabulary_path:
      return True
    try:
      for known in (self.vocabulary_path, path):
        if self._vocabulary_digests.get(known) is None:
          self._vocabulary_digests[known] = _digest(known)
    except OSError:
      return False
    return self._vocabulary_digests[path] == self._vocabulary_digests[self.vocabulary_path]
