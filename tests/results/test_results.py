"""`prompt-tuning results`: a fabricated 2 x 2 x 2 grid (model size x prompt length x prompt vs model
tuning), written through the trainer's own writers, gathered into the table and drawn."""

from __future__ import annotations

import csv
import functools
import json
import os
import time

import numpy as np
import pytest

from prompt_tuning import param_tree
from prompt_tuning.checkpoints.train_state import RunConfig, write_run_config
from prompt_tuning.cli import results as results_cli
from prompt_tuning.errors import RunError
from prompt_tuning.metrics_writer import MetricsWriter
from prompt_tuning.models.t5 import get_config, network
from prompt_tuning.results import benchmark, collect, plots
from prompt_tuning.runs import records, selection

SIZES = {"small": get_config("tiny", vocab_size=256), "large": get_config("tiny", vocab_size=256, emb_dim=64)}
LENGTHS = (1, 5)
METHODS = {"prompt": param_tree.PROMPT_ONLY, "model": param_tree.EVERYTHING}
STEPS = 40


@functools.cache
def _model_params(size: str) -> int:
  """The frozen model's parameter count, from its shapes."""
  return records.count_params(network.abstract_params(SIZES[size]))


def _accuracy(size: str, length: int, method: str) -> float:
  """The fabricated best accuracy of a grid point: all eight differ."""
  return 50.0 + 20 * (size == "large") + 5 * (length == 5) + 10 * (method == "model")


def _write_run(run_dir: str, size: str, length: int, method: str, *, finished: bool = True, status: bool = True):
  """A run as train() leaves it: run_config.json, metrics.jsonl, best.json, run_status.json; and the
  sweep's sweep.json. Accuracy peaks at step 20 of evaluations at 10, 20, 30 (and 40 when finished)."""
  config = SIZES[size]
  write_run_config(
    run_dir,
    RunConfig(
      prompt_length=length,
      prompt_placement="prefix",
      trainable_params=METHODS[method],
      task="quickstart_sentiment",
      mixture_or_task_module=None,
      vocabulary_path=None,
      task_feature_lengths={"inputs": 24, "targets": 4},
      initial_checkpoint_path="",
      model_config=config,
      seed=0,
    ),
  )
  sweep = {"experiment": "grid", "axes": {"model": size, "prompt_length": length, "method": method, "lr": 0.3}}
  sweep.update(gin_files=["quickstart.gin"], bindings=[], command="prompt-tuning train ...")
  with open(os.path.join(run_dir, "sweep.json"), "w") as f:  # the sweep helper's writer is not on this branch
    json.dump(sweep, f)
  model_params = _model_params(size)
  prompt = length * config.emb_dim
  record = records.StatusRecord(
    run_dir,
    train_steps=STEPS,
    trainable_params=prompt if method == "prompt" else model_params + prompt,
    model_params=model_params,
    started=time.time() - 12.5,
  )
  best = selection.BestTracker(run_dir)
  peak = _accuracy(size, length, method)
  last = STEPS if finished else STEPS // 2 + 10
  with MetricsWriter(run_dir) as writer:
    for step in range(10, last + 1, 10):
      metrics = {"decode/accuracy": peak - abs(step - 20) / 2, "rank/accuracy": peak - 1, "examples": 8}
      writer.write(step, {"loss": 1.0 / step}, prefix="train")
      writer.write(step, metrics, prefix="eval")
      best.update(step, metrics)
      best.write()
      if status:
        record.write(step)
  if status and finished:
    record.write(STEPS, "finished")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  root = tmp_path_factory.mktemp("grid")
  for size in SIZES:
    for length in LENGTHS:
      for method in METHODS:
        run = root / "fig" / f"{size}-p{length}-{method}"
        # One run killed halfway; one of an earlier version, without run_status.json.
        killed, older = (size, length, method) == ("large", 5, "model"), (size, length, method) == ("small", 1, "model")
        _write_run(str(run), size, length, method, finished=not killed, status=not older)
  return root


