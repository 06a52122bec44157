"""The real server (uvicorn on 127.0.0.1) of a tiny random T5 with 3 prompts of different lengths:
concurrent mixed-task requests get exactly the single-task answers, bad ones get their own 4xx,
and prompts come and go at run time without a recompile."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

from prompt_tuning import param_tree
from prompt_tuning.checkpoints import bundle as bundle_lib
from prompt_tuning.data.quickstart import data_path
from prompt_tuning.data.task import TextTask
from prompt_tuning.data.vocab import SentencePieceVocabulary
from prompt_tuning.evaluation import Evaluator
from prompt_tuning.models.model import EncoderDecoderModel
from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.serving.engine import PredictRow
from prompt_tuning.serving.start import ServerThread, build_server

pytestmark = pytest.mark.slow  # one server start and three single-task references: ~30 s on 2 cores

CONFIG = get_config("tiny", vocab_size=384)  # the quick start's vocabulary has 356 ids
LABELS = ["negative", "positive"]
# name: (template, prompt length, feature lengths); rte_like's inputs are cut shorter than the others'.
TASKS = {
  "sst2_like": ("sentence: {sentence}", 3, {"inputs": 24, "targets": 4}),
  "rte_like": ("review: {sentence} hypothesis: it is good", 5, {"inputs": 16, "targets": 4}),
  "cola_like": ("{sentence}", 1, {"inputs": 24, "targets": 4}),
}


def _post(url: str, path: str, body, method: str = "POST") -> tuple[int, dict]:
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _get(url: str, path: str) -> tuple[int, dict]:
  with urllib.request.urlopen(url + path, timeout=60) as response:
    return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """(server url, server, {task: reference records}, {task: source}, params, root): one start per module."""
  root = tmp_path_factory.mktemp("serve")
  vocabulary_path = data_path("sentencepiece.model")
  vocabulary = SentencePieceVocabulary(vocabulary_path)
  rows = [json.loads(line) for line in open(data_path("validation.jsonl"))][:8]
  params = jax.tree.map(np.asarray, network.init_params(CONFIG, jax.random.PRNGKey(0)))
  fingerprint = param_tree.fingerprint(params)
  rng = np.random.RandomState(3)
  sources, references = {}, {}
  for i, (name, (template, length, lengths)) in enumerate(TASKS.items()):
    bundle = bundle_lib.PromptBundle(
      rng.randn(length, CONFIG.emb_dim).astype(np.float32),
      bundle_lib.architecture(CONFIG),
      fingerprint,
      task=name,
      vocabulary_path=vocabulary_path,
      feature_lengths=lengths,
      step=10,
    )
    # One bundle file, one MODEL_DIR (its latest bundle), one PEFT adapter: every kind of source.
    if i == 0:
      sources[name] = bundle_lib.write_bundle(str(root / f"{name}.safetensors"), bundle)
    elif i == 1:
      bundle_lib.write_bundle(str(root / name / "prompts" / "step_10.safetensors"), bundle)
      sources[name] = str(root / name)
    else:
      sources[name] = bundle_lib.export_peft(bundle, str(root / f"{name}_peft"))
    # The single-task answer: the Evaluator on a model with this one prompt, as infer runs it.
    task = TextTask(name, vocabulary, {"validation": lambda: rows}, template, "label", LABELS)
    alone = EncoderDecoderModel(PromptedTransformer(CONFIG, prompt_config=PromptConfig(length)))
    evaluator = Evaluator(alone, task, lengths, 8, rank_classification=True)
    references[name] = list(evaluator.predictions({**params, "prompt": {"prompt": bundle.prompt}}, "validation"))
  server = build_server(
    CONFIG, params, sources, batch_buckets=(4, 8), max_wait_ms=20, max_prompts=6, methods=("greedy", "beam")
  )
  with ServerThread(server) as running:
    yield running.url, server, references, sources, params, root


def _check_predict(answer: dict, records: list[dict]):
  assert answer["predictions"] == [r["prediction"] for r in records]
  np.testing.assert_allclose(answer["scores"], [r["score"] for r in records], atol=1e-4, rtol=1e-5)


def _check_score(answer: dict, record: dict):
  np.testing.assert_allclose(answer["scores"], [record["rank_scores"][c] for c in LABELS], atol=1e-4, rtol=1e-5)
  assert answer["best"] == record["rank_prediction"]


def test_concurrent_mixed_requests_get_the_single_task_answers_and_bad_ones_their_own_4xx(served):
  url, server, references, sources, _, root = served
  names = list(TASKS)
  good = []  # (path, body, check)
  for i in range(64):
    name = names[i % 3]
    records = references[name]
    cut = {"truncate": True} if name == "rte_like" else {}  # its references were cut to 16 tokens
    if i % 4 == 0:  # a request of several inputs takes several rows
      chosen = records[i % 8 :][:3]
      body = {"task": name, "inputs": [r["input"] for r in chosen], **cut}
      good.append(("/predict", body, lambda a, c=chosen: _check_predict(a, c)))
    elif i % 4 == 1:
      record = records[i % 8]
      body = {"task": name, "input": record["input"], "candidates": LABELS, **cut}
      good.append(("/score", body, lambda a, r=record: _check_score(a, r)))
    else:
      record = records[i % 8]
      body = {"task": name, "inputs": record["input"], **cut}
      good.append(("/predict", body, lambda a, r=record: _check_predict(a, [r])))
  long_input = " ".join(["the soundtrack was excellent"] * 10)
  bad = [
    ("/predict", {"task": "nope", "inputs": "sentence: hi"}, 404, "no prompt for task 'nope'"),
    ("/predict", {"task": "sst2_like", "inputs": "   "}, 422, "inputs is empty"),
    ("/predict", {"task": "sst2_like", "inputs": ["sentence: ok", ""]}, 422, "inputs[1] is empty"),
    ("/predict", {"task": "rte_like", "inputs": long_input}, 422, "more than task rte_like's inputs length 16"),
    ("/predict", {"task": "sst2_like", "inputs": 7}, 400, "inputs must be a string or a list"),
    ("/predict", {"task": "sst2_like", "inputs": ["ok", 3]}, 400, "inputs[1] must be a string"),
    ("/predict", {"inputs": "x"}, 400, "missing field 'task'"),
    ("/predict", {"task": "sst2_like", "inputs": "x", "method": "sample"}, 400, "method must be one of greedy, beam"),
    ("/predict", {"task": "sst2_like", "inputs": "x", "max_decode_length": 0}, 400, "must be a positive integer"),
    ("/predict", {"task": "sst2_like", "inputs": "x", "max_decode_length": 9}, 422, "more than this server's 4"),
    ("/predict", b"{not json", 400, "the request body is not JSON"),
    ("/predict", [1, 2], 400, "must be a JSON object"),
    ("/score", {"task": "cola_like", "input": "fine"}, 400, "missing field 'candidates'"),
    ("/score", {"task": "cola_like", "input": "fine", "candidates": []}, 422, "candidates is an empty list"),
  ]
  requests = [(p, b, None) for p, b, _ in good] + [(p, b, i) for i, (p, b, _, _) in enumerate(bad)]
  order = np.random.RandomState(0).permutation(len(requests))  # the bad ones mixed among the good
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    answers = list(pool.map(lambda k: _post(url, requests[k][0], requests[k][1]), order))
  by_request = dict(zip(order.tolist(), answers))
  for k, (_, body, check) in enumerate(good):
    status, answer = by_request[k]
    assert status == 200, (body, answer)
    check(answer)
  for i, (_, body, status, message) in enumerate(bad):
    got, answer = by_request[len(good) + i]
    assert got == status and message in answer["error"] and "\n" not in answer["error"], (body, got, answer)
  status, health = _get(url, "/health")
  # Batching happened, across tasks: fewer device batches than rows, some of them mixing tasks.
  assert status == 200 and health["status"] == "ok" and health["queued"] == 0, health
  assert health["batches"] < health["rows"] and health["mixed_batches"] > 0, health
  # And the server goes on serving: one more request, answered right.
  record = references["rte_like"][5]
  status, answer = _post(url, "/predict", {"task": "rte_like", "inputs": [record["input"]], "truncate": True})
  assert status == 200
  _check_predict(answer, [record])


def test_an_over_long_input_is_cut_as_infer_cuts_it_only_when_asked(served):
  url, _, references, *_ = served
  vocabulary = SentencePieceVocabulary(data_path("sentencepiece.model"))
  fits = [len(vocabulary.encode(r["input"])) + 1 <= 16 for r in references["rte_like"]]
  long, short = fits.index(False), fits.index(True) if True in fits else None
  record = references["rte_like"][long]  # its reference was cut to 16 tokens, as infer cuts
  status, answer = _post(url, "/predict", {"task": "rte_like", "inputs": [record["input"]]})
  assert status == 422 and "tokens with EOS, more than task rte_like's inputs length 16" in answer["error"]
  status, answer = _post(url, "/predict", {"task": "rte_like", "inputs": [record["input"]], "truncate": True})
  assert status == 200 and answer["truncated"] == [True], answer
  _check_predict(answer, [record])
  if short is not None:
    status, answer = _post(url, "/predict", {"task": "rte_like", "inputs": [references["rte_like"][short]["input"]]})
    assert answer["truncated"] == [False]


def test_prompts_come_and_go_at_run_time_without_a_recompile(served):
  url, server, references, sources, params, root = served
  compiled = {name: decoder._cache_size() for name, decoder in server.engine._decoders.items()}
  ranked = server.engine._rank._cache_size()
  # The cola_like prompt again, under another name, in a free slot: the same answers as cola_like.
  status, added = _post(url, "/prompts", {"task": "cola_again", "source": sources["cola_like"]})
  assert status == 201 and added["prompt_length"] == 1 and added["task"] == "cola_again", added
  assert "cola_again" in [t["task"] for t in _get(url, "/tasks")[1]["tasks"]]
  records = references["cola_like"][:4]
  status, answer = _post(url, "/predict", {"task": "cola_again", "inputs": [r["input"] for r in records]})
  assert status == 200
  _check_predict(answer, records)
  status, answer = _post(url, "/score", {"task": "cola_again", "input": records[1]["input"], "candidates": LABELS})
  _check_score(answer, records[1])
  assert _post(url, "/prompts/cola_again", b"", method="DELETE") == (200, {"removed": "cola_again"})
  status, answer = _post(url, "/predict", {"task": "cola_again", "inputs": "x"})
  assert status == 404 and "no prompt for task 'cola_again'" in answer["error"]
  assert _post(url, "/prompts/cola_again", b"", method="DELETE")[0] == 404

  # Bundles that cannot serve here: one line each, naming what differs.
  other = network.init_params(CONFIG, jax.random.PRNGKey(1))
  own = bundle_lib.read_bundle(sources["sst2_like"])

  def written(name, **changes):
    fields = {f: getattr(own, f) for f in ("prompt", "config", "fingerprint", "vocabulary_path", "feature_lengths")}
    return bundle_lib.write_bundle(str(root / f"{name}.safetensors"), bundle_lib.PromptBundle(**{**fields, **changes}))

  wide = get_config("tiny", vocab_size=384, emb_dim=64)
  other_vocabulary = root / "other.model"
  same = open(data_path("sentencepiece.model"), "rb").read()
  other_vocabulary.write_bytes(same[:-1] + bytes([same[-1] ^ 1]))  # another file: its bytes differ
  refused = [
    (
      {"task": "x", "source": written("fp", fingerprint=param_tree.fingerprint(other))},
      422,
      "trained on frozen weights",
    ),
    (
      {
        "task": "x",
        "source": written("wide", prompt=np.ones((2, 64), np.float32), config=bundle_lib.architecture(wide)),
      },
      422,
      "the prompt is 64 wide",
    ),
    (
      {"task": "x", "source": written("long", prompt=np.ones((6, CONFIG.emb_dim), np.float32))},
      422,
      "6 prompt vectors, more than this server's 5",
    ),
    ({"task": "x", "source": written("voc", vocabulary_path=str(other_vocabulary))}, 422, "this server's is"),
    ({"task": "x", "source": written("len", feature_lengths={"inputs": 64, "targets": 4})}, 422, "inputs length 64"),
    ({"task": "x", "source": str(root / "missing.safetensors")}, 422, "no such prompt bundle"),
    ({"task": "sst2_like", "source": sources["sst2_like"]}, 409, "task sst2_like is served already"),
    ({"task": "", "source": sources["sst2_like"]}, 400, "task must be a non-empty name"),
    ({"task": "x"}, 400, "source must be a bundle path"),
  ]
  for body, status, message in refused:
    got, answer = _post(url, "/prompts", body)
    assert got == status and message in answer["error"] and "\n" not in answer["error"], (body, got, answer)
  copied = root / "copied.model"  # the same vocabulary elsewhere: its bytes say it is the same
  copied.write_bytes(same)
  assert _post(url, "/prompts", {"task": "copy", "source": written("copy", vocabulary_path=str(copied))})[0] == 201
  assert _post(url, "/prompts/copy", b"", method="DELETE")[0] == 200
  # Fill the table (6 slots, 3 used), then one more is refused; removing one frees a slot.
  for i in range(3):
    assert _post(url, "/prompts", {"task": f"extra{i}", "source": sources["sst2_like"]})[0] == 201
  got, answer = _post(url, "/prompts", {"task": "extra3", "source": sources["sst2_like"]})
  assert got == 409 and "the prompt table is full (6 prompts" in answer["error"]
  for i in range(3):
    assert _post(url, "/prompts/extra" + str(i), b"", method="DELETE")[0] == 200
  # Nothing recompiled: the table changed, no shape did.
  assert {name: decoder._cache_size() for name, decoder in server.engine._decoders.items()} == compiled
  assert server.engine._rank._cache_size() == ranked
  assert _get(url, "/health")[1]["tasks"] == 3


def test_beam_answers_and_shorter_decodes(served):
  url, server, references, sources, params, _ = served
  vocabulary = SentencePieceVocabulary(data_path("sentencepiece.model"))
  rows = [json.loads(line) for line in open(data_path("validation.jsonl"))][:8]
  template, length, lengths = TASKS["cola_like"]
  task = TextTask("cola_like", vocabulary, {"validation": lambda: rows}, template, "label", LABELS)
  alone = EncoderDecoderModel(PromptedTransformer(CONFIG, prompt_config=PromptConfig(length)))
  options = {"beam_size": 4, "alpha": 0.6}  # build_server's defaults
  evaluator = Evaluator(alone, task, lengths, 8, decode_method="beam", decode_options=options)
  prompt = bundle_lib.read_bundle(sources["cola_like"]).prompt
  want = list(evaluator.predictions({**params, "prompt": {"prompt": prompt}}, "validation"))[:5]
  status, answer = _post(url, "/predict", {"task": "cola_like", "inputs": [r["input"] for r in want], "method": "beam"})
  assert status == 200
  _check_predict(answer, want)
  # A shorter max_decode_length: greedy decoding is causal, so its tokens begin the full decode's.
  status, answer = _post(url, "/predict", {"task": "cola_like", "inputs": [want[0]["input"]], "max_decode_length": 2})
  assert status == 200 and len(answer["predictions"]) == 1
  served_prompt = server.registry.get("cola_like")
  ids = np.asarray(vocabulary.encode(want[0]["input"]) + [1], np.int32)
  (full, _), (short, _) = (
    server.engine.run(("predict", "greedy", n), [PredictRow(served_prompt, ids)])[0] for n in (4, 2)
  )
  assert short == full[:2] and answer["predictions"] == [vocabulary.decode(short)]


def test_the_load_generator_measures_the_running_server(served):
  from prompt_tuning.serving import load

  url = served[0]
  result = load.run_load(url, [("/predict", {"task": "sst2_like", "inputs": "sentence: it works"})], 24, 6)
  assert result["status"] == {"200": 24} and result["requests_per_s"] > 0, result
  assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
  assert load.main(["--url", url, "--requests", "6", "--concurrency", "2", "--endpoint", "score"]) == 0
