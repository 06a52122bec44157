"""The HTTP API (Starlette, served by uvicorn): JSON in, JSON out.

  GET    /health             {"status": "ok", "tasks": k, "queued": rows waiting, "batches", "rows",
                              "mixed_batches": device batches so far, their rows, those mixing tasks}
  GET    /tasks              {"tasks": [{"task", "prompt_length", "source", "feature_lengths", ...}]}
  POST   /predict            {"task", "inputs": str | [str], "method"?: "greedy" | "beam", "truncate"?: bool,
                              "max_decode_length"?: int (default: the task's targets length)}
                             -> {"task", "predictions": [str], "scores": [float], "truncated": [bool]}
  POST   /score              {"task", "input": str, "candidates": [str], "truncate"?: bool}
                             -> {"task", "scores": [float], "best": str, "truncated": bool}
  POST   /prompts            {"task", "source": bundle | MODEL_DIR | PEFT folder} -> 201 and the task's entry
  DELETE /prompts/{task}     -> {"removed": task}

Inputs are the model's input text (what infer's JSONL "input" holds), tokenized as training and
infer do: ids + EOS, at most the task's inputs feature length. An input longer than that is
refused (422) unless the request says "truncate": true; then it is cut as infer cuts it (seqio's
append_eos_after_trim) and "truncated" says which were. Candidates likewise, against the targets
length. A max_decode_length other than a served task's targets length compiles its programs on
first use (the worker waits for that once). Every request is checked before it is queued, so a
bad one gets its own 4xx ({"error": one line}) and never touches the batch its neighbours run in.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prompt_tuning.data.features import trim_with_eos
from prompt_tuning.errors import first_line
from prompt_tuning.serving.batcher import Batcher
from prompt_tuning.serving.engine import SCORE, Engine, PredictRow, ScoreRow, predict_key
from prompt_tuning.serving.registry import PromptError, PromptRegistry

MAX_ROWS_PER_REQUEST = 1024  # inputs of one /predict request; more is a 413


class Server:
  """What the endpoints work with: the registry, the engine, its batcher and the vocabulary."""

  def __init__(self, registry: PromptRegistry, engine: Engine, vocabulary: Any, max_wait_s: float):
    self.registry, self.engine, self.vocabulary = registry, engine, vocabulary
    self.batcher = Batcher(engine.run, engine.max_batch_size, max_wait_s)

  def warm_up(self) -> int:
    """Compiles every program the served tasks need; returns how many were compiled."""
    return self.engine.warm_up(self.engine.keys([p.feature_lengths["targets"] for p in self.registry.tasks()]))

  # ---------------------------------------------------------------- requests -> rows

  def _encode(self, text: Any, length: int, field: str, feature: str, task: str, truncate: bool) -> tuple[list, bool]:
    """ids + EOS of one text, checked against `length`; (ids, whether it was cut)."""
    if not isinstance(text, str):
      raise PromptError(f"{field} must be a string, got {type(text).__name__}", 400)
    if not text.strip():
      raise PromptError(f"{field} is empty", 422)
    ids = self.vocabulary.encode(text)
    if len(ids) + 1 > length and not truncate:
      raise PromptError(
        f"{field} is {len(ids) + 1} tokens with EOS, more than task {task}'s {feature} length {length} "
        '(send "truncate": true to cut it as infer does)',
        422,
      )
    return trim_with_eos(ids, length, self.vocabulary.eos_id), len(ids) + 1 > length

  def predict_rows(self, body: dict) -> tuple[str, list[PredictRow], list[bool], tuple]:
    prompt = self.registry.get(_field(body, "task", str))
    inputs = _field(body, "inputs", (str, list))
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
      raise PromptError("inputs is an empty list", 422)
    if len(texts) > MAX_ROWS_PER_REQUEST:
      raise PromptError(f"{len(texts)} inputs in one request, more than {MAX_ROWS_PER_REQUEST}", 413)
    method = body.get("method", "greedy")
    if method not in self.engine.methods:
      raise PromptError(f"method must be one of {', '.join(self.engine.methods)} (this server's), got {method!r}", 400)
    truncate = _flag(body)
    rows, cut = [], []
    for i, text in enumerate(texts):
      field = "inputs" if isinstance(inputs, str) else f"inputs[{i}]"
      ids, was_cut = self._encode(text, prompt.feature_lengths["inputs"], field, "inputs", prompt.name, truncate)
      rows.append(PredictRow(prompt, np.asarray(ids, np.int32)))
      cut.append(was_cut)
    return prompt.name, rows, cut, predict_key(method, self._decode_length(body, prompt.feature_lengths["targets"]))

  def _decode_length(self, body: dict, default: int) -> int:
    """The request's max_decode_length (default: the task's targets length, as infer decodes)."""
    if "max_decode_length" not in body:
      return default
    value, most = body["max_decode_length"], self.registry.limits.targets_length
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise PromptError(f"max_decode_length must be a positive integer, got {value!r}", 400)
    if value > most:
      raise PromptError(f"max_decode_length {value} is more than this server's {most} (--max_targets_length)", 422)
    return value

  def score_rows(self, body: dict) -> tuple[str, list[ScoreRow], list[str], bool]:
    prompt = self.registry.get(_field(body, "task", str))
    truncate = _flag(body)
    lengths = prompt.feature_lengths
    ids, cut = self._encode(_field(body, "input", str), lengths["inputs"], "input", "inputs", prompt.name, truncate)
    candidates = _field(body, "candidates", list)
    if not candidates:
      raise PromptError("candidates is an empty list", 422)
    encoded = []
    for i, text in enumerate(candidates):
      target, target_cut = self._encode(text, lengths["targets"], f"candidates[{i}]", "targets", prompt.name, truncate)
      encoded.append(target)
      cut = cut or target_cut
    tokens = np.asarray(ids, np.int32)
    rows = []
    for start in range(0, len(encoded), self.engine.max_candidates):  # more candidates than a row holds: more rows
      chunk = encoded[start : start + self.engine.max_candidates]
      table = np.zeros((len(chunk), max(len(c) for c in chunk)), np.int32)
      for j, target in enumerate(chunk):
        table[j, : len(target)] = target
      rows.append(ScoreRow(prompt, tokens, table))
    return prompt.name, rows, candidates, cut

  async def run(self, key: Any, rows: list) -> list:
    futures = self.batcher.submit(key, rows)
    return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))


def _field(body: dict, name: str, types: type | tuple) -> Any:
  if name not in body:
    raise PromptError(f"missing field {name!r}", 400)
  value = body[name]
  if not isinstance(value, types) or isinstance(value, bool):
    names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
    raise PromptError(f"{name} must be {names.replace('str', 'a string').replace('list', 'a list')}", 400)
  return value


def _flag(body: dict) -> bool:
  value = body.get("truncate", False)
  if not isinstance(value, bool):
    raise PromptError(f"truncate must be true or false, got {value!r}", 400)
  return value


async def _body(request: Request) -> dict:
  try:
    body = json.loads(await request.body())
  except (ValueError, UnicodeDecodeError):
    raise PromptError("the request body is not JSON", 400) from None
  if not isinstance(body, dict):
    raise PromptError(f"the request body must be a JSON object, got {type(body).__name__}", 400)
  return body


def make_app(server: Server) -> Starlette:
  """The Starlette app of `server`; its batcher runs while the app does (lifespan)."""

  async def health(request: Request) -> JSONResponse:
    batcher = server.batcher
    return JSONResponse(
      {
        "status": "ok",
        "tasks": len(server.registry.tasks()),
        "queued": batcher.queued,
        "batches": batcher.batches,
        "rows": batcher.rows,
        "mixed_batches": server.engine.mixed_batches,
      }
    )

  async def tasks(request: Request) -> JSONResponse:
    return JSONResponse({"tasks": [p.describe() for p in server.registry.tasks()]})

  async def predict(request: Request) -> JSONResponse:
    task, rows, cut, key = server.predict_rows(await _body(request))
    results = await server.run(key, rows)
    decode = server.vocabulary.decode
    return JSONResponse(
      {
        "task": task,
        "predictions": [decode(ids) for ids, _ in results],
        "scores": [score for _, score in results],
        "truncated": cut,
      }
    )

  async def score(request: Request) -> JSONResponse:
    task, rows, candidates, cut = server.score_rows(await _body(request))
    scores = [float(s) for chunk in await server.run(SCORE, rows) for s in chunk]
    best = candidates[int(np.argmax(scores))]
    return JSONResponse({"task": task, "scores": scores, "best": best, "truncated": cut})

  async def add_prompt(request: Request) -> JSONResponse:
    body = await _body(request)
    # Reading the bundle (maybe from gs://) and compiling a new decode length block: off the loop.
    added = await run_in_threadpool(server.registry.add, body.get("task"), body.get("source"))
    await run_in_threadpool(server.warm_up)
    return JSONResponse(added.describe(), status_code=201)

  async def remove_prompt(request: Request) -> JSONResponse:
    removed = server.registry.remove(request.path_params["task"])
    return JSONResponse({"removed": removed.name})

  async def refused(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"error": first_line(error)}, status_code=getattr(error, "status", 422))

  async def http_error(request: Request, error: HTTPException) -> JSONResponse:  # unknown path, wrong verb
    line = f"{error.detail}: {request.method} {request.url.path}"
    return JSONResponse({"error": line}, status_code=error.status_code, headers=error.headers)

  async def failed(request: Request, error: Exception) -> JSONResponse:  # a bug or a device error: still one line
    return JSONResponse({"error": first_line(error, typed=True)}, status_code=500)

  def lifespan(app):
    import contextlib

    @contextlib.asynccontextmanager
    async def running(app):
      server.batcher.start()
      try:
        yield
      finally:
        server.batcher.stop()

    return running(app)

  return Starlette(
    routes=[
      Route("/health", health, methods=["GET"]),
      Route("/tasks", tasks, methods=["GET"]),
      Route("/predict", predict, methods=["POST"]),
      Route("/score", score, methods=["POST"]),
      Route("/prompts", add_prompt, methods=["POST"]),
      Route("/prompts/{task:path}", remove_prompt, methods=["DELETE"]),
    ],
    exception_handlers={PromptError: refused, HTTPException: http_error, Exception: failed},
    lifespan=lifespan,
  )
