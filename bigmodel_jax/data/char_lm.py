"""Character-level language-model windows from a TFDS text dataset.

Reads the dataset with `tfds.data_source` (array_record, no TensorFlow), builds
a character vocabulary from the training split and serves random windows of
`seq_len + 1` characters. A batch is a pure function of (seed, step, process),
so a resumed run sees exactly the batches an uninterrupted one would. Any
split of the dataset can be evaluated (`input.eval_split`, `test_split`).
"""
import json
import os

import numpy as np

from bigmodel_jax.dataio import tfds_source
from bigmodel_jax.dataio.common import (SplitCache, TextWindows, WindowInput,
                                      lm_batch_spec, token_units)
from bigmodel_jax.errors import ConfigError


class CharTokenizer:
  """Maps each character of a fixed alphabet to an integer id."""

  def __init__(self, chars: str):
    self.chars = chars
    self._ids = {c: i for i, c in enumerate(chars)}

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    unknown = sorted(set(text) - self._ids.keys())
    if unknown:
      raise ConfigError(f"Characters not in the vocabulary: {unknown!r}")
    return np.array([self._ids[c] for c in text], dtype=np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[i] for i in np.asarray(ids).tolist())

  def token_bytes(self) -> np.ndarray:
    """The UTF-8 bytes each id stands for."""
    return np.array([len(c.encode("utf-8")) for c in self.chars], np.int64)

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump({"type": "char", "chars": self.chars}, f)

  @classmethod
  def load(cls, path: str) -> "CharTokenizer":
    with open(path) as f:
      return cls(json.load(f)["chars"])

  def to_hf(self):
    """The same ids as a Hugging Face `tokenizers.Tokenizer` (one token per
    character, decoded by joining), for exported models."""
    import tokenizers
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        dict(self._ids), unk_token=None))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split(
        tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = tokenizers.decoders.Fuse()
    return tokenizer


batch_spec = lm_batch_spec
units = token_units


class Input(WindowInput):
  """Train and eval batches for one process (its share of the global batch)."""

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    train_text = tfds_source.load_text(config.dataset, config.train_split,
                                       config.data_dir)
    self.tokenizer = CharTokenizer.from_text(train_text)
    self.train = TextWindows(self.tokenizer.encode(train_text), config.seq_len)
    self.windows = SplitCache(lambda split: TextWindows(
        self.tokenizer.encode(tfds_source.load_text(
            config.dataset, split, config.data_dir)), config.seq_len))
    self.windows[config.eval_split]  # Missing data fails now, not mid-run.

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size


def load_tokenizer(workdir: str) -> CharTokenizer:
  return CharTokenizer.load(os.path.join(workdir, "tokenizer.json"))
