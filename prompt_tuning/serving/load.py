"""A bounded load generator for a running server: N requests, at most C in flight, then stop.

  python -m prompt_tuning.serving.load --url http://127.0.0.1:8000 --requests 2000 --concurrency 64
  python -m prompt_tuning.serving.load --url ... --task rte --task sst2 --input "sentence: it works"
  python -m prompt_tuning.serving.load --url ... --endpoint score --candidates negative,positive

Requests go round-robin over the tasks (default: every task the server lists), each from its own
worker thread on a kept-alive connection (the standard library only: nothing to install). Prints
one JSON line: requests/s, latency percentiles (ms), and the count of each status. Send load only
to a server of your own (127.0.0.1).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse
from typing import Any, Sequence


def _connection(url: str, timeout: float) -> http.client.HTTPConnection:
  parts = urllib.parse.urlsplit(url)
  if parts.scheme != "http" or not parts.hostname:
    raise ValueError(f"--url must be http://HOST:PORT, got {url!r}")
  return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)


def request(url: str, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
  """One request; (status, the JSON answer)."""
  connection = _connection(url, timeout)
  try:
    data = None if body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")
  finally:
    connection.close()


def percentile(sorted_values: Sequence[float], q: float) -> float:
  """The q-th percentile (0-100) of ascending values, nearest rank."""
  if not sorted_values:
    return float("nan")
  rank = max(1, min(len(sorted_values), int(round(q / 100.0 * len(sorted_values) + 0.5))))
  return sorted_values[rank - 1]


def run_load(
  url: str, bodies: Sequence[tuple[str, dict]], total: int, concurrency: int, timeout: float = 60.0
) -> dict[str, Any]:
  """Sends `total` POST requests (bodies[i % len(bodies)]: (path, JSON body)) with `concurrency`
  threads, each waiting for its answer before its next request.

  Returns {'requests', 'seconds', 'requests_per_s', 'latency_ms': {p50, p90, p99, max, mean},
  'status': {code: count}}; a connection error counts under status 0.
  """
  if total < 1 or concurrency < 1 or not bodies:
    raise ValueError(f"need total >= 1, concurrency >= 1 and a request body, got {total}, {concurrency}")
  lock = threading.Lock()
  counter = iter(range(total))
  latencies: list[float] = []
  statuses: dict[int, int] = {}

  def worker():
    connection = _connection(url, timeout)
    while True:
      with lock:
        i = next(counter, None)
      if i is None:
        break
      path, body = bodies[i % len(bodies)]
      started = time.perf_counter()
      try:
        connection.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        status = response.status
      except (OSError, http.client.HTTPException):
        connection.close()
        connection = _connection(url, timeout)
        status = 0
      elapsed = time.perf_counter() - started
      with lock:
        latencies.append(elapsed)
        statuses[status] = statuses.get(status, 0) + 1
    connection.close()

  threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, total))]
  started = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  seconds = time.perf_counter() - started
  ordered = sorted(latencies)
  return {
    "requests": total,
    "concurrency": len(threads),
    "seconds": round(seconds, 3),
    "requests_per_s": round(total / seconds, 2),
    "latency_ms": {
      **{f"p{q}": round(1000 * percentile(ordered, q), 2) for q in (50, 90, 99)},
      "max": round(1000 * ordered[-1], 2),
      "mean": round(1000 * sum(ordered) / len(ordered), 2),
    },
    "status": {str(k): v for k, v in sorted(statuses.items())},
  }


def parse(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m prompt_tuning.serving.load", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--url", default="http://127.0.0.1:8000")
  parser.add_argument("--requests", type=int, default=1000, help="how many requests in all")
  parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
  parser.add_argument("--task", action="append", default=None, help="repeatable; default: every task served")
  parser.add_argument("--endpoint", choices=("predict", "score"), default="predict")
  parser.add_argument("--input", default="sentence: the film is a quiet delight.", help="the input text")
  parser.add_argument("--inputs_per_request", type=int, default=1, help="/predict: inputs in one request")
  parser.add_argument("--method", default="greedy")
  parser.add_argument("--candidates", default="negative,positive", help="/score: comma-separated")
  parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  try:
    tasks = args.task
    if not tasks:
      status, answer = request(args.url, "GET", "/tasks", timeout=args.timeout)
      tasks = [t["task"] for t in answer["tasks"]] if status == 200 else []
      if not tasks:
        raise ValueError(f"{args.url} serves no task (GET /tasks: {status})")
    if args.endpoint == "predict":
      inputs = [args.input] * args.inputs_per_request
      bodies = [("/predict", {"task": t, "inputs": inputs, "method": args.method, "truncate": True}) for t in tasks]
    else:
      candidates = args.candidates.split(",")
      bodies = [("/score", {"task": t, "input": args.input, "candidates": candidates, "truncate": True}) for t in tasks]
    result = run_load(args.url, bodies, args.requests, args.concurrency, args.timeout)
  except (OSError, ValueError) as e:
    print(f"load: error: {e}", file=sys.stderr)
    return 1
  print(json.dumps({"url": args.url, "endpoint": args.endpoint, "tasks": tasks, **result}))
  return 0 if set(result["status"]) == {"200"} else 1


if __name__ == "__main__":
  sys.exit(main())
