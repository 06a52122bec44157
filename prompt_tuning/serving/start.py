"""Builds a server from a frozen model and prompt sources, and runs it under uvicorn.

server = build_server(config, params, {"rte": "runs/rte", "sst2": "sst2.safetensors"})
serve(server, "127.0.0.1", 8000)              # blocks (the `prompt-tuning serve` command)
with ServerThread(server) as running: ...     # in a thread, on a free port (tests, notebooks)
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from prompt_tuning import param_tree
from prompt_tuning.checkpoints.structure import CheckpointError
from prompt_tuning.data.vocab import SentencePieceVocabulary, read_bytes
from prompt_tuning.models.t5.config import T5Config
from prompt_tuning.serving.app import Server, make_app
from prompt_tuning.serving.engine import Engine, default_buckets
from prompt_tuning.serving.registry import Limits, PromptError, PromptRegistry, read_source


def _one(values: Sequence[Any], what: str) -> Any:
  distinct = sorted({v for v in values if v}, key=str)
  if len(distinct) > 1:
    raise PromptError(f"the prompt bundles mix {what}s ({', '.join(map(str, distinct))}); one server needs one {what}")
  return distinct[0] if distinct else None


def read_bundles(sources: Mapping[str, str]) -> dict[str, Any]:
  """{task: PromptBundle} of {task: source}; PromptError (one line naming the task) for one unreadable."""
  if not sources:
    raise PromptError("no prompts to serve: give at least one --prompt TASK=SOURCE")
  bundles = {}
  for name, source in sources.items():
    try:
      bundles[name] = read_source(source, name)
    except CheckpointError as e:
      raise PromptError(f"task {name}: {e}") from None
  return bundles


def plan_limits(
  bundles: Mapping[str, Any],
  *,
  vocabulary_path: str | None = None,
  max_prompts: int = 64,
  max_prompt_length: int | None = None,
  max_inputs_length: int | None = None,
  max_targets_length: int | None = None,
) -> tuple[Limits, dict[str, int], str]:
  """(the fixed shapes, the feature lengths of bundles that record none, the vocabulary path) of a
  server of `bundles` ({task: PromptBundle}); PromptError (one line) for bundles that cannot serve
  together. Needs no model: the command checks this before loading one."""
  placement = _one([b.placement for b in bundles.values()], "placement") or "prefix"
  recorded = [b.feature_lengths for b in bundles.values() if b.feature_lengths]
  lengths = {}
  for feature, given in (("inputs", max_inputs_length), ("targets", max_targets_length)):
    lengths[feature] = given or max((int(r[feature]) for r in recorded if feature in r), default=0)
    if not lengths[feature]:
      raise PromptError(f"no prompt bundle records its {feature} length: pass --max_{feature}_length")
  paths = {name: b.vocabulary_path for name, b in bundles.items() if b.vocabulary_path}
  if vocabulary_path is None:
    if not paths:
      raise PromptError("no prompt bundle records its vocabulary: pass --vocabulary")
    vocabulary_path = next(iter(paths.values()))
  for name, path in paths.items():
    if path != vocabulary_path and _digest(path) != _digest(vocabulary_path):
      raise PromptError(
        f"task {name}'s prompt was trained with vocabulary {path}, the server's is {vocabulary_path}; "
        "one server has one vocabulary"
      )
  limits = Limits(
    capacity=max(max_prompts, len(bundles)),
    prompt_length=max_prompt_length or max(int(b.prompt.shape[0]) for b in bundles.values()),
    inputs_length=lengths["inputs"],
    targets_length=lengths["targets"],
    placement=placement,
  )
  return limits, lengths, vocabulary_path


def _digest(path: str) -> str | None:
  try:
    return hashlib.sha256(read_bytes(path)).hexdigest()
  except OSError:
    return None


def build_server(
  config: T5Config,
  params: Mapping[str, Any],
  sources: Mapping[str, str],
  *,
  bundles: Mapping[str, Any] | None = None,
  vocabulary_path: str | None = None,
  extra_ids: int = 100,
  max_prompts: int = 64,
  max_prompt_length: int | None = None,
  max_inputs_length: int | None = None,
  max_targets_length: int | None = None,
  max_batch_size: int = 32,
  batch_buckets: Sequence[int] | None = None,
  max_wait_ms: float = 5.0,
  methods: Sequence[str] = ("greedy",),
  beam_size: int = 4,
  alpha: float = 0.6,
  max_candidates: int = 8,
  note: Callable[[str], None] = lambda message: None,
) -> Server:
  """A warmed-up server of the frozen model (`config`, `params`: host or device arrays) with the
  prompt of each {task: source}; PromptError (one line) for prompts that cannot serve together.

  bundles: the sources' bundles when already read (read_bundles), else read here.
  Every limit left None is taken from the prompts given: the longest prompt (p_max), the longest
  inputs and targets lengths their records declare; the vocabulary is the one they record.
  """
  bundles = dict(bundles) if bundles is not None else read_bundles(sources)
  limits, lengths, vocabulary_path = plan_limits(
    bundles,
    vocabulary_path=vocabulary_path,
    max_prompts=max_prompts,
    max_prompt_length=max_prompt_length,
    max_inputs_length=max_inputs_length,
    max_targets_length=max_targets_length,
  )
  note(f"checking {len(bundles)} prompt(s) against the frozen model")
  registry = PromptRegistry(config, param_tree.fingerprint(params), vocabulary_path, limits, lengths)
  vocabulary = SentencePieceVocabulary(vocabulary_path, extra_ids)
  if vocabulary.vocab_size > config.vocab_size:
    raise PromptError(
      f"vocabulary {vocabulary_path} has {vocabulary.vocab_size} ids, the model only {config.vocab_size}"
    )
  for name, bundle in bundles.items():
    registry.add(name, sources[name], bundle)
  options = {"greedy": {}, "beam": {"beam_size": beam_size, "alpha": alpha}}
  engine = Engine(
    config,
    params,
    registry,
    buckets=tuple(batch_buckets or default_buckets(max_batch_size)),
    methods={m: options.get(m, {}) for m in methods},
    max_candidates=max_candidates,
  )
  server = Server(registry, engine, vocabulary, max_wait_ms / 1000.0)
  note(f"compiling for batch sizes {', '.join(map(str, engine.buckets))} ({', '.join(methods)} and scoring)")
  started = time.perf_counter()
  compiled = server.warm_up()
  note(f"compiled {compiled} programs in {time.perf_counter() - started:.1f} s")
  return server


def serve(server: Server, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
  """Serves until interrupted (Ctrl-C)."""
  import uvicorn

  uvicorn.run(make_app(server), host=host, port=port, log_level=log_level)


class ServerThread:
  """uvicorn serving `server` in a daemon thread, on `port` (0: a free one); `url` once started."""

  def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    import uvicorn

    # log_config=None: uvicorn's own logging config would go through logging.config.dictConfig, which
    # closes every handler the host process has (a notebook's, pytest's log capture); its loggers then
    # propagate to the host's.
    config = uvicorn.Config(make_app(server), host=host, port=port, log_level=log_level, log_config=None)
    self._uvicorn = uvicorn.Server(config)
    self._thread = threading.Thread(target=self._uvicorn.run, name="prompt-tuning-server", daemon=True)
    self.url = ""

  def start(self, timeout: float = 60.0) -> "ServerThread":
    self._thread.start()
    deadline = time.monotonic() + timeout
    while not self._uvicorn.started:
      if not self._thread.is_alive() or time.monotonic() > deadline:
        raise RuntimeError("the server did not start (see its log above)")
      time.sleep(0.01)
    host, port = self._uvicorn.servers[0].sockets[0].getsockname()[:2]
    self.url = f"http://{host}:{port}"
    return self

  def stop(self, timeout: float = 30.0) -> None:
    self._uvicorn.should_exit = True
    self._thread.join(timeout)

  def __enter__(self) -> "ServerThread":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
