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

from bigmodel_jax.data import tfds_source
from bigmodel_jax.data.common import (SplitCache, StepInput, lm_batch_spec,
                                      token_units)
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


class TextWindows:
  """Random (inputs, targets) windows over a token array."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    if len(tokens) <= seq_len:
      raise ConfigError(f"Text of {len(tokens)} tokens is too short for "
                       f"windows of {seq_len + 1}.")
    self.tokens, self.seq_len = tokens, seq_len

  def batch(self, rng: np.random.Generator, batch_size: int,
            rows: slice = slice(None)) -> dict:
    """`rows` of a batch of `batch_size` windows drawn with `rng`."""
    starts = rng.integers(0, len(self.tokens) - self.seq_len,
                          size=batch_size)[rows]
    windows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


batch_spec = lm_batch_spec
units = token_units


class Input(StepInput):
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

  def model_fields(self) -> dict:
    """Model config fields that come from the data."""
    return {"vocab_size": self.vocab_size}

  def train_batch(self, step: int) -> dict:
    """This process's rows of global batch `step` (the same global batch
    for any number of processes)."""
    rng = np.random.default_rng([self.seed, step])
    return self.train.batch(rng, self.config.batch_size, self._rows)

  def eval_batches(self, split: str | None = None):
    """The same `eval_steps` batches of a split every time."""
    windows = self.windows[split or self.config.eval_split]
    for i in range(self.config.eval_steps):
      rng = np.random.default_rng([self.seed, 1 << 30, i])
      yield windows.batch(rng, self.config.batch_size, self._rows)

  def save(self, workdir: str) -> None:
    """Writes what decoding needs (the tokenizer) into the workdir."""
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))


def load_tokenizer(workdir: str) -> CharTokenizer:
  return CharTokenizer.load(os.path.join(workdir, "tokenizer.json"))
