"""Packing: several short examples per encoder and decoder row, told apart by segment ids.

Padding every row to the feature lengths spends most of a step on padding when examples are
short; length buckets (data/buckets.py) cut that but compile one step per bucket. Packing keeps
ONE compiled shape and fills it: each row holds whole examples, in their stream order, as t5x and
seqio pack them (their feature names: `*_segment_ids`, `*_positions`).

Rows. With the prompt length p and the feature lengths {'inputs': n, 'targets': m}:
  encoder row: p + n positions, the length the encoder sees unpacked (the prompt layer makes
    [P; x] of p + n from n input tokens). Example i takes p + len(x_i) of them: p prompt slots
    (token 0, filled with ITS OWN copy of the prompt by models/prompt.py), then its input tokens
    (EOS included). So a row holding one example is laid out exactly as unpacked, and the packed
    step compiles the unpacked step's shape.
  decoder row: m positions; example i takes len(y_i) of them (EOS included), its decoder inputs
    shifted right within the segment (starting with 0), as unpacked.
First fit, in stream order: each next example of the stream goes to the first of the batch's rows
whose encoder and decoder rows both still have room for it whole, else to a new row; the batch
closes when the next example fits none of its `batch_size` rows (that example starts the next
batch). So a batch holds a contiguous slice of the stream (the data position stays the count of
examples read), each row its examples in stream order. A row stays open for later, shorter
examples: denser than closing each row at its first misfit, which is what the TF-ops packing of
t5 and seqio (`_pack_with_tf_ops`, one partial row at a time) does; tensor2tensor documents its
custom packing op, which keeps several rows open, as the denser one. An example too long was
already cut to the feature lengths, so it always fits an empty row. A global batch holds a varying
number of examples (at least batch_size while the stream lasts).

Features (int32), besides encoder_input_tokens [B, p + n] and the decoder_* [B, m] of unpacked
batches:
  encoder_segment_ids [B, p + n], decoder_segment_ids [B, m]: 1..k for the row's k examples, 0 on
    padding;
  encoder_positions [B, p + n], decoder_positions [B, m]: positions restarting at 0 for each
    example; in the encoder they count the prompt slots (0..p-1), so they are the positions of the
    unpacked [P; x];
  with prompt rows per task (`task_ids`): encoder_task_ids [B, p + n] and decoder_task_ids [B, m],
    each position's example's prompt row (0 on padding), in place of task_ids [B].

The batch's rows follow from where it starts in the stream and the stream's order alone, so the
data position (stream examples consumed) stays the whole resumable state (data/pipeline.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from prompt_tuning.data.features import check_feature_lengths

PACKED_KEYS = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids", "decoder_positions")
PACKED_TASK_KEYS = ("encoder_task_ids", "decoder_task_ids")


@dataclasses.dataclass(frozen=True)
class Packing:
  """How rows are packed: the prompt length p each example reserves before its inputs.

  prompt_length: p >= 0 (0: plain T5, no prompt slots).
  """

  prompt_length: int

  def __post_init__(self):
    if not isinstance(self.prompt_length, (int, np.integer)) or self.prompt_length < 0:
      raise ValueError(f"PACKING needs a prompt length >= 0, got {self.prompt_length!r}")

  def row_lengths(self, feature_lengths: Mapping[str, int]) -> dict[str, int]:
    """{'inputs': p + n, 'targets': m}: the encoder and decoder row lengths."""
    lengths = check_feature_lengths(feature_lengths)
    return {"inputs": self.prompt_length + lengths["inputs"], "targets": lengths["targets"]}


def pack_rows(
  next_example: Callable[[], Mapping[str, Any] | None],
  num_rows: int,
  packing: Packing,
  feature_lengths: Mapping[str, int],
) -> tuple[list[list[Mapping[str, Any]]], int]:
  """Fills up to `num_rows` rows from a stream, first fit in stream order (the module docstring).

  Args:
    next_example: returns the next tokenized example (`inputs_ids` / `targets_ids`, EOS included,
      already cut to the feature lengths), or None when the stream has ended.
    num_rows: rows to fill.
  Returns:
    (rows, consumed): the examples of each non-empty row, in stream order (fewer than num_rows
    rows when the stream ended), and how many examples were taken: the first `consumed` of the
    stream, spread over the rows. The example that fit no row is not taken: the next batch starts
    with it.
  """
  lengths = packing.row_lengths(feature_lengths)
  p = packing.prompt_length
  rows: list[list[Mapping[str, Any]]] = []
  used: list[list[int]] = []  # [encoder positions, decoder positions] taken in each row
  consumed = 0
  while True:
    example = next_example()
    if example is None:
      break
    need_enc, need_dec = p + len(example["inputs_ids"]), len(example["targets_ids"])
    if need_enc > lengths["inputs"] or need_dec > lengths["targets"]:
      raise ValueError(
        f"an example of {need_enc - p} input and {need_dec} target tokens does not fit a packed row of "
        f"{lengths['inputs']} - {p} and {lengths['targets']}: cut it to TASK_FEATURE_LENGTHS first"
      )
    fits = (
      r
      for r, (enc, dec) in enumerate(used)
      if enc + need_enc <= lengths["inputs"] and dec + need_dec <= lengths["targets"]
    )
    row = next(fits, None)
    if row is None and len(rows) < num_rows:
      rows.append([])
      used.append([0, 0])
      row = len(rows) - 1
    if row is None:
      break  # the next batch's first example: not consumed
    rows[row].append(example)
    used[row][0] += need_enc
    used[row][1] += need_dec
    consumed += 1
  return rows, consumed


def make_packed_batch(
  rows: Sequence[Sequence[Mapping[str, Any]]],
  packing: Packing,
  feature_lengths: Mapping[str, int],
  num_rows: int,
  task_ids: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
  """Packed rows -> int32 arrays (see the module docstring); rows past `rows` are all 0.

  task_ids: {task tag: prompt row}: adds encoder_task_ids / decoder_task_ids by each example's `task`.
  """
  lengths = packing.row_lengths(feature_lengths)
  p = packing.prompt_length
  n, m = lengths["inputs"], lengths["targets"]
  enc = {key: np.zeros((num_rows, n), np.int32) for key in ("tokens", "segment_ids", "positions", "task_ids")}
  dec = {
    key: np.zeros((num_rows, m), np.int32) for key in ("targets", "inputs", "segment_ids", "positions", "task_ids")
  }
  for r, row in enumerate(rows):
    e = d = 0
    for segment, example in enumerate(row, start=1):
      x, y = example["inputs_ids"], example["targets_ids"]
      task = 0 if task_ids is None else task_ids[example["task"]]
      span = slice(e, e + p + len(x))
      enc["tokens"][r, e + p : span.stop] = x  # the p prompt slots before them stay token 0
      enc["segment_ids"][r, span] = segment
      enc["positions"][r, span] = np.arange(p + len(x))
      enc["task_ids"][r, span] = task
      span = slice(d, d + len(y))
      dec["targets"][r, span] = y
      dec["inputs"][r, d + 1 : span.stop] = y[:-1]  # shifted right within the segment: it starts with 0
      dec["segment_ids"][r, span] = segment
      dec["positions"][r, span] = np.arange(len(y))
      dec["task_ids"][r, span] = task
      e, d = e + p + len(x), d + len(y)
  out = {
    "encoder_input_tokens": enc["tokens"],
    "decoder_input_tokens": dec["inputs"],
    "decoder_target_tokens": dec["targets"],
    "decoder_loss_weights": (dec["targets"] != 0).astype(np.int32),
    "encoder_segment_ids": enc["segment_ids"],
    "encoder_positions": enc["positions"],
    "decoder_segment_ids": dec["segment_ids"],
    "decoder_positions": dec["positions"],
  }
  if task_ids is not None:
    out.update(encoder_task_ids=enc["task_ids"], decoder_task_ids=dec["task_ids"])
  return out


def check_exclusive(packing: bool, length_buckets: Any) -> None:
  """One line (ValueError) when both PACKING and LENGTH_BUCKETS are on."""
  if packing and length_buckets is not None:
    raise ValueError(
      "PACKING and LENGTH_BUCKETS cannot both be on: packing keeps one row shape and fills it, "
      "set LENGTH_BUCKETS = None (or PACKING = False)"
    )


def padding_share(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
  """{'inputs': share, 'targets': share}: the share of a packed batch's positions that are padding."""
  return {
    feature: float(np.mean(arrays[f"{side}_segment_ids"] == 0))
    for feature, side in (("inputs", "encoder"), ("targets", "decoder"))
  }
