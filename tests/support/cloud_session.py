"""Run by tests/test_cloud_paths.py in a fresh process: gs:// paths with TensorFlow blocked.

  python cloud_session.py SENTENCEPIECE_MODEL LOCAL_TMP_DIR

The environment points gcsfs (STORAGE_EMULATOR_HOST) and tensorstore
(TENSORSTORE_GCS_HTTP_URL) at a GCS emulator holding an empty bucket `bucket`.
Prints one JSON line of observations for the test to check:

  missing_gcsfs   [exit status, stderr] of `prompt-tuning convert gs://...` with gcsfs blocked
  vocab           the gs:// vocabulary's size and ids of a sentence, and the local file's
  t5x             the parameter paths whose gs:// load differs from what was written (none)
  sessions        TrainResult steps of two training sessions (the second resumes)
  metrics         (step, runs) of each gs:// metrics.jsonl line after train, train, evaluate
  writer_lines    metrics.jsonl lines after three MetricsWriter sessions on gs://
  prompt          the exported prompt .npy of the last session, and whether it is on gs://
"""

import sys

# Before anything imports them: the TensorFlow-free install, where etils opens gs:// through fsspec.
for _name in ("tensorflow", "seqio", "tensorflow_datasets"):
  sys.modules[_name] = None

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for support.*

SENTENCES = {
  "positive": ["a good film", "great fun", "good acting", "a great plot"],
  "negative": ["a bad film", "dull fun", "bad acting", "a dull plot"],
}


def missing_gcsfs(tmp: str) -> list:
  """A command on gs:// without gcsfs: exit status and stderr (must be one line)."""
  from prompt_tuning.cli import main as cli

  sys.modules["gcsfs"] = None
  stderr = io.StringIO()
  try:
    with contextlib.redirect_stderr(stderr):
      status = cli.main(["convert", "gs://bucket/t5x", os.path.join(tmp, "native")])
  finally:
    del sys.modules["gcsfs"]  # fsspec caches no failed import: gcsfs loads normally from here on
  return [status, stderr.getvalue()]


def upload(local: str, remote: str) -> None:
  import fsspec

  fsspec.filesystem("gs").put(local, remote.removeprefix("gs://"), recursive=os.path.isdir(local))


def main(sentencepiece_model: str, tmp: str) -> dict:
  out = {"missing_gcsfs": missing_gcsfs(tmp)}
  import jax
  from etils import epath

  from prompt_tuning.checkpoints import t5x
  from prompt_tuning.data import vocab
  from prompt_tuning.metrics_writer import MetricsWriter
  from prompt_tuning.models.t5 import network
  from prompt_tuning.models.t5.config import get_config
  from prompt_tuning.param_tree import flatten
  from prompt_tuning.runs import specs
  from prompt_tuning.runs.evaluate import evaluate
  from prompt_tuning.runs.train import train
  from prompt_tuning.tasks import byod
  from support import t5x_format

  # A SentencePiece vocabulary on gs://.
  upload(sentencepiece_model, "gs://bucket/vocab/sentencepiece.model")
  remote_vocab = vocab.SentencePieceVocabulary("gs://bucket/vocab/sentencepiece.model")
  local_vocab = vocab.SentencePieceVocabulary(sentencepiece_model)
  out["vocab"] = [[v.vocab_size, v.encode("a good film")] for v in (remote_vocab, local_vocab)]

  # A t5x checkpoint (msgpack + tensorstore zarr arrays) on gs://, read back through tensorstore's gcs driver.
  config = get_config("tiny", vocab_size=128, num_encoder_layers=1, num_decoder_layers=1)
  rng = np.random.default_rng(0)  # random values of the model's shapes: no init to compile
  shapes = jax.eval_shape(lambda: network.init_params(config, jax.random.PRNGKey(0)))
  params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  step_dir = t5x_format.write_t5x_checkpoint(params, os.path.join(tmp, "t5x"), 1, zarr_min_size=256)
  upload(step_dir, "gs://bucket/t5x/checkpoint_1")
  loaded = flatten(t5x.load_t5x_params("gs://bucket/t5x"))
  want = flatten(params)
  out["t5x"] = sorted(set(want) ^ set(loaded)) + [
    p for p in sorted(set(want) & set(loaded)) if not np.array_equal(want[p], loaded[p])
  ]

  # Three sessions on a gs:// MODEL_DIR: train, resume, evaluate; data, vocabulary and
  # frozen model all on gs:// too.
  for split, records in (("train", SENTENCES), ("validation", SENTENCES)):
    lines = [json.dumps({"text": s, "label": label}) for label, texts in records.items() for s in texts]
    epath.Path(f"gs://bucket/data/{split}.jsonl").write_text("\n".join(lines) + "\n")
  task = byod.text_task(
    "cloud_reviews",
    "gs://bucket/data/train.jsonl",
    "gs://bucket/data/validation.jsonl",
    "review: {text}",
    "label",
    labels=["negative", "positive"],
    vocabulary_path="gs://bucket/vocab/sentencepiece.model",
  )
  model = specs.ModelSpec(config, "gs://bucket/t5x/checkpoint_1", prompt=specs.PromptSpec(length=2))
  data = specs.TaskSpec(task, {"inputs": 24, "targets": 12})
  evaluation = specs.EvaluationSpec(rank_classification=False)  # decoding alone: fewer programs to compile
  results = [
    train(
      model,
      data,
      "gs://bucket/run",
      specs.TrainSpec(steps=steps, batch_size=4, save_period=2, log_period=1),
      evaluation,
      progress=False,
    )
    for steps in (2, 4)
  ]
  out["sessions"] = [result.step for result in results]
  out["prompt"] = [results[-1].prompt_path, epath.Path(results[-1].prompt_path).exists()]
  evaluate(model, data, "gs://bucket/run", dataclasses.replace(evaluation, batch_size=4), progress=False)
  metrics = epath.Path("gs://bucket/run/metrics.jsonl").read_text().splitlines()
  out["metrics"] = [
    [record["step"], sorted({k.split("/")[0] for k in record if k != "step"})] for record in map(json.loads, metrics)
  ]

  for session in range(3):
    with MetricsWriter("gs://bucket/writer", process_index=0) as writer:
      writer.write(session, {"loss": float(session)})
  out["writer_lines"] = epath.Path("gs://bucket/writer/metrics.jsonl").read_text().splitlines()
  return out


if __name__ == "__main__":
  print(json.dumps(main(*sys.argv[1:])))
