"""`prompt-tuning serve`: one frozen model, many prompts, over HTTP.

  registry.py  the prompt table ([capacity, p_max, embed], fixed shapes; rows added/removed live)
  engine.py    the compiled device programs (decode per method and length, rank scoring), per bucket
  batcher.py   dynamic batching of concurrent requests' rows, across tasks, in a worker thread
  app.py       the JSON API (Starlette), each request checked before it is queued
  start.py     build_server / serve / ServerThread (uvicorn)
  load.py      a bounded load generator: requests/s and latency percentiles of a running server

Imports neither TensorFlow nor gin: the server runs where only jax/flax and the serve extra
(pip install "prompt-tuning[serve]") are installed.
"""
