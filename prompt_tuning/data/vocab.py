"""SentencePiece vocabulary with T5 sentinels, id-for-id compatible with seqio's.

Pure sentencepiece (no TensorFlow, no seqio). seqio appends `extra_ids`
user-defined pieces "▁<extra_id_k>" to the model proto in reverse order, so
`<extra_id_0>` gets the highest id (piece_size + extra_ids - 1) and
`<extra_id_k>` gets piece_size + extra_ids - 1 - k. We do the same, through the
`ModelProto` message that sentencepiece ships (`sentencepiece_model_pb2`, as
seqio does). Encoding and decoding then behave exactly as seqio's: sentinels in
text encode to their ids, and decode renders them back as `<extra_id_k>`.

Conventions (T5): pad = 0, eos = 1, unk = 2; `encode` adds no EOS.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

PAD_ID = 0
EOS_ID = 1


def add_extra_ids(model_proto: bytes, extra_ids: int) -> bytes:
  """Appends seqio-style sentinel pieces (`<extra_id_{n-1}>` first) to a serialized model."""
  model = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  for i in reversed(range(extra_ids)):
    model.pieces.add(
      piece=f"\u2581<extra_id_{i}>", score=0.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    )
  return model.SerializeToString()


def read_bytes(path: str) -> bytes:
  """A local or remote (gs://, via etils.epath) file's bytes."""
  try:
    from etils import epath  # gs:// and other remote filesystems
  except ImportError:  # pragma: no cover - etils comes with orbax-checkpoint
    with open(path, "rb") as f:
      return f.read()
  return epath.Path(path).read_bytes()


class SentencePieceVocabulary:
  """A SentencePiece model plus `extra_ids` T5 sentinels.

  Attributes:
    path: where the model was read from.
    extra_ids: number of sentinel ids after the model's own pieces.
    piece_size: number of pieces in the model file (pad, eos, unk included).
    vocab_size: piece_size + extra_ids (the model's embedding rows needed).
  """

  def __init__(self, path: str, extra_ids: int = 100):
    if extra_ids < 0:
      raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
    self.path = str(path)
    self.extra_ids = int(extra_ids)
    self._base_proto = read_bytes(self.path)
    self._load()

  def _load(self):
    base = sentencepiece.SentencePieceProcessor(model_proto=self._base_proto)
    self.piece_size = base.GetPieceSize()
    self._sp = sentencepiece.SentencePieceProcessor(model_proto=add_extra_ids(self._base_proto, self.extra_ids))
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
      raise ValueError(
        f"{self.path}: T5 vocabularies need pad_id=0 and eos_id=1, "
        f"got pad_id={self._sp.pad_id()}, eos_id={self._sp.eos_id()}"
      )

  def __getstate__(self):  # picklable (gin deep-copies, multiprocessing)
    return {"path": self.path, "extra_ids": self.extra_ids, "_base_proto": self._base_proto}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._load()

  def __repr__(self) -> str:
    return f"SentencePieceVocabulary({self.path!r}, extra_ids={self.extra_ids})"

  @property
  def vocab_size(self) -> int:
    return self.piece_size + self.extra_ids

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()

  @property
  def tokenizer(self) -> sentencepiece.SentencePieceProcessor:
    """The processor, sentinels included."""
    return self._sp

  def sentinel_id(self, k: int) -> int:
    """Id of `<extra_id_k>`."""
    if not 0 <= k < self.extra_ids:
      raise ValueError(f"sentinel {k} out of range: vocabulary has {self.extra_ids} extra ids")
    return self.vocab_size - 1 - k

  def encode(self, text: str) -> list[int]:
    """Text -> ids, without EOS."""
    return self._sp.EncodeAsIds(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Many texts -> ids (one sentencepiece call), without EOS."""
    return self._sp.EncodeAsIds(list(texts)) if len(texts) else []

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, through the first EOS; pad/EOS render as nothing, unknown ids as unk.

    Accepts a list or a 1-D numpy/jax array [length].
    """
    clean = [int(i) for i in np.asarray(ids).reshape(-1)]
    size, unk = self.vocab_size, self.unk_id
    clean = [i if 0 <= i < size else unk for i in clean]
    if EOS_ID in clean:
      clean = clean[: clean.index(EOS_ID) + 1]
    return self._sp.DecodeIds(clean)

  def decode_batch(self, ids) -> list[str]:
    """[batch, length] ids -> one string per row."""
    return [self.decode(row) for row in ids]


# The vocabulary of tasks that do not name their own: T5's SentencePiece model by default.
# Entry points set it from gin (VOCABULARY_PATH); tests point it at a small local model.
T5_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
_default_vocabulary: dict[str, object] = {"path": T5_VOCABULARY_PATH, "extra_ids": 100, "loaded": None}


def set_default_vocabulary(path: str, extra_ids: int = 100) -> None:
  """Makes `path` (local or gs://) the vocabulary of tasks registered without one."""
  if (path, extra_ids) != (_default_vocabulary["path"], _default_vocabulary["extra_ids"]):
    _default_vocabulary.update(path=path, extra_ids=extra_ids, loaded=None)


def default_vocabulary() -> SentencePieceVocabulary:
  """The default vocabulary, loaded on first use."""
  if _default_vocabulary["loaded"] is None:
    _default_vocabulary["loaded"] = SentencePieceVocabulary(
      _default_vocabulary["path"], _default_vocabulary["extra_ids"]
    )
  return _default_vocabulary["loaded"]
