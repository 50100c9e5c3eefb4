"""Helpers shared by the inputs: process shares, epochs, eval padding."""
import functools
import json
import os

import jax
import numpy as np

from bigmodel_jax.dataio import prefetch
from bigmodel_jax.errors import ConfigError


def process_rows(batch_size: int, process_index: int, process_count: int
                 ) -> slice:
  """This process's rows of every global batch."""
  if batch_size % process_count:
    raise ConfigError(f"input.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes.")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def train_tokenizer_once(process_count: int, flag: str) -> None:
  """ConfigError when several processes would each train a tokenizer
  (training is not deterministic): they need one file,
  `--config.input.FLAG=PATH`."""
  if process_count > 1:
    raise ConfigError(
        "Several processes need one shared tokenizer: train it once (a "
        "one-process run writes WORKDIR/tokenizer.json) and pass "
        f"--config.input.{flag}=PATH.")


def lm_batch_spec(config) -> dict:
  """Language-model batches: (B, seq_len) int32 "inputs" and "targets";
  with `input.segment_ids` also "segments" and "positions"."""
  shape = (config.batch_size, config.seq_len)
  keys = ["inputs", "targets"]
  if config.get("segment_ids"):
    keys += ["segments", "positions"]
  return {key: jax.ShapeDtypeStruct(shape, np.int32) for key in keys}


def segments_of(inputs: np.ndarray, eos_id: int) -> dict:
  """"segments" and "positions" (B, T) of packed token rows: each
  end-of-document token starts a new segment (it is the next document's
  first input, as at sampling), and positions count from it."""
  starts = inputs == eos_id
  index = np.broadcast_to(np.arange(inputs.shape[1]), inputs.shape)
  first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
  return {"segments": (1 + np.cumsum(starts, axis=1)).astype(np.int32),
          "positions": (index - first).astype(np.int32)}


def token_units(config) -> tuple[str, int]:
  """Throughput of token inputs: ("tokens", tokens in a global batch)."""
  return "tokens", config.batch_size * config.seq_len


@functools.lru_cache(maxsize=4)
def _permutation(size: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(size)


def shuffled_indices(size: int, batch_size: int, seed: int, step: int
                     ) -> np.ndarray:
  """Example indices of global batch `step` in a stream of shuffled epochs:
  a pure function of (seed, step), so a resumed run sees the same batches."""
  out, position = [], step * batch_size
  while len(out) < batch_size:
    epoch, offset = divmod(position, size)
    take = _permutation(size, seed, epoch)[offset:
                                           offset + batch_size - len(out)]
    out.extend(take.tolist())
    position += len(take)
  return np.asarray(out)


def eval_positions(size: int, batch_size: int, rows: slice):
  """(indices, weights) of this process's rows of each eval batch, covering
  `size` examples once in order; padding rows repeat example 0 at weight 0."""
  for start in range(0, size, batch_size):
    positions = start + np.arange(rows.start, rows.stop)
    real = positions < size
    yield np.where(real, positions, 0), real.astype(np.float32)


def save_class_names(workdir: str, class_names: list[str]) -> None:
  """WORKDIR/class_names.json, for tables and predictions after training."""
  with open(os.path.join(workdir, "class_names.json"), "w") as f:
    json.dump(list(class_names), f)


class TextWindows:
  """Random (inputs, targets) windows over a token array (in memory or
  memory-mapped: a batch reads only its windows); with an `eos_id`, also
  the segments and positions that keep its documents apart."""

  def __init__(self, tokens: np.ndarray, seq_len: int,
               eos_id: int | None = None):
    if len(tokens) <= seq_len:
      raise ConfigError(f"Text of {len(tokens)} tokens is too short for "
                       f"windows of {seq_len + 1}.")
    self.tokens, self.seq_len, self.eos_id = tokens, seq_len, eos_id

  @property
  def num_windows(self) -> int:
    return len(self.tokens) - self.seq_len

  def batch(self, rng: np.random.Generator, batch_size: int,
            rows: slice = slice(None)) -> dict:
    """`rows` of a batch of `batch_size` windows drawn with `rng`."""
    return self.at(rng.integers(0, self.num_windows, size=batch_size)[rows])

  def at(self, starts: np.ndarray) -> dict:
    """The windows that start at `starts`."""
    windows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)
                          ].astype(np.int32)
    batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
    if self.eos_id is not None:
      batch.update(segments_of(batch["inputs"], self.eos_id))
    return batch


class StepInput:
  """Base of inputs whose batches are a pure function of the step:
  subclasses define `train_batch(step)` and `eval_batches(split=None)`; by
  default every split is evaluated on `input.eval_steps` batches."""
  class_names = None

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    self.config, self.seed = config, seed
    self._rows = process_rows(config.batch_size, process_index, process_count)

  def train_batches(self, start_step: int):
    """Batches for steps start_step, start_step + 1, ... made ahead in a thread."""
    return prefetch.background(self.train_batch, start_step)

  def num_eval_batches(self, split: str | None = None) -> int:
    del split
    return self.config.eval_steps

  def group_names(self, split: str | None = None) -> list[str] | None:
    """Names of the groups eval batches of `split` carry, or None."""
    del split
    return None

  def example_ids(self, split: str | None = None) -> list[str]:
    del split
    raise ConfigError(f"Input {self.config.name!r} has no example ids (a "
                      "labelled input has: text_classification, images).")

  def train_size(self) -> int:
    """How many training examples `train_examples` indexes."""
    raise ConfigError(f"Input {self.config.name!r} does not give its "
                      "training examples by index, which federated clients "
                      "and DP accounting need (inputs that do: images, "
                      "text_classification, char_lm, text_corpus).")

  def train_examples(self, indices: np.ndarray, step: int) -> dict:
    """The training examples at `indices` (augmented as at step `step`)."""
    del indices, step
    self.train_size()  # Raises the refusal.

  def train_labels(self) -> np.ndarray | None:
    """Every training example's class (label-skewed client partitions), or
    None: unlabelled examples are partitioned by position (by document)."""
    return None


class WindowInput(StepInput):
  """Language-model inputs over token arrays: subclasses set `tokenizer`,
  `train` (the training split's `TextWindows`) and `windows` (split ->
  `TextWindows`, e.g. a `SplitCache`); the tokenizer is saved with the run."""

  def model_fields(self) -> dict:
    """Model config fields that come from the data."""
    return {"vocab_size": self.tokenizer.vocab_size}

  def train_batch(self, step: int) -> dict:
    """This process's rows of global batch `step` (the same global batch
    for any number of processes)."""
    rng = np.random.default_rng([self.seed, step])
    return self.train.batch(rng, self.config.batch_size, self._rows)

  def train_size(self) -> int:
    """Training examples: the windows' start positions, in text order."""
    return self.train.num_windows

  def train_examples(self, indices: np.ndarray, step: int) -> dict:
    del step
    return self.train.at(np.asarray(indices))

  def eval_batches(self, split: str | None = None):
    """The same `eval_steps` batches of a split every time."""
    windows = self.windows[split or self.config.eval_split]
    for i in range(self.config.eval_steps):
      rng = np.random.default_rng([self.seed, 1 << 30, i])
      yield windows.batch(rng, self.config.batch_size, self._rows)

  def save(self, workdir: str) -> None:
    """Writes what decoding needs (the tokenizer) into the workdir."""
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))


class SplitCache(dict):
  """Split name -> what `make(split)` builds from it, built on first use."""

  def __init__(self, make):
    super().__init__()
    self.make = make

  def __missing__(self, split: str):
    self[split] = value = self.make(split)
    return value