def test_the_table_has_a_row_per_run_and_the_columns(grid, tmp_path):
  rows = collect.gather(str(grid))
  assert len(rows) == 8
  by_run = {row["run"]: row for row in rows}
  for size in SIZES:
    for length in LENGTHS:
      for method in METHODS:
        row = by_run[f"fig/{size}-p{length}-{method}"]
        assert row["axes"] == {"model": size, "prompt_length": length, "method": method, "lr": 0.3}
        assert (row["model"], row["method"], row["prompt_length"], row["experiment"]) == (size, method, length, "grid")
        assert (row["metric"], row["score"], row["best_step"]) == (
          "decode/accuracy",
          _accuracy(size, length, method),
          20,
        )
        assert row["best"]["rank/accuracy"] == {"value": _accuracy(size, length, method) - 1, "step": 10}
        prompt = length * SIZES[size].emb_dim
        model = _model_params(size)
        assert row["model_params"] == model
        assert row["trainable_params"] == (prompt if method == "prompt" else model + prompt)
        assert row["trainable_percent"] == pytest.approx(100 * row["trainable_params"] / model)
  assert by_run["fig/large-p5-model"]["status"] == "incomplete"  # killed at step 30 of 40
  assert by_run["fig/large-p5-model"]["final_step"] == 30
  assert by_run["fig/small-p1-model"]["status"] == "unknown"  # no run_status.json: counted from its config
  assert by_run["fig/small-p1-model"]["wall_seconds"] is None
  finished = [row for row in rows if row["status"] == "finished"]
  assert len(finished) == 6 and all(row["final_step"] == STEPS for row in finished)
  assert all(row["wall_seconds"] >= 12.5 and row["train_steps"] == STEPS for row in finished)
  # Scored by another metric on request.
  assert {row["score"] for row in collect.gather(str(grid), "rank/accuracy")} == {
    _accuracy(s, n, m) - 1 for s in SIZES for n in LENGTHS for m in METHODS
  }
  with pytest.raises(RunError, match=r"^--metric 'rank/f1' is not among .*'s metrics \(decode/accuracy, "):
    collect.gather(str(grid), "rank/f1")

  csv_path, jsonl_path = collect.write_table(rows, str(tmp_path))
  with open(csv_path) as f:
    table = list(csv.DictReader(f))
  header = list(table[0])
  # Axes named as a fixed column fill it (model, prompt_length, method); others get their own (lr).
  metrics = ["decode/accuracy", "rank/accuracy"]  # eval's, in the order evaluated ('examples' is no metric)
  assert header == [
    "run",
    "lr",
    *collect.FIXED_COLUMNS[1:],
    *(f"best/{m}" for m in metrics),
    *(f"best_step/{m}" for m in metrics),
  ]
  assert len(table) == 8 and {r["status"] for r in table} == {"finished", "incomplete", "unknown"}
  lines = [json.loads(line) for line in open(jsonl_path)]
  assert [line["run"] for line in lines] == [row["run"] for row in rows]
  assert lines[0]["best/decode/accuracy"] == rows[0]["score"]


def _png_looks_drawn(path: str) -> None:
  from PIL import Image

  with Image.open(path) as image:
    assert image.format == "PNG" and 400 <= image.width <= 2000 and 300 <= image.height <= 2000
    pixels = np.asarray(image.convert("RGB"))
  not_white = (pixels < 250).any(axis=-1).mean()
  colors = len(np.unique(pixels.reshape(-1, 3), axis=0))
  assert 0.01 < not_white < 0.9 and colors > 20, (path, not_white, colors)


def test_the_command_writes_the_table_and_the_figures(grid, tmp_path, capsys):
  reference = tmp_path / "paper.csv"
  reference.write_text(
    "figure,line,x,y\nscale,reference: prompt tuning,3e5,60\nscale,reference: prompt tuning,1e6,70\n"
  )
  out = tmp_path / "out"
  assert results_cli.main([str(grid), "--out", str(out), "--reference", str(reference)]) == 0
  said = capsys.readouterr().out
  assert said.startswith(f"8 runs (6 finished, 1 incomplete, 1 unknown) under {grid}")
  names = sorted(os.listdir(out))
  assert names == sorted(
    ["results.csv", "results.jsonl"]
    + [f"{name}.{ext}" for name in ("scale", "params", "ablation_prompt_length") for ext in ("png", "svg")]
  )
  for name in ("scale", "params", "ablation_prompt_length"):
    _png_looks_drawn(str(out / f"{name}.png"))
    assert open(out / f"{name}.svg").read(200).startswith("<?xml")
  # The lines: one per method, the killed run left out of the figures, seeds (here none) pooled.
  scored = list(collect.iter_scored(collect.gather(str(grid))))
  lines = plots.series(scored, lambda r: r["model_params"], lambda r: r["score"], ["method"])
  assert sorted(lines) == ["model", "prompt"] and [len(points) for points in lines.values()] == [2, 2]
  assert len(scored) == 7


