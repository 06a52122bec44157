"""Sharded training on a mesh of 4 CPU devices (2 data x 2 model) equals one device."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest

from prompt_tuning import partitioning
from support import processes

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from prompt_tuning import partitioning
    from prompt_tuning.models.model import EncoderDecoderModel
    from prompt_tuning.models.prompt import PromptConfig, PromptedTransformer
    from prompt_tuning.models.t5 import get_config
    from prompt_tuning.models.t5 import network
    from prompt_tuning import param_tree
    from prompt_tuning.train import optimizer, step as step_lib
    from prompt_tuning.train.state import TrainState

    assert len(jax.devices()) == 4, jax.devices()
    config = get_config("tiny", vocab_size=128, dropout_rate=0.1)
    module = PromptedTransformer(config, prompt_config=PromptConfig(4))
    model = EncoderDecoderModel(module)
    rng = np.random.RandomState(0)
    enc = rng.randint(2, 128, size=(8, 12)).astype(np.int32); enc[:, 9:] = 0
    targets = rng.randint(2, 128, size=(8, 4)).astype(np.int32); targets[:, -1] = 1
    batch = {"encoder_input_tokens": enc, "decoder_target_tokens": targets,
             "decoder_input_tokens": np.concatenate([np.zeros((8, 1), np.int32), targets[:, :-1]], 1),
             "decoder_loss_weights": np.ones((8, 4), np.float32)}
    params = module.init(jax.random.PRNGKey(0), enc, batch["decoder_input_tokens"])["params"]
    params = jax.tree.map(lambda x: np.asarray(getattr(x, "value", x)), params, is_leaf=lambda x: hasattr(x, "names"))
    trainable, frozen = param_tree.split_trainable(params, param_tree.PROMPT_ONLY)
    _, frozen_axes = param_tree.split_trainable(network.module_logical_axes(module), param_tree.PROMPT_ONLY)
    tx, schedule = optimizer.adafactor()
    results = {}
    for name, mesh in (("one", partitioning.make_mesh(1, jax.devices()[:1])), ("four", partitioning.make_mesh(2))):
      shardings = partitioning.logical_to_sharding(frozen_axes, mesh)
      placed = jax.device_put(frozen, shardings)
      fn = step_lib.compile_train_step(step_lib.make_train_step(model, tx, schedule), mesh, shardings)
      state = TrainState.create(jax.tree.map(np.asarray, trainable), tx)
      losses = []
      for _ in range(3):
        state, metrics = fn(state, placed, partitioning.to_global_batch(batch, mesh), jax.random.PRNGKey(1))
        losses.append(float(metrics["loss"]))
      results[name] = (losses, np.asarray(state.params["prompt"]["prompt"]))
      wi = placed["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
      print(name, "mesh", dict(mesh.shape), "wi_0 spec", wi.sharding.spec, "losses", losses)
    (l1, p1), (l4, p4) = results["one"], results["four"]
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    np.testing.assert_allclose(p4, p1, rtol=1e-5, atol=1e-5)  # sharded sums reorder float32 adds
    assert tuple(placed["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].sharding.spec) == (None, "model")
    print("MATCH")
""")


@pytest.mark.slow
def test_four_device_mesh_with_data_and_model_axes_matches_one_device():
  env = processes.cpu_env(4, optimized=True)
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "MATCH" in result.stdout, result.stdout


def test_mesh_errors_and_rules():
  with pytest.raises(ValueError, match="NUM_PARTITIONS=3 must be >= 1 and divide the 1 devices"):
    partitioning.make_mesh(3)
  assert {"batch", "embed", "mlp", "heads", "kv", "joined_kv", "vocab", "prompt"} <= partitioning.AXIS_NAMES


@pytest.mark.parametrize(
  "num_partitions, shape, devices, expected",
  [(2, None, 8, 2), (1, (4, 2), 8, 2), (1, (-1, 4), 8, 4), (1, (2, -1), 8, 4), (4, (2, 4), 8, 4)],
)
def test_mesh_shape_gives_the_model_axis(num_partitions, shape, devices, expected):
  assert partitioning.model_axis_size(num_partitions, shape, devices) == expected


@pytest.mark.parametrize(
  "num_partitions, shape, message",
  [
    (1, (4, 4), r"MESH_SHAPE=\(4, 4\) needs 16 devices; there are 8"),
    (1, (-1, 3), r"MESH_SHAPE=\(-1, 3\): 3 does not divide the 8 devices"),
    (1, (-1, -1), r"must be \(data, model\): positive ints, at most one -1"),
    (1, (8,), r"must be \(data, model\)"),
    (1, (0, 8), r"must be \(data, model\)"),
    (2, (2, 4), r"NUM_PARTITIONS=2 disagrees with MESH_SHAPE=\(2, 4\)"),
  ],
)
def test_bad_mesh_shapes_say_what_is_wrong(num_partitions, shape, message):
  with pytest.raises(ValueError, match=message):
    partitioning.model_axis_size(num_partitions, shape, 8)


