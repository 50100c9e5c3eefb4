"""Helpers shared by the inputs: process shares, epochs, eval padding."""
import functools
import json
import os

import jax
import numpy as np

from bigmodel_jax.data import prefetch
from bigmodel_jax.errors import ConfigError


def process_rows(batch_size: int, process_index: int, process_count: int
                 ) -> slice:
  """This process's rows of every global batch."""
  if batch_size % process_count:
    raise ConfigError(f"input.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes.")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def lm_batch_spec(config) -> dict:
  """Language-model batches: (B, seq_len) int32 "inputs" and "targets"."""
  shape = (config.batch_size, config.seq_len)
  return {"inputs": jax.ShapeDtypeStruct(shape, np.int32),
          "targets": jax.ShapeDtypeStruct(shape, np.int32)}


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


class SplitCache(dict):
  """Split name -> what `make(split)` builds from it, built on first use."""

  def __init__(self, make):
    super().__init__()
    self.make = make

  def __missing__(self, split: str):
    self[split] = value = self.make(split)
    return value