def test_spread_over_seeds_and_bad_input(tmp_path, capsys):
  rows = [
    {"axes": {"seed": seed}, "method": "prompt", "model_params": 1000, "score": score}
    for seed, score in ((0, 60.0), (1, 70.0), (2, 65.0))
  ]
  (point,) = plots.series(rows, lambda r: r["model_params"], lambda r: r["score"], ["method"])["prompt"]
  assert point[:4] == (1000, 65.0, 60.0, 70.0)
  # A sweep's sweep.json keeps the experiment's spelling of an axis (PROMPT_LENGTH); its run
  # directories, and users, spell it in lower case. A name that is no axis draws nothing at all.
  swept = [{**row, "axes": {"PROMPT_LENGTH": length}} for row, length in zip(rows, (1, 5, 20))]
  assert plots._run_axis(swept, "prompt_length") == "PROMPT_LENGTH"
  with pytest.raises(RunError, match=r"^--ablation 'lenght' is no axis of these runs \(PROMPT_LENGTH\)$"):
    plots.draw(swept, str(tmp_path / "figures"), ablations=["lenght"])
  assert not (tmp_path / "figures").exists()
  bad = tmp_path / "bad.csv"
  bad.write_text("figure,line,x\nscale,a,1\n")
  with pytest.raises(RunError, match=r"^--reference .*bad.csv needs columns figure, line, x, y; it has"):
    plots.read_reference(str(bad))
  with pytest.raises(RunError, match=r"^no run under "):
    collect.gather(str(tmp_path))
  not_started = tmp_path / "queued"
  not_started.mkdir()
  (not_started / "sweep.json").write_text(json.dumps({"experiment": "x", "axes": {"seed": 3}}))
  (row,) = collect.gather(str(tmp_path))
  assert (row["status"], row["score"], row["axes"]) == ("not started", None, {"seed": 3})
  # A run whose `train` stopped before writing any status (the sweep records it): failed, not "not started".
  assert records.record_early_failure(str(not_started), 30, "prompt-tuning train exited with status 1")
  assert not records.record_early_failure(str(not_started), 30, "again")  # a status on record stays
  (row,) = collect.gather(str(tmp_path))
  assert (row["status"], row["train_steps"]) == ("failed", 30)
  assert records.read_status(str(not_started))["error"] == "prompt-tuning train exited with status 1"
  assert results_cli.main([str(tmp_path / "nowhere")]) == 1  # the command: one line, exit status 1
  assert capsys.readouterr().err.splitlines() == [
    f"prompt-tuning results: error: {tmp_path / 'nowhere'} is not a directory"
  ]


def _task_run(run_dir, axes: dict, history: dict[int, dict[str, float]], finished: bool = True) -> None:
  """A per-task run of a SuperGLUE-style sweep: sweep.json, metrics.jsonl, best.json, run_status.json."""
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, "sweep.json"), "w") as f:
    json.dump({"experiment": "superglue", "axes": axes}, f)
  record = records.StatusRecord(run_dir, train_steps=20, trainable_params=640, model_params=64000, started=time.time())
  best = selection.BestTracker(run_dir)
  with MetricsWriter(run_dir) as writer:
    for step, metrics in history.items():
      writer.write(step, metrics, prefix="eval")
      best.update(step, metrics)
      best.write()
      record.write(step)
  if finished:
    record.write(max(history), "finished")


def test_per_task_runs_give_the_benchmark_score_the_mean_of_each_tasks_metrics(tmp_path, capsys):
  # CB-like: two metrics, averaged at the step the first one selects (step 10: (80 + 60) / 2 = 70,
  # though F1 peaks later); RTE-like: one metric. The mean over tasks: (70 + 50) / 2 = 60.
  cb = {
    10: {"decode/accuracy": 80.0, "decode/f1": 60.0, "decode/examples": 9},
    20: {"decode/accuracy": 70.0, "decode/f1": 90.0},
  }
  rte = {10: {"decode/accuracy": 40.0}, 20: {"decode/accuracy": 50.0}}
  for model in ("small", "base"):
    _task_run(str(tmp_path / f"model={model},task=cb"), {"model": model, "task": "cb"}, cb)
  _task_run(str(tmp_path / "model=small,task=rte"), {"model": "small", "task": "rte"}, rte)
  _task_run(str(tmp_path / "model=base,task=rte"), {"model": "base", "task": "rte"}, rte, finished=False)
  rows = collect.gather(str(tmp_path))
  by_run = {row["run"]: row for row in rows}
  assert (by_run["model=small,task=cb"]["score"], by_run["model=small,task=cb"]["task_score"]) == (80.0, 70.0)
  assert by_run["model=small,task=rte"]["task_score"] == 50.0
  assert benchmark.task_axis(rows) == "task"
  means = {row["axes"]["model"]: row for row in benchmark.mean_over_tasks(rows, "task")}
  assert (means["small"]["score"], means["small"]["status"], means["small"]["task"]) == (
    60.0,
    "finished",
    "mean of 2 tasks",
  )
  assert (means["base"]["score"], means["base"]["status"]) == (60.0, "incomplete")  # RTE still running
  # The command writes the per-run table, the mean table, and draws the means (finished ones).
  out = tmp_path / "out"
  assert results_cli.main([str(tmp_path), "--out", str(out), "--plot", "scale"]) == 0
  table = list(csv.DictReader(open(out / "results_mean_over_task.csv")))
  assert [(r["run"], r["score"], r["tasks_scored"]) for r in table] == [
    ("mean over task: model=base", "60.0", "2"),
    ("mean over task: model=small", "60.0", "2"),
  ]
  assert os.path.exists(out / "scale.png") and "results_mean_over_task.csv" in capsys.readouterr().out
