"""Byte-level BPE tokenizers (GPT-2 style) through the `tokenizers` package.

  tok = BPE.from_file("tokenizer.json")          # any Hugging Face tokenizer
  tok = BPE.from_file("vocab.json")              # + merges.txt beside it
  tok = BPE.train(texts, vocab_size=8000)        # a new byte-level BPE
  ids = tok.encode("ROMEO:")                     # int32 numpy array

Every tokenizer has an end-of-document token (`eos_id`, "<|endoftext|>" as
GPT-2's) that separates documents in packed sequences. Byte-level: any text
encodes (no unknown characters) and decodes back exactly.
"""
import os

import numpy as np
import tokenizers

from bigmodel_jax.dataio import common
from bigmodel_jax.errors import ConfigError, NotFound

EOS = "<|endoftext|>"


class BPE:
  """A Hugging Face tokenizer with an end-of-document token."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer = tokenizer
    self.eos_id = tokenizer.token_to_id(EOS)
    if self.eos_id is None:
      raise ConfigError(f"The tokenizer has no {EOS} token to end documents.")

  @classmethod
  def from_file(cls, path: str) -> "BPE":
    """A tokenizer.json, or a GPT-2 vocab.json with merges.txt beside it."""
    if not os.path.exists(path):
      raise NotFound(f"No tokenizer file {path!r}.")
    if os.path.basename(path) == "vocab.json":
      merges = os.path.join(os.path.dirname(path), "merges.txt")
      if not os.path.exists(merges):
        raise NotFound(f"{path} needs merges.txt beside it.")
      tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(
          path, merges))
      _byte_level(tokenizer)
      tokenizer.add_special_tokens([EOS])  # GPT-2's is in its vocabulary.
      return cls(tokenizer)
    try:
      return cls(tokenizers.Tokenizer.from_file(path))
    except Exception as e:  # tokenizers raises plain Exceptions.
      raise ConfigError(f"{path} is not a Hugging Face tokenizer.json "
                        f"({e}).") from None

  @classmethod
  def train(cls, texts, vocab_size: int, show_progress: bool = True) -> "BPE":
    """A new byte-level BPE of `vocab_size` tokens (the 256 bytes, EOS and
    merges) learned from an iterable of texts; deterministic."""
    if vocab_size < 258:
      raise ConfigError(f"input.vocab_size={vocab_size}: a byte-level BPE "
                        "needs at least 258 (256 bytes, EOS, one merge).")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    _byte_level(tokenizer)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress)
    tokenizer.train_from_iterator(texts, trainer)
    return cls(tokenizer)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def encode(self, text: str) -> np.ndarray:
    return np.array(self.tokenizer.encode(text).ids, np.int32)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Token ids of several texts, in parallel (Rust threads)."""
    return [e.ids for e in self.tokenizer.encode_batch(texts)]

  def decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in np.asarray(ids).ravel()],
                                 skip_special_tokens=False)

  def token_bytes(self) -> np.ndarray:
    """The UTF-8 bytes each id stands for (special tokens count one, as a
    separator would): exact for byte-level vocabularies, whose token
    strings have one character per byte."""
    alphabet = set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    special = {t.content for t in
               self.tokenizer.get_added_tokens_decoder().values()}
    out = np.ones(self.vocab_size, np.int64)
    for token, i in self.tokenizer.get_vocab().items():
      if token not in special:
        out[i] = (len(token) if set(token) <= alphabet else
                  len(self.tokenizer.decode([i]).encode("utf-8")))
    return out

  def save(self, path: str) -> None:
    """Writes tokenizer.json whole or not at all (a full disk leaves the
    old file, if any, and no partial one)."""
    staging = f"{path}.tmp-{os.getpid()}"
    try:
      self.tokenizer.save(staging)
      os.replace(staging, path)
    finally:
      if os.path.exists(staging):
        os.remove(staging)

  def to_hf(self) -> tokenizers.Tokenizer:
    """The Hugging Face tokenizer (for exported models)."""
    return self.tokenizer


def for_input(config, process_count: int, texts) -> BPE:
  """An input's tokenizer: `input.tokenizer_file`, else a byte-level BPE of
  `input.vocab_size` trained on `texts()` (one process only: several need
  one shared file)."""
  if config.tokenizer_file:
    return BPE.from_file(os.path.expanduser(config.tokenizer_file))
  common.train_tokenizer_once(process_count, "tokenizer_file")
  return BPE.train(texts(), config.vocab_size)


def _byte_level(tokenizer: tokenizers.Tokenizer) -> None:
  """GPT-2's byte-level pre-tokenizer and decoder."""
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