def test_a_bad_mesh_shape_stops_train_with_one_line(capsys, tmp_path):
  from prompt_tuning.cli import main as cli

  assert (
    cli.main(["train", "--gin_file=quickstart.gin", f"--gin.MODEL_DIR='{tmp_path}'", "--gin.MESH_SHAPE=(3, 1)"]) == 1
  )
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "MESH_SHAPE=(3, 1) needs 3 devices; there are 1" in err, err


class FakeDevice:
  def __init__(self, process_index):
    self.process_index = process_index


def _hosts_mesh(hosts: int, per_host: int, model: int):
  """A (data, model) grid of fake devices, host by host, as make_mesh lays them out."""
  import numpy as np

  devices = np.asarray([FakeDevice(h) for h in range(hosts) for _ in range(per_host)])
  grid = devices.reshape(-1, model)
  return types.SimpleNamespace(devices=grid, shape={"data": grid.shape[0], "model": model})


@pytest.mark.parametrize(
  "hosts, per_host, model, expected",
  [
    (1, 4, 2, [(0, 1)]),
    (2, 3, 3, [(0, 2), (1, 2)]),  # a replica per host
    (2, 4, 2, [(0, 2), (1, 2)]),  # two replicas per host, one shard of rows each host
    (2, 1, 2, [(0, 1), (0, 1)]),  # one replica over both hosts: both feed every row
    (4, 2, 4, [(0, 2), (0, 2), (1, 2), (1, 2)]),  # replicas of 2 hosts each
  ],
)
def test_data_shards_follow_the_model_replicas(hosts, per_host, model, expected):
  mesh = _hosts_mesh(hosts, per_host, model)
  assert [partitioning.data_shard(mesh, p) for p in range(hosts)] == expected


def test_replicas_straddling_hosts_unevenly_are_refused():
  with pytest.raises(ValueError, match="model replicas straddle hosts unevenly"):
    partitioning.data_shard(_hosts_mesh(2, 3, 2), 0)  # rows [h0 h0], [h0 h1], [h1 h1]


def test_to_host_fetches_numpy():
  import jax
  import numpy as np

  tree = {"a": jax.numpy.arange(3.0), "b": np.ones(2)}
  out = partitioning.to_host(tree)
  assert isinstance(out["a"], np.ndarray) and out["a"].tolist() == [0.0, 1.0, 2.0] and out["b"].tolist() == [1, 1]


CLI_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from prompt_tuning.cli import main as cli
    out = sys.argv[1]
    common = ["--gin_file=quickstart.gin", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.EVAL_BATCH_SIZE=20"]
    prompts, metrics = {}, {}
    for parts in (1, 2):
      model_dir = f"{out}/np{parts}"
      flags = [*common, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.NUM_PARTITIONS={parts}"]
      assert cli.main(["train", *flags]) == 0
      prompts[parts] = np.load(f"{model_dir}/prompts/step_2.npy")
      for mesh in ("--gin.NUM_PARTITIONS=1", "--gin.MESH_SHAPE=(-1, 2)"):  # evaluate each run on both meshes
        assert cli.main(["evaluate", *flags[:-1], mesh, "--gin_file=runs/evaluate.gin"]) == 0
      assert cli.main(["infer", *flags, "--gin_file=runs/infer.gin"]) == 0
      rows = [json.loads(l) for l in open(f"{model_dir}/inference/quickstart_sentiment-validation-step2.jsonl")]
      metrics[parts] = [json.loads(l) for l in open(f"{model_dir}/metrics.jsonl") if '"eval' in l], rows
    # The 2 x 2 mesh sums the gradient in another order. Measured on a 2-core x86 CPU: at most
    # 2.4e-7 apart after one step and 5.4e-6 after two (Adafactor divides by small second moments),
    # against updates of 0.25 rms; the bound is 1e-4, still 2500x below the update.
    np.testing.assert_allclose(prompts[2], prompts[1], rtol=0, atol=1e-4)
    (evals1, rows1), (evals2, rows2) = metrics[1], metrics[2]
    assert len(rows1) == len(rows2) == 100
    assert [r["prediction"] for r in rows1] == [r["prediction"] for r in rows2]
    print("EVALS", json.dumps([evals1, evals2]))
""")


@pytest.mark.slow
def test_num_partitions_from_gin_shards_train_eval_and_infer(tmp_path):
  """NUM_PARTITIONS=2 on 4 devices (2 data x 2 model) through the commands: the prompt, the
  predictions and the eval metrics of NUM_PARTITIONS=1."""
  env = processes.cpu_env(4)
  result = subprocess.run(
    [sys.executable, "-c", CLI_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=900
  )
  assert result.returncode == 0, result.stderr[-3000:]
  evals1, evals2 = json.loads(result.stdout.split("EVALS", 1)[1])

  def accuracies(records):
    return [{k: v for k, v in r.items() if "accuracy" in k} for r in records]

  # Each run was evaluated at the end of training and then on 1 and 2 partitions: all the same.
  assert len(evals1) == len(evals2) == 3
  assert all(len(a) >= 2 for a in accuracies(evals1)), evals1  # decode and rank accuracy
  for records in (evals1, evals2):
    assert accuracies(records)[1:] == accuracies(records)[:1] * 2
  assert accuracies(evals1) == accuracies(evals2)
